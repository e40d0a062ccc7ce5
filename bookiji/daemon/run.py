"""`bookiji daemon`: serve the API and run the jobs on their schedules.

Jobs run in one background thread (`schedule`), each round claiming the job's lease so that
several daemons on one Postgres never run the same job at once. SIGTERM or Ctrl-C: uvicorn
stops accepting, drains in-flight requests (up to the grace period), then the job thread
finishes the job it is in and the process exits 0.
"""

from __future__ import annotations

import logging
import threading
from types import FrameType

import schedule
import uvicorn

from bookiji import telemetry
from bookiji.api import jsonlog
from bookiji.api.app import create_app
from bookiji.api.metrics import Metrics
from bookiji.bootstrap import build
from bookiji.config import Settings
from bookiji.daemon.dispatch import BackgroundSender
from bookiji.daemon.jobs import job_runner

log = logging.getLogger("bookiji.daemon")


class _Server(uvicorn.Server):
    """uvicorn re-raises a caught SIGTERM after its graceful shutdown (so the process dies
    of the signal); a drained daemon should instead finish its jobs and exit 0."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def run_daemon(settings: Settings, *, host: str, port: int) -> int:
    jsonlog.configure("INFO")
    telemetry.configure(settings)
    container = build(settings)
    sender = BackgroundSender(container.confirmation.deliver)
    container.notification_sink = sender.submit
    sender.start()
    metrics = Metrics(container)
    app = create_app(container, metrics)
    runner = job_runner(container)
    stop = threading.Event()
    scheduler = schedule.Scheduler()
    intervals = settings.daemon.jobs.model_dump()

    def run(name: str) -> None:
        if stop.is_set():
            return
        try:
            report = runner.run(name)
        except Exception as exc:  # e.g. the database is down: try again next round
            log.warning("job could not run", extra={"job": name, "error": type(exc).__name__})
            metrics.observe_job(name, 1)
            return
        if report is not None:
            metrics.observe_job(name, len(report.errors))

    for name in runner.jobs:
        scheduler.every(intervals[name]).seconds.do(run, name)

    def loop() -> None:
        while not stop.is_set():
            scheduler.run_pending()
            stop.wait(0.2)

    jobs_thread = threading.Thread(target=loop, name="bookiji-jobs", daemon=True)
    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(settings.daemon.shutdown_grace_seconds),
        )
    )
    log.info("daemon starting", extra={"host": host, "port": port, "owner": runner.owner})
    jobs_thread.start()
    try:
        server.run()
    finally:
        stop.set()
        sender.stop(timeout=min(3.0, settings.daemon.shutdown_grace_seconds))
        jobs_thread.join(timeout=settings.daemon.shutdown_grace_seconds)
        container.close()
        telemetry.shutdown()
        log.info("daemon stopped", extra={"owner": runner.owner})
    return 0
