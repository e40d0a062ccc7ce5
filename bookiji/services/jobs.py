"""Named jobs, each run by one worker at a time across every daemon sharing the database.

A run first takes the job's lease (a `job_leases` row with an expiry) in one short
transaction; another daemon that finds the lease held skips that round. A killed worker's
lease simply runs out, so nothing is lost: the next round elsewhere picks the work up (the
jobs themselves are idempotent). Every run is recorded in `job_runs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import timedelta

from sqlalchemy.exc import IntegrityError

from bookiji.services.clock import Clock
from bookiji.services.reconcile import JobReport
from bookiji.store.database import Database
from bookiji.store.models import JobLease, JobRun
from bookiji.store.uow import UnitOfWork

log = logging.getLogger("bookiji.jobs")

Job = Callable[[], JobReport]


class JobRunner:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        jobs: Mapping[str, Job],
        *,
        owner: str,
        lease: timedelta = timedelta(seconds=60),
    ) -> None:
        self.db = db
        self.clock = clock
        self.jobs = dict(jobs)
        self.owner = owner
        self.lease = lease

    def _acquire(self, name: str) -> bool:
        now = self.clock.now()
        try:
            with UnitOfWork(self.db) as uow:
                row = uow.session.get(JobLease, f"job:{name}", with_for_update=True)
                if row is None:
                    uow.session.add(
                        JobLease(
                            name=f"job:{name}",
                            owner=self.owner,
                            acquired_at=now,
                            expires_at=now + self.lease,
                        )
                    )
                elif row.expires_at > now and row.owner != self.owner:
                    return False
                else:
                    row.owner, row.acquired_at, row.expires_at = self.owner, now, now + self.lease
                uow.commit()
                return True
        except IntegrityError:  # another worker inserted the lease first
            return False

    def _release(self, name: str) -> None:
        with UnitOfWork(self.db) as uow:
            row = uow.session.get(JobLease, f"job:{name}", with_for_update=True)
            if row is not None and row.owner == self.owner:
                row.expires_at = self.clock.now()
                uow.commit()

    def run(self, name: str) -> JobReport | None:
        """Run one job if no other worker holds it; None when skipped."""
        if not self._acquire(name):
            return None
        started = self.clock.now()
        began = time.perf_counter()
        try:
            report = self.jobs[name]()
        except Exception as exc:  # a failing job must not stop the others
            report = JobReport(name)
            report.errors.append(f"{type(exc).__name__}: {exc}")
            log.exception("job %s failed", name)
        finally:
            self._release(name)
        with UnitOfWork(self.db) as uow:
            uow.session.add(
                JobRun(
                    name=name,
                    owner=self.owner,
                    started_at=started,
                    finished_at=self.clock.now(),
                    processed=report.processed,
                    errors=len(report.errors),
                )
            )
            uow.commit()
        log.info(
            "job run",
            extra={
                "job": name,
                "processed": report.processed,
                "errors": len(report.errors),
                "duration_ms": round((time.perf_counter() - began) * 1000, 1),
                "reservation_ids": sorted(
                    {str(i["reservationId"]) for i in report.items if "reservationId" in i}
                )[:50],
            },
        )
        return report

    def run_all(self) -> list[JobReport]:
        reports = []
        for name in self.jobs:
            report = self.run(name)
            if report is not None:
                reports.append(report)
        return reports
