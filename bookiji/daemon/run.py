"""`bookiji daemon`: serve the API and run the jobs on their schedules.

Jobs run in one background thread (`schedule`), each round claiming the job's lease so that
several daemons on one Postgres never run the same job at once. SIGTERM or Ctrl-C: uvicorn
stops accepting, drains in-flight requests (up to the grace period), then the job thread
finishes the job it is in and the process exits 0. Webhook delivery claims nothing more from
the signal on; a send still waiting on a partner's endpoint when the grace period is over is
left to its lease (the next daemon retries it; receivers dedupe by `webhook-id`).
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Callable
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
from bookiji.domain.errors import Unavailable
from bookiji.integrations.notify import console_notifications_to_log

log = logging.getLogger("bookiji.daemon")


class _Server(uvicorn.Server):
    """uvicorn re-raises a caught SIGTERM after its graceful shutdown (so the process dies
    of the signal); a drained daemon should instead finish its jobs and exit 0. The first
    signal also tells the jobs to stop, so they wind down while requests drain."""

    on_exit: Callable[[], None] = staticmethod(lambda: None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def _settle_garbage_collector() -> None:
    """Keep the collector off the request path. What start-up built (modules, mappers, the
    app) lives as long as the process: frozen, a full collection no longer walks it (those
    walks were the 100+ ms p99 spikes under load); and a request allocates thousands of
    short-lived objects, so the youngest generation is collected per 50,000, not 700."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


#: uvicorn's own default backlog (it calls listen() again with it, which is harmless).
BACKLOG = 2048


def listen(host: str, port: int) -> socket.socket:
    """The API's socket, bound before any job or thread starts: a port in use, an address
    this machine does not have or an unknown host name is one clear error, and nothing has
    run meanwhile. Bound as uvicorn binds it (IPv6 only for an address with a colon).

    The protocol is named, not left 0: asyncio turns Nagle off only on connections whose
    socket says IPPROTO_TCP. Left on, a response's second write waited for the client's
    delayed ACK: ~40 ms on every request of a connection carrying one request at a time."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening from now on: the start-up line announces the port before uvicorn
        # starts, and a client that connects at once must queue, not be refused.
        sock.listen(BACKLOG)
    except OSError as exc:  # socket.gaierror for a name that does not resolve
        sock.close()
        raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def run_daemon(settings: Settings, *, host: str, port: int) -> int:
    sock = listen(host, port)
    jsonlog.configure(settings.log_level)
    console_notifications_to_log()
    telemetry.configure(settings)
    container = build(settings)
    sender = BackgroundSender(container.confirmation.deliver_many)
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
            metrics.observe_job(name, len(report.errors), len(report.items))

    # Partner webhooks run on their own thread: a partner endpoint that hangs (or trickles
    # its answer) holds up deliveries, never expiry, commits or compensations; and within
    # deliveries, it holds up only its own partner's (`WebhookService.deliver_due`, lanes).
    deliveries = schedule.Scheduler()
    for name in runner.jobs:
        (deliveries if name == "webhooks" else scheduler).every(intervals[name]).seconds.do(
            run, name
        )

    def loop(jobs: schedule.Scheduler) -> None:
        while not stop.is_set():
            jobs.run_pending()
            stop.wait(0.2)

    threads = [
        threading.Thread(target=loop, args=(scheduler,), name="bookiji-jobs", daemon=True),
        threading.Thread(target=loop, args=(deliveries,), name="bookiji-webhooks", daemon=True),
    ]
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
    grace = settings.daemon.shutdown_grace_seconds
    deadline = [float("inf")]

    def begin_shutdown() -> None:
        if not stop.is_set():
            deadline[0] = time.monotonic() + grace
            stop.set()
            # Webhook lanes claim nothing more; the sends in flight end within their timeout.
            container.webhooks.stop()

    server.on_exit = begin_shutdown
    # The port bound, not the one asked for: with --port 0 this line is how to find it.
    bound = sock.getsockname()[1]
    log.info("daemon starting", extra={"host": host, "port": bound, "owner": runner.owner})
    _settle_garbage_collector()
    for thread in threads:
        thread.start()
    try:
        server.run(sockets=[sock])
    finally:
        begin_shutdown()
        # Everything shares one grace period from the signal (the unit's stop timeout is
        # longer): requests drained meanwhile, the job in flight, queued notifications.
        for thread in threads:
            thread.join(timeout=max(0.1, deadline[0] - time.monotonic()))
        sender.stop(timeout=max(0.1, deadline[0] - time.monotonic()))
        container.close()
        telemetry.shutdown()
        log.info("daemon stopped", extra={"owner": runner.owner})
    return 0
