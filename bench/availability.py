"""Availability: 30 days of 15-minute slots, one vendor, 500 busy events and 200 holds.

Prints p50/p95 of:
  engine cold    compute_slots on preloaded data (the pure computation)
  service cold   the service: read vendor, busy times and holds from SQLite, then compute
  service cached the same query answered from the in-memory cache
  oracle         the brute-force minute-by-minute oracle of the tests (the baseline)
and the oracle / engine ratio. Run: .venv/bin/python bench/availability.py
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bookiji.domain.availability import Blocker, Rules, compute_slots
from bookiji.domain.states import StageTTLs
from bookiji.services.availability import AvailabilityService
from bookiji.services.clock import ManualClock
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.store import migrate
from bookiji.store.database import Database
from bookiji.store.models import BusyInterval, CalendarConnection
from bookiji.store.uow import UnitOfWork
from tests.availability_oracle import oracle
from tests.factories import add_vendor

NOW = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
START, END = NOW + timedelta(days=1), NOW + timedelta(days=31)
DAILY = {day: ["07:00-22:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


def timed(run: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def main() -> None:
    rng = random.Random(7)
    workdir = Path(tempfile.mkdtemp(prefix="bookiji-bench-"))
    db = Database(f"sqlite:///{workdir / 'bench.db'}")
    migrate.upgrade(db)
    spec = add_vendor(
        db,
        "bench",
        timezone="Europe/London",
        hours=DAILY,
        slot_minutes=15,
        slot_interval_minutes=15,
        buffer_before_minutes=5,
        buffer_after_minutes=5,
        max_advance_days=60,
    )
    clock = ManualClock(NOW)
    reservations = ReservationService(db, clock, StageTTLs(hold=timedelta(days=365)))
    holds = 0
    while holds < 200:
        start = START + timedelta(minutes=15 * rng.randrange(0, 30 * 96))
        try:
            reservations.create_hold(
                HoldRequest("bench", start, start + timedelta(minutes=15), f"r{holds}"),
                actor="bench",
            )
            holds += 1
        except Exception:
            continue
    with UnitOfWork(db) as uow:
        uow.session.add(
            CalendarConnection(
                id="cal_bench",
                vendor_id="bench",
                provider="ics",
                source="bench.ics",
                status="ok",
                last_synced_at=NOW,
                created_at=NOW,
            )
        )
        uow.flush()
        for i in range(500):
            start = START + timedelta(minutes=5 * rng.randrange(0, 30 * 288))
            uow.session.add(
                BusyInterval(
                    connection_id="cal_bench",
                    vendor_id="bench",
                    start_at=start,
                    end_at=start + timedelta(minutes=rng.choice([15, 30, 45, 60, 90])),
                    tentative=i % 10 == 0,
                    summary=f"event {i}",
                    fetched_at=NOW,
                )
            )
        uow.touch_schedule("bench")
        uow.commit()

    service = AvailabilityService(db, clock, cache_ttl=timedelta(hours=1))
    from bookiji.services.availability import load_schedule

    with UnitOfWork(db, readonly=True) as uow:
        vendor = uow.vendors.get("bench")
        assert vendor is not None
        schedule = load_schedule(uow, vendor, START, END)
    rules: Rules = schedule.rules
    blockers: list[Blocker] = schedule.blockers

    def engine() -> object:
        return compute_slots(rules, window_start=START, window_end=END, now=NOW, blockers=blockers)

    def cold() -> object:
        service.cache.clear()
        return service.availability("bench", START, END)

    def cached() -> object:
        return service.availability("bench", START, END)

    slots = engine()
    assert isinstance(slots, list)
    expected = oracle(rules, START, END, NOW, [(b.start, b.end) for b in blockers])
    assert [s.start for s in slots] == expected, "engine and oracle disagree"
    cached()
    figures = {
        "engine cold": timed(engine, 200),
        "service cold": timed(cold, 100),
        "service cached": timed(cached, 500),
        "oracle": timed(
            lambda: oracle(rules, START, END, NOW, [(b.start, b.end) for b in blockers]), 3
        ),
    }
    print(f"vendor {spec.id}: {len(slots)} slots in 30 days, {len(blockers)} blockers")
    print(f"{'measure':<16}{'p50 ms':>10}{'p95 ms':>10}")
    for name, samples in figures.items():
        p50, p95 = percentiles(samples)
        print(f"{name:<16}{p50:>10.3f}{p95:>10.3f}")
    engine_p50 = percentiles(figures["engine cold"])[0]
    oracle_p50 = percentiles(figures["oracle"])[0]
    cold_p50 = percentiles(figures["service cold"])[0]
    cached_p50 = percentiles(figures["service cached"])[0]
    print(f"oracle / engine: {oracle_p50 / engine_p50:.0f}x faster than the baseline")
    print(f"service cold / cached: {cold_p50 / cached_p50:.0f}x")
    print("targets: p50 < 5 ms cold (engine), < 0.5 ms cached")
    db.dispose()


if __name__ == "__main__":
    main()
