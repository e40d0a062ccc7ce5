"""JobRunner's lease while a job runs: renewed by a heartbeat, released at the end, given up
(and reported) when another worker took it. On SQLite and Postgres.

The manual clock stands for the time a job takes; a run waits (bounded) for what real time
brings meanwhile, the heartbeat thread's renewals (every 10 ms of real time here).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col

from bookiji.services.clock import ManualClock
from bookiji.services.jobs import JobRunner
from bookiji.services.reconcile import JobReport
from bookiji.store.database import Database
from bookiji.store.models import JobLease
from bookiji.store.uow import UnitOfWork

LEASE = timedelta(seconds=60)
BEAT = timedelta(milliseconds=10)
NAME = "sweep"


def lease_row(db: Database) -> JobLease:
    with UnitOfWork(db, readonly=True) as uow:
        row = uow.session.get(JobLease, f"job:{NAME}")
        assert row is not None
        return row


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def heartbeat_alive() -> bool:
    return any(t.name == f"job-lease:{NAME}" and t.is_alive() for t in threading.enumerate())


def test_a_long_run_keeps_renewing_its_lease_and_releases_it_at_the_end(db: Database) -> None:
    clock = ManualClock(datetime(2026, 12, 1, 8, tzinfo=UTC))
    start = clock.now()
    renewals: list[datetime] = []

    def job() -> JobReport:
        for _ in range(6):  # twice the lease
            clock.advance(LEASE / 3)
            wait_for(lambda: lease_row(db).expires_at >= clock.now() + LEASE, "not renewed")
            row = lease_row(db)
            assert row.owner == "a"
            renewals.append(row.expires_at)
        return JobReport(NAME, processed=1)

    runner = JobRunner(db, clock, {NAME: job}, owner="a", lease=LEASE, heartbeat=BEAT)
    report = runner.run(NAME)
    assert report is not None and (report.processed, report.errors) == (1, [])
    assert renewals == [start + LEASE / 3 * i + LEASE for i in range(1, 7)]
    # The heartbeat stopped with the run, and the lease runs out now: free for anyone.
    assert not heartbeat_alive()
    assert (lease_row(db).owner, lease_row(db).expires_at) == ("a", clock.now())
    other = JobRunner(db, clock, {NAME: lambda: JobReport(NAME)}, owner="b", lease=LEASE)
    assert other.run(NAME) is not None


def test_a_run_whose_lease_was_taken_stops_renewing_and_reports_it(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Worker a stalled past its lease and worker b took the job over: a's heartbeat finds
    the lease b's, says so and stops; a's run does not renew or release b's lease."""
    clock = ManualClock(datetime(2026, 12, 1, 8, tzinfo=UTC))
    taken: list[datetime] = []

    def job() -> JobReport:
        clock.advance(LEASE + timedelta(seconds=1))
        now = clock.now()
        with UnitOfWork(db) as uow:  # what b's JobRunner._acquire does after a's stall
            uow.session.execute(
                update(JobLease)
                .where(col(JobLease.name) == f"job:{NAME}")
                .values(owner="b", acquired_at=now, expires_at=now + LEASE)
            )
            uow.commit()
        taken.append(now + LEASE)
        wait_for(lambda: not heartbeat_alive(), "the heartbeat goes on renewing")
        return JobReport(NAME, processed=3)

    runner = JobRunner(db, clock, {NAME: job}, owner="a", lease=LEASE, heartbeat=BEAT)
    report = runner.run(NAME)
    assert report is not None and report.processed == 3
    assert report.errors == [
        f"the lease of job {NAME} was taken by another worker while this run went on"
    ]
    assert any("taken by another worker" in r.getMessage() for r in caplog.records)
    row = lease_row(db)
    assert (row.owner, row.expires_at) == ("b", taken[0])


def test_a_failing_job_stops_its_heartbeat_too(db: Database) -> None:
    clock = ManualClock(datetime(2026, 12, 1, 8, tzinfo=UTC))

    def job() -> JobReport:
        assert heartbeat_alive()
        raise RuntimeError("boom")

    runner = JobRunner(db, clock, {NAME: job}, owner="a", lease=LEASE, heartbeat=BEAT)
    report = runner.run(NAME)
    assert report is not None and report.errors == ["RuntimeError: boom"]
    assert not heartbeat_alive()
    assert lease_row(db).expires_at == clock.now()


@pytest.mark.parametrize("heartbeat", [timedelta(0), LEASE, LEASE * 2])
def test_the_heartbeat_must_come_within_the_lease(heartbeat: timedelta, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'unused.db'}")
    try:
        with pytest.raises(ValueError, match="heartbeat"):
            JobRunner(db, ManualClock(datetime(2026, 12, 1, tzinfo=UTC)), {},
                      owner="a", lease=LEASE, heartbeat=heartbeat)  # fmt: skip
    finally:
        db.dispose()
