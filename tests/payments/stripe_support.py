"""Fixtures for payment tests: a fresh Stripe test server per test, and SDK clients for it.

A test module exposes the fixtures it uses by name (pytest finds them as module globals)::

    from tests.payments import stripe_support
    from tests.payments.stripe_support import stripe_client

    stripe_server = stripe_support.stripe_server
    webhook_receiver = stripe_support.webhook_receiver

`stripe_client(server)` builds a `stripe.StripeClient` the way production code should:
the API base address pointed at the server, no hidden SDK retries unless asked for, and a
bounded HTTP timeout. `WebhookReceiver` is a local HTTP endpoint to point
`server.webhook_url` at; it records each delivery's body and headers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from tests.fakes.stripe_server import StripeServer


def stripe_client(
    server: StripeServer,
    *,
    api_key: str | None = None,
    timeout: float = 10.0,
    max_network_retries: int = 0,
    stripe_account: str | None = None,
    stripe_version: str | None = None,
    http_client: stripe.HTTPClient | None = None,
) -> stripe.StripeClient:
    """A `stripe.StripeClient` talking to `server` over loopback HTTP.

    The SDK's default sync transport is `requests` (`stripe.RequestsClient`, 80 s timeout);
    here it gets `timeout` seconds. Pass `http_client` to use another transport, e.g.
    `stripe.HTTPXClient(timeout=..., allow_sync_methods=True)` (without
    `allow_sync_methods=True` HTTPXClient refuses synchronous calls).
    """
    return stripe.StripeClient(
        api_key or server.api_key,
        base_addresses={"api": server.base_url},
        max_network_retries=max_network_retries,
        stripe_account=stripe_account,
        stripe_version=stripe_version,
        http_client=http_client or stripe.RequestsClient(timeout=timeout),
    )


@pytest.fixture
def stripe_server() -> Iterator[StripeServer]:
    """A running, empty Stripe test server; fails the test if the server itself crashed."""
    with StripeServer() as server:
        yield server
    if server.errors:
        pytest.fail("the Stripe test server failed:\n" + "\n".join(server.errors))


@dataclass
class ReceivedWebhook:
    body: bytes
    headers: dict[str, str]  # lower-cased names

    @property
    def signature(self) -> str:
        return self.headers.get("stripe-signature", "")


class WebhookReceiver:
    """A local webhook endpoint. Answers 200, or the statuses queued with `fail_next`."""

    def __init__(self) -> None:
        self.received: list[ReceivedWebhook] = []
        self._statuses: list[int] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status = receiver._record(body, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/stripe/webhooks"

    def fail_next(self, *statuses: int) -> None:
        with self._cond:
            self._statuses.extend(statuses)

    def _record(self, body: bytes, headers: Mapping[str, str]) -> int:
        with self._cond:
            self.received.append(ReceivedWebhook(body, dict(headers)))
            self._cond.notify_all()
            return self._statuses.pop(0) if self._statuses else 200

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedWebhook]:
        """The first `count` deliveries; fails the test if they do not arrive in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"expected {count} webhooks, got {len(self.received)}")
                self._cond.wait(left)
            return list(self.received[:count])

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    try:
        yield receiver
    finally:
        receiver.close()
