"""Named jobs, each run by one worker at a time across every daemon sharing the database.

A run first takes the job's lease (a `job_leases` row with an expiry) in one short
transaction; another daemon that finds the lease held skips that round. While the job runs,
a heartbeat thread renews the lease every third of it (each renewal its own short
transaction: `UPDATE ... WHERE name = ? AND owner = me`, no lock held in between), so a run
longer than the lease keeps it; the heartbeat stops before the lease is released at the end
of the run. A renewal that finds the lease taken by another worker (this one stalled past
its lease) is logged and reported as an error of the run, and renewing stops; jobs take no
cancellation, so the run itself goes on to its end. A killed worker's lease simply runs out
(its heartbeat dies with it), so nothing is lost: the next round elsewhere picks the work up
(the jobs themselves are idempotent). Every run is recorded in `job_runs`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

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
        heartbeat: timedelta | None = None,
    ) -> None:
        """`heartbeat` is the real time between two renewals of a running job's lease (a
        third of `lease` by default)."""
        heartbeat = lease / 3 if heartbeat is None else heartbeat
        if lease <= timedelta(0) or not timedelta(0) < heartbeat < lease:
            raise ValueError("need 0 < heartbeat < lease")
        self.db = db
        self.clock = clock
        self.jobs = dict(jobs)
        self.owner = owner
        self.lease = lease
        self.heartbeat = heartbeat

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

    def _renew(self, name: str) -> bool:
        """Push this worker's lease out to a full lease from now; False if it is not this
        worker's any more."""
        stmt = (
            update(JobLease)
            .where(col(JobLease.name) == f"job:{name}", col(JobLease.owner) == self.owner)
            .values(expires_at=self.clock.now() + self.lease)
            .returning(col(JobLease.name))
            .execution_options(synchronize_session=False)
        )
        with UnitOfWork(self.db) as uow:
            renewed = uow.session.execute(stmt).first() is not None
            uow.commit()
        return renewed

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
        heartbeat = _Heartbeat(self, name)
        try:
            report = self.jobs[name]()
        except Exception as exc:  # a failing job must not stop the others
            report = JobReport(name)
            report.errors.append(f"{type(exc).__name__}: {exc}")
            log.exception("job %s failed", name)
        finally:
            heartbeat.stop()
            # Stamped before the lease goes: another worker may start the job the moment it
            # is released, and the run log must never show two runs of one job overlapping.
            finished = self.clock.now()
            self._release(name)
        if heartbeat.lost:
            report.errors.append(
                f"the lease of job {name} was taken by another worker while this run went on"
            )
        with UnitOfWork(self.db) as uow:
            uow.session.add(
                JobRun(
                    name=name,
                    owner=self.owner,
                    started_at=started,
                    finished_at=finished,
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


class _Heartbeat:
    """Renews a running job's lease every `runner.heartbeat` until stopped, or until a
    renewal finds the lease taken by another worker (then `lost`)."""

    def __init__(self, runner: JobRunner, name: str) -> None:
        self.runner, self.name = runner, name
        self.lost = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"job-lease:{name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(self.runner.heartbeat.total_seconds()):
            try:
                renewed = self.runner._renew(self.name)
            except Exception:  # the database may be back by the next beat
                log.exception("job %s: renewing the lease failed", self.name)
                continue
            if not renewed:
                self.lost = True
                log.warning(
                    "job %s: the lease was taken by another worker while this run goes on "
                    "(it stalled past the lease); no longer renewing it",
                    self.name,
                )
                return

    def stop(self) -> None:
        """Stop renewing; returns once no renewal is under way (a renewal is one short
        transaction), so none extends the lease after it is released. A renewal stuck past
        a whole lease is left behind (logged): at worst it keeps the lease one more lease."""
        self._stopped.set()
        self._thread.join(timeout=self.runner.lease.total_seconds())
        if self._thread.is_alive():
            log.warning("job %s: a lease renewal is still under way at the end of the run",
                        self.name)  # fmt: skip
