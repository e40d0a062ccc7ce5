"""32 OS processes race for overlapping slots of one vendor, on SQLite and on Postgres.

Every process makes one attempt at the same moment (a barrier). Whatever interleaving the
database sees, exactly one request per overlapping group may win, touching slots both win,
and a final SQL self-join finds no overlapping active pair. Then eight processes race one
requester's creates against its hold cap, on eight vendors so no vendor lock lines them up.
"""

from __future__ import annotations

import multiprocessing as mp
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from bookiji.store.database import Database
from tests.conftest import T0
from tests.factories import add_vendor

DAY = (T0 + timedelta(days=1)).replace(hour=0)
PROCESSES = 32


def _slots() -> list[tuple[str, datetime, datetime]]:
    """(group, start, end) for each of the 32 processes."""
    hour = timedelta(hours=1)
    slots: list[tuple[str, datetime, datetime]] = []
    for _ in range(8):  # the very same slot
        slots.append(("same", DAY.replace(hour=10), DAY.replace(hour=10) + hour))
    for i in range(8):  # all pairwise overlapping, no two equal
        start = DAY.replace(hour=12) + timedelta(minutes=5 * i)
        slots.append(("staggered", start, start + hour))
    for i in range(8):  # two touching slots, four contenders each
        start = DAY.replace(hour=14 + i % 2)
        slots.append((f"adjacent-{i % 2}", start, start + hour))
    for i in range(8):  # no contention at all
        start = DAY.replace(hour=16 + i)
        slots.append((f"alone-{i}", start, start + hour))
    assert len(slots) == PROCESSES
    return slots


def _contender(
    url: str, group: str, start: datetime, end: datetime, barrier: Any, results: Any
) -> None:
    from bookiji.domain.errors import BookijiError
    from bookiji.domain.states import StageTTLs
    from bookiji.services.clock import ManualClock
    from bookiji.services.reservations import HoldRequest, ReservationService

    db = Database(url)
    service = ReservationService(db, ManualClock(T0), StageTTLs())
    request = HoldRequest("race", start, end, f"requester-{group}-{start:%H%M}")
    try:
        with db.engine.connect():  # connect before the barrier: race the inserts, not logins
            pass
        barrier.wait(timeout=60)
        outcome = service.create_hold(request, actor="race")
        results.put((group, "won", outcome.reservation_id))
    except BookijiError as exc:
        results.put((group, "lost", exc.code))
    except Exception as exc:  # anything else is a failure of the guarantee
        results.put((group, "error", f"{type(exc).__name__}: {exc}"))
    finally:
        db.dispose()


@pytest.mark.slow
def test_racing_processes_never_double_book(database_url: str) -> None:
    db = Database(database_url)
    add_vendor(db, "race")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["bookiji.services.reservations", "tests.factories"])
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_contender, args=(database_url, g, s, e, barrier, results))
        for g, s, e in _slots()
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0

    errors = [o for o in outcomes if o[1] == "error"]
    assert errors == []
    losses = {o[2] for o in outcomes if o[1] == "lost"}
    assert losses <= {"slot_unavailable"}
    winners: dict[str, int] = {}
    for group, verdict, _ in outcomes:
        winners[group] = winners.get(group, 0) + (verdict == "won")
    assert winners["same"] == 1
    assert winners["staggered"] == 1
    assert winners["adjacent-0"] == 1 and winners["adjacent-1"] == 1
    assert all(winners[f"alone-{i}"] == 1 for i in range(8))

    with db.engine.connect() as conn:
        overlapping = conn.execute(
            text(
                """
                SELECT a.id, b.id FROM reservations a JOIN reservations b
                  ON a.vendor_id = b.vendor_id AND a.id < b.id
                 AND a.block_start < b.block_end AND b.block_start < a.block_end
                WHERE a.state NOT IN ('CANCELLED','EXPIRED','FAILED_VENDOR_TIMEOUT',
                        'FAILED_VENDOR_AUTH','FAILED_REQUESTER_AUTH',
                        'FAILED_AVAILABILITY_CHANGED','FAILED_COMMIT')
                  AND b.state NOT IN ('CANCELLED','EXPIRED','FAILED_VENDOR_TIMEOUT',
                        'FAILED_VENDOR_AUTH','FAILED_REQUESTER_AUTH',
                        'FAILED_AVAILABILITY_CHANGED','FAILED_COMMIT')
                """
            )
        ).all()
        held = conn.execute(text("SELECT count(*) FROM reservations")).scalar_one()
    assert overlapping == []
    assert held == 1 + 1 + 2 + 8
    db.dispose()


CAPPED = 8
CAP = 3


def _capped(url: str, vendor: str, barrier: Any, results: Any) -> None:
    from bookiji.domain.errors import BookijiError
    from bookiji.domain.states import StageTTLs
    from bookiji.services.clock import ManualClock
    from bookiji.services.holdcaps import HoldCaps
    from bookiji.services.reservations import HoldRequest, ReservationService

    db = Database(url)
    service = ReservationService(db, ManualClock(T0), StageTTLs())
    start = DAY.replace(hour=10)
    request = HoldRequest(vendor, start, start + timedelta(hours=1), "alice", partner_id=None)
    try:
        with db.engine.connect():
            pass
        barrier.wait(timeout=60)
        service.create_hold(request, actor="race", caps=HoldCaps(CAP, 1000))
        results.put("won")
    except BookijiError as exc:
        results.put(exc.code)
    except Exception as exc:
        results.put(f"error {type(exc).__name__}: {exc}")
    finally:
        db.dispose()


@pytest.mark.slow
def test_racing_processes_never_pass_a_requesters_hold_cap(database_url: str) -> None:
    """One requester, eight vendors (so no vendor lock lines them up), a cap of three: however
    the database interleaves the eight creates, exactly three holds are placed."""
    db = Database(database_url)
    for i in range(CAPPED):
        add_vendor(db, f"cap{i}")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["bookiji.services.reservations", "tests.factories"])
    barrier = ctx.Barrier(CAPPED)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_capped, args=(database_url, f"cap{i}", barrier, results))
        for i in range(CAPPED)
    ]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert outcomes == ["hold_limit_reached"] * (CAPPED - CAP) + ["won"] * CAP
    with db.engine.connect() as conn:
        held = conn.execute(text("SELECT count(*) FROM reservations")).scalar_one()
    assert held == CAP
    db.dispose()
