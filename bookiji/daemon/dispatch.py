"""Vendor notifications sent off the request thread.

A new hold commits its notification rows with it (an outbox), so handing the sending to this
thread loses nothing: what is still queued at shutdown, or was dropped because the queue was
full, stays `pending` and the reconcile job sends it. What has queued up while one batch was
being sent, or arrived within the linger, goes out as the next batch, with one commit for all
of its outcomes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("bookiji.daemon")

_STOP = object()


class BackgroundSender:
    def __init__(
        self,
        send: Callable[[Sequence[str]], object],
        *,
        max_pending: int = 10_000,
        max_batch: int = 200,
        linger: float = 0.05,
    ) -> None:
        self.max_batch = max_batch
        self.linger = linger
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
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            # Wait a moment for company: under load a batch fills at once; alone, a message
            # leaves 50 ms later, and each batch costs one read and one commit.
            until = time.monotonic() + self.linger
            while len(batch) < self.max_batch and _STOP not in batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, until - time.monotonic())))
                except queue.Empty:
                    break
            stopping = _STOP in batch
            ids = [str(item) for item in batch if item is not _STOP]
            if not ids:
                continue
            try:
                self._send(ids)
            except Exception as exc:  # the rows stay pending; reconcile retries them
                log.warning(
                    "sending %d notifications failed: %s", len(ids), type(exc).__name__,
                    extra={"notifications": ids[:20]},
                )  # fmt: skip
