"""A Standard Webhooks endpoint on loopback, as a partner or a vendor would run it.

Every POST's signature is verified with the endpoint's secret (`webhook-id`,
`webhook-timestamp`, `webhook-signature`; the `standardwebhooks` package): a bad one is
answered 400 and counted in `bad`. A good one is answered 204; its body is kept under its
`webhook-id` the first time (receivers dedupe by it) and counted in `duplicates` afterwards.
`order` lists the ids in order of first arrival; `on_message(id, body)` is called once per id.
`fail_next(*statuses)` makes the next deliveries fail with those statuses (nothing recorded).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from standardwebhooks import Webhook

from tests.fakes.loopback import FakeHandler, LoopbackFake


class StandardWebhookReceiver(LoopbackFake):
    _thread_name = "fake-webhook-receiver"

    def __init__(
        self,
        secret: str,
        *,
        path: str = "/hooks",
        on_message: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self._verifier = Webhook(secret)
        self.path = path
        self.on_message = on_message
        self.seen: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.deliveries = 0
        self.duplicates = 0
        self.bad = 0
        self.errors: list[str] = []
        self._statuses: list[int] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._httpd = None

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def fail_next(self, *statuses: int) -> None:
        with self._cond:
            self._statuses.extend(statuses)

    def wait_for(self, ids: set[str], timeout: float) -> bool:
        """True once every id in `ids` has arrived, False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ids <= self.seen.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _handle(self, handler: FakeHandler, method: str) -> None:
        if method != "POST" or handler.path.split("?")[0] != self.path:
            handler.reply(404, b"", {})
            return
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._cond:
            injected = self._statuses.pop(0) if self._statuses else None
        if injected is not None:
            handler.reply(injected, b"", {})
            return
        try:
            document = self._verifier.verify(body, headers)
        except Exception:
            with self._cond:
                self.bad += 1
            handler.reply(400, b"", {})
            return
        message_id = headers["webhook-id"]
        with self._cond:
            self.deliveries += 1
            first = message_id not in self.seen
            if first:
                self.seen[message_id] = document
                self.order.append(message_id)
            else:
                self.duplicates += 1
            self._cond.notify_all()
        if first and self.on_message is not None:
            try:
                self.on_message(message_id, document)
            except Exception as exc:  # a receiver's own bug: recorded, never a 500 loop
                self.errors.append(f"{type(exc).__name__}: {exc}")
        handler.reply(204, b"", {})
