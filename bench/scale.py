"""Scale: the same operations on a database of 1,000 reservations and of 1,000,000.

Fills a fresh database with reservations across 10,000 vendors (100 per vendor, in vendor
order, so the small database is the first 10 vendors in full and the large one all of them;
the probe vendors measured below see the same calendar in both) and prints, at each size:
hold creation p50/p95, availability p50/p95 (answer cache off), `reservations list` by state,
and the expiry sweep of expired holds (1,000 at the small size, `--sweep` (100,000) at the
large one), then the ratios large/small. Then hold-creation throughput with 1 and 16 writer
processes beside the database's own ceiling measured in the same run: single-row insert
transactions through the same engine (SQLite: WAL, synchronous=FULL, BEGIN IMMEDIATE;
Postgres: synchronous_commit on), and the floor: the very rows a hold writes, copied from a real
one and inserted with no reads or service code around them, also 16 holds' rows to a
transaction (group commit at its cheapest). SQLite always; Postgres when
BOOKIJI_TEST_POSTGRES_URL (an admin URL; a scratch database is created and dropped) or
--postgres-url is given.

Run: .venv/bin/python bench/scale.py [--rows 1000000] [--sweep 100000] [--backend sqlite]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import bindparam, text, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import make_url

from bookiji.bootstrap import Container, build
from bookiji.config import Settings
from bookiji.services.clock import ManualClock
from bookiji.services.ids import new_id
from bookiji.services.reservations import HoldRequest
from bookiji.store import migrate
from bookiji.store.database import Database, normalize_url
from bookiji.store.inserts import prepare
from bookiji.store.models import (
    ConfirmationToken,
    OutboxEvent,
    Reservation,
    ReservationTransition,
    Vendor,
    VendorNotificationRow,
)
from bookiji.store.uow import UnitOfWork
from tests.factories import vendor_spec

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
FIRST_SLOT = NOW + timedelta(days=1)
VENDORS = 10_000
PER_VENDOR = 100
PROBES = [f"v{i:05d}" for i in range(10)]
SAMPLES = 200
console = Console()

# The history a busy installation accumulates: mostly finished, some in flight.
#: Holds per transaction in the group-commit row of the throughput figures.
GROUP = 16
STATE_BY_SLOT = {0: "HELD", 1: "AWAITING_VENDOR_CONFIRMATION", 2: "AWAITING_REQUESTER_AUTH"}
TERMINAL = ["COMMITTED"] * 6 + ["EXPIRED", "CANCELLED", "FAILED_VENDOR_TIMEOUT", "COMMITTED"]


def vendor_id(index: int) -> str:
    return f"v{index:05d}"


def reservation_row(vendor: int, k: int, *, state: str | None = None) -> dict[str, Any]:
    """Reservation k of a vendor: a 1-hour slot every 2 hours, so none overlaps."""
    start = FIRST_SLOT + timedelta(hours=2 * k)
    state = state or STATE_BY_SLOT.get(k % 20) or TERMINAL[k % len(TERMINAL)]
    active = state in ("HELD", "AWAITING_VENDOR_CONFIRMATION", "AWAITING_REQUESTER_AUTH")
    committed = state == "COMMITTED"
    return {
        "id": f"res_{vendor:05d}_{k:04d}_{uuid.uuid4().hex[:8]}",
        "vendor_id": vendor_id(vendor),
        "requester_id": f"req-{vendor}-{k}",
        "partner_id": None,
        "slot_start": start,
        "slot_end": start + timedelta(hours=1),
        "block_start": start,
        "block_end": start + timedelta(hours=1),
        "state": state,
        "state_deadline": NOW + timedelta(minutes=10) if active else None,
        "currency": "gbp",
        "price_amount": 5000,
        "deposit_amount": 1000,
        "vendor_payment_state": "captured" if committed else "not_started",
        "vendor_payment_ref": f"pi_v_{vendor}_{k}" if committed else None,
        "requester_payment_state": "captured" if committed else "not_started",
        "requester_payment_ref": f"pi_r_{vendor}_{k}" if committed else None,
        "meta": {},
        "requester_contact": None,
        "idempotency_key": None,
        "version": 1,
        "created_at": NOW - timedelta(days=30) + timedelta(seconds=vendor * PER_VENDOR + k),
        "updated_at": NOW - timedelta(days=1),
    }


def _insert(db: Database, rows: list[dict[str, Any]]) -> None:
    table = Reservation.__table__  # type: ignore[attr-defined]
    with db.engine.begin() as conn:
        conn.execute(table.insert(), [{("metadata" if k == "meta" else k): v
                                       for k, v in r.items()} for r in rows])  # fmt: skip


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def add_vendors(db: Database) -> None:
    from bookiji.services.vendors import _fields

    fields = _fields(vendor_spec("x", slot_interval_minutes=60))
    rows = [
        Vendor(
            id=vendor_id(i), created_at=NOW, updated_at=NOW, **{**fields, "name": f"V{i}"}
        ).model_dump()
        for i in range(VENDORS)
    ]
    with db.engine.begin() as conn:
        conn.execute(Vendor.__table__.insert(), rows)  # type: ignore[attr-defined]


def fill(db: Database, upto: int, start_at: int = 0, *, batch: int = 10_000) -> None:
    """Reservations [start_at, upto) in vendor order (PER_VENDOR each)."""
    with progress() as bar:
        task = bar.add_task(f"filling to {upto:,} reservations", total=upto - start_at)
        for first in range(start_at, upto, batch):
            rows = [reservation_row(n // PER_VENDOR, n % PER_VENDOR)
                    for n in range(first, min(upto, first + batch))]  # fmt: skip
            _insert(db, rows)
            bar.advance(task, len(rows))


def settle(db: Database) -> None:
    """After a bulk load, what autovacuum does on its own shortly after: fresh statistics and
    a vacuumed table, so the figures measure the application and not that first vacuum."""
    if db.is_postgres:
        with db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE reservations"
            )


def add_expired(db: Database, count: int, round_: int) -> None:
    """`count` holds past their deadline, spread over all vendors, on slots of their own."""
    with progress() as bar:
        task = bar.add_task(f"adding {count:,} expired holds", total=count)
        for first in range(0, count, 10_000):
            rows = []
            for n in range(first, min(count, first + 10_000)):
                row = reservation_row(n % VENDORS, PER_VENDOR + 10 * round_ + n // VENDORS,
                                      state="HELD")  # fmt: skip
                row["state_deadline"] = NOW - timedelta(minutes=1)
                rows.append(row)
            _insert(db, rows)
            bar.advance(task, len(rows))


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(call: Callable[[int], object], count: int) -> list[float]:
    out = []
    for i in range(count):
        began = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - began) * 1000)
    return out


@dataclass
class Figures:
    hold: list[float]
    availability: list[float]
    list_by_state: list[float]
    sweep_seconds: float
    swept: int


def container_for(url: str) -> Container:
    settings = Settings(database_url=url, availability={"cache_ttl_seconds": 0})  # type: ignore[arg-type]
    container = build(settings, clock=ManualClock(NOW))
    container.notification_sink = lambda ids: None  # measure the hold, not the console
    return container


def measure(url: str, sweep: int, round_: int) -> Figures:
    container = container_for(url)
    try:

        def hold(i: int) -> None:
            gap = i // len(PROBES) + round_ * SAMPLES // len(PROBES)
            start = FIRST_SLOT + timedelta(hours=2 * gap + 1)  # between two existing slots
            container.reservations.create_hold(
                HoldRequest(PROBES[i % len(PROBES)], start, start + timedelta(hours=1),
                            f"probe-{round_}-{i}"), actor="bench",
            )  # fmt: skip

        def availability(i: int) -> None:
            container.availability.availability(
                PROBES[i % len(PROBES)], FIRST_SLOT, FIRST_SLOT + timedelta(days=7)
            )

        def listing(i: int) -> None:
            state = ("COMMITTED", "HELD", "EXPIRED")[i % 3]
            with UnitOfWork(container.db, readonly=True) as uow:
                uow.reservations.list(state=state, limit=50)

        holds = timed(hold, SAMPLES)
        reads = timed(availability, SAMPLES)
        lists = timed(listing, SAMPLES)
        add_expired(container.db, sweep, round_)
        settle(container.db)
        began = time.perf_counter()
        swept = len(container.reservations.expire_due(batch_size=1000))
        seconds = time.perf_counter() - began
        assert swept >= sweep, (swept, sweep)
        return Figures(holds, reads, lists, seconds, swept)
    finally:
        container.close()


# -- throughput against the database's own ceiling -------------------------------------------


def _hold_writer(url: str, writer: int, epoch: int) -> Callable[[int], object]:
    container = container_for(url)

    def one(done: int) -> None:
        vendor = (writer * 625 + done) % VENDORS
        start = NOW + timedelta(days=60 + 30 * epoch, hours=done // 625 * 2 + 1)
        container.reservations.create_hold(
            HoldRequest(vendor_id(vendor), start, start + timedelta(hours=1), f"w{writer}"),
            actor="bench",
        )

    return one


class _Bare:
    """The driver's own connection (the engine's PRAGMAs applied), used with no SQLAlchemy
    per statement: what the database and its driver cost, and nothing of ours."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.raw = db.engine.raw_connection()
        self.dialect = db.engine.dialect

    def transaction(self, statements: list[tuple[str, list[Any]]]) -> None:
        """On Postgres in one pipeline (no round trip per statement): the best the driver
        can do, for the ceiling and the rows alike."""
        if self.db.is_sqlite:
            cursor = self.raw.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            for sql, rows in statements:
                cursor.executemany(sql, rows)
            cursor.execute("COMMIT")
            cursor.close()
            return
        connection = self.raw.driver_connection
        with connection.pipeline(), connection.cursor() as cursor:  # type: ignore[union-attr]
            for sql, rows in statements:
                cursor.executemany(sql, rows)
            connection.commit()  # type: ignore[union-attr]


def _ceiling_writer(
    url: str, writer: int, epoch: int, *, bare: bool = False
) -> Callable[[int], object]:
    db = Database(url)
    statement = text("INSERT INTO bench_ceiling (writer, n, at) VALUES (:w, :n, :at)")
    if bare:
        driver = _Bare(db)
        mark = "?" if db.is_sqlite else "%s"
        sql = f"INSERT INTO bench_ceiling (writer, n, at) VALUES ({mark}, {mark}, {mark})"

        def bare_one(done: int) -> None:
            driver.transaction([(sql, [(writer, done, NOW.isoformat())])])

        return bare_one

    def one(done: int) -> None:
        with db.write_gate, db.engine.begin() as conn:
            conn.execute(statement, {"w": writer, "n": done, "at": NOW.isoformat()})

    return one


def _rows_writer(
    url: str, writer: int, epoch: int, *, bare: bool = False, group: int = 1
) -> Callable[[int], object]:
    """The rows one hold writes (a copy of a real one's), inserted with no reads and no
    service code around them: the floor a hold cannot go below on this database. `bare`:
    through the driver alone, prepared once, each row's values already bound. `group`
    (bare only): the rows of that many holds in one transaction, group commit at its
    cheapest, to measure what batching holds could win; each call returns its holds."""
    db = Database(url)
    res, log, out = (m.__table__ for m in (Reservation, ReservationTransition, OutboxEvent))  # type: ignore[attr-defined]
    tok, note = (m.__table__ for m in (ConfirmationToken, VendorNotificationRow))  # type: ignore[attr-defined]
    with db.engine.connect() as conn:
        row = dict(
            conn.execute(
                sa_select(res).where(res.c.requester_id == "w0").limit(1)  # a hold of _hold_writer
            )
            .mappings()
            .one()
        )
        children = [
            [
                dict(r)
                for r in conn.execute(
                    sa_select(t).where(t.c.reservation_id == row["id"])
                ).mappings()
            ]
            for t in (log, out, tok, note)
        ]
    vendors = Vendor.__table__  # type: ignore[attr-defined]
    bump = (
        update(vendors)
        .where(vendors.c.id == bindparam("v"))
        .values(schedule_version=vendors.c.schedule_version + 1)
    )
    driver = _Bare(db) if bare else None
    mark = "?" if db.is_sqlite else "%s"
    bump_sql = f"UPDATE vendors SET schedule_version = schedule_version + 1 WHERE id = {mark}"

    def hold_rows(done: int) -> tuple[str, list[tuple[Any, list[dict[str, Any]]]]]:
        vendor = vendor_id((writer * 625 + done) % VENDORS)
        days = 900 + 30 * epoch + 60 * bare + 120 * (group > 1)
        start = NOW + timedelta(days=days, hours=done // 625 * 2 + 1)
        rid, token = new_id("res"), new_id("tok")
        logs, events, tokens, notes = (
            [{**c, "reservation_id": rid} for c in group] for group in children
        )
        for r in logs + events:
            r.pop("id", None)
        for event in events:
            event["event_id"] = new_id("evt")
        for t in tokens:
            t["id"] = token
        for n in notes:
            n.update(id=new_id("ntf"), token_id=token, vendor_id=vendor)
        reservation = {
            **row,
            "id": rid,
            "vendor_id": vendor,
            "slot_start": start,
            "slot_end": start + timedelta(hours=1),
            "block_start": start,
            "block_end": start + timedelta(hours=1),
        }
        return vendor, [
            (res, [reservation]), (log, logs), (out, events), (tok, tokens), (note, notes)
        ]  # fmt: skip

    def one(done: int) -> int:
        if driver is None:
            vendor, groups = hold_rows(done)
            with db.write_gate, db.engine.begin() as conn:
                for table, rows in groups:
                    conn.execute(table.insert(), rows)
                conn.execute(bump, {"v": vendor})
            return 1
        holds = [hold_rows(done + k) for k in range(group)]
        statements = []
        for index, (table, first) in enumerate(holds[0][1]):
            rows = [row for _, groups in holds for row in groups[index][1]]
            prepared = prepare(table, tuple(first[0]), driver.dialect)
            statements.append((prepared.sql, [prepared.parameters(r) for r in rows]))
        driver.transaction([*statements, (bump_sql, [(vendor,) for vendor, _ in holds])])
        return group

    return one


WRITERS: dict[str, Callable[[str, int, int], Callable[[int], object]]] = {
    "holds": _hold_writer,
    "ceiling": _ceiling_writer,
    "rows": _rows_writer,
    "bare ceiling": partial(_ceiling_writer, bare=True),
    "bare rows": partial(_rows_writer, bare=True),
    "grouped rows": partial(_rows_writer, bare=True, group=GROUP),
}


def _writer(kind: str, url: str, writer: int, epoch: int, seconds: float, ready: Any,
            results: Any) -> None:  # fmt: skip
    """Set up (imports, engine, pool) before the start line, so only the work is timed."""
    one = WRITERS[kind](url, writer, epoch)
    ready.wait()
    done = 0
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        done += one(done) or 1
    results.put(done)


def rate(kind: str, url: str, writers: int, seconds: float) -> float:
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(writers + 1)
    results = context.Queue()
    processes = [
        context.Process(target=_writer, args=(kind, url, w, int(writers > 1), seconds, ready,
                                              results))
        for w in range(writers)
    ]  # fmt: skip
    for process in processes:
        process.start()
    ready.wait(timeout=300)
    total = sum(results.get(timeout=seconds + 120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    return total / seconds


def throughput(url: str, seconds: float) -> list[tuple[int, dict[str, float]]]:
    db = Database(url)
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE bench_ceiling (id INTEGER PRIMARY KEY "
                          + ("GENERATED ALWAYS AS IDENTITY" if db.is_postgres else "")
                          + ", writer INTEGER, n INTEGER, at TEXT)"))  # fmt: skip
    db.dispose()
    out = []
    for writers in (1, 16):
        out.append((writers, {kind: rate(kind, url, writers, seconds) for kind in WRITERS}))
    return out


# -- databases ----------------------------------------------------------------------------------


@contextmanager
def sqlite_database() -> Iterator[str]:
    workdir = Path(tempfile.mkdtemp(prefix="bookiji-scale-"))
    yield f"sqlite:///{workdir / 'scale.db'}"


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    import psycopg

    name = f"bookiji_scale_{uuid.uuid4().hex[:10]}"
    admin = make_url(normalize_url(admin_url))
    plain = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_backend(label: str, url: str, rows: int, sweep: int, seconds: float) -> None:
    db = Database(url)
    migrate.upgrade(db)
    add_vendors(db)
    small = min(1_000, rows)
    fill(db, small)
    settle(db)
    db.dispose()
    console.print(f"[bold]{label}[/]: measuring at {small:,} reservations")
    at_small = measure(url, min(1_000, sweep), round_=0)
    db = Database(url)
    began = time.perf_counter()
    fill(db, rows, start_at=small)
    filled = time.perf_counter() - began
    settle(db)
    db.dispose()
    console.print(f"[bold]{label}[/]: filled to {rows:,} in {filled:.0f} s; measuring again")
    at_large = measure(url, sweep, round_=1)
    console.print(f"\n[bold]{label}[/] ({SAMPLES} samples each; ms)")
    console.print(f"{'':<24}{f'{small:,} rows':>16}{f'{rows:,} rows':>18}{'ratio':>9}")
    for name, a, b in (
        ("hold create p50", statistics.median(at_small.hold), statistics.median(at_large.hold)),
        ("hold create p95", pct(at_small.hold, 0.95), pct(at_large.hold, 0.95)),
        ("availability p50", statistics.median(at_small.availability),
         statistics.median(at_large.availability)),
        ("availability p95", pct(at_small.availability, 0.95), pct(at_large.availability, 0.95)),
        ("list by state p50", statistics.median(at_small.list_by_state),
         statistics.median(at_large.list_by_state)),
        ("list by state p95", pct(at_small.list_by_state, 0.95),
         pct(at_large.list_by_state, 0.95)),
    ):  # fmt: skip
        console.print(f"{name:<24}{a:>16.2f}{b:>18.2f}{b / a:>9.2f}")
    for figures, size in ((at_small, small), (at_large, rows)):
        console.print(
            f"expiry sweep at {size:,} rows: {figures.swept:,} holds in "
            f"{figures.sweep_seconds:.1f} s ({figures.swept / figures.sweep_seconds:,.0f}/s)"
        )
    for writers, rates in throughput(url, seconds):
        ceiling, bare = rates["ceiling"], rates["bare ceiling"]
        console.print(
            f"hold creation, {writers:>2} writer(s): {rates['holds']:,.0f}/s; database ceiling "
            f"(single-row insert transactions) {ceiling:,.0f}/s; {rates['holds'] / ceiling:.0%}"
            f"\n  a hold's rows alone (no reads, no service code): {rates['rows']:,.0f}/s, "
            f"{rates['rows'] / ceiling:.0%} of the ceiling"
            f"\n  through the bare driver (no SQLAlchemy): ceiling {bare:,.0f}/s; a hold's rows "
            f"{rates['bare rows']:,.0f}/s, {rates['bare rows'] / bare:.0%} of it; "
            f"{GROUP} holds' rows per transaction (group commit) {rates['grouped rows']:,.0f} "
            f"holds/s, {rates['grouped rows'] / bare:.0%} of it"
        )
    console.print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sweep", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput level")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--postgres-url", default=os.environ.get("BOOKIJI_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    if args.rows > VENDORS * PER_VENDOR:
        parser.error(f"at most {VENDORS * PER_VENDOR:,} rows (100 per vendor)")
    if args.backend in ("sqlite", "both"):
        with sqlite_database() as url:
            run_backend("SQLite", url, args.rows, args.sweep, args.seconds)
    if args.backend in ("postgres", "both"):
        if not args.postgres_url:
            console.print("Postgres skipped: set BOOKIJI_TEST_POSTGRES_URL or --postgres-url")
            return
        with postgres_database(args.postgres_url) as url:
            run_backend("Postgres", url, args.rows, args.sweep, args.seconds)


if __name__ == "__main__":
    main()
