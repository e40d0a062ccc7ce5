"""Vendor notifications sent off the request thread.

A new hold commits its notification rows with it (an outbox), so handing the sending to this
thread loses nothing: what is still queued at shutdown, or was dropped because the queue was
full, stays `pending` and the reconcile job sends it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("bookiji.daemon")

_STOP = object()


class BackgroundSender:
    def __init__(self, send: Callable[[str], object], *, max_pending: int = 10_000) -> None:
        self._send = send
        self._queue: queue.Queue[object] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name="bookiji-notify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, ids: list[str]) -> None:
        for notification_id in ids:
            try:
                self._queue.put_nowait(notification_id)
            except queue.Full:
                log.warning("notification queue full; %s waits for reconcile", notification_id)

    def stop(self, timeout: float) -> None:
        """Send what is queued, for at most `timeout` seconds."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._send(str(item))
            except Exception as exc:  # the row stays pending; reconcile retries it
                log.warning("sending notification %s failed: %s", item, type(exc).__name__)
