"""Loopback endpoints for the notifier tests: a webhook receiver and a real SMTP server.

Both run on 127.0.0.1 with an ephemeral port, in daemon threads, and answer what the test
scripts (a status for the webhook, an SMTP reply for the mail server). Every wait is
bounded; a scripted delay ends early when the endpoint closes.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from bookiji.services.ports import VendorNotification

TOKEN = "vct_s3cr3t-Token.AAAABBBBCCCCDDDDEEEE"


def notification(**changes: Any) -> VendorNotification:
    """A hold at 15:00Z on Tue 1 Dec 2026: 10:00 in New York (EST, UTC-05:00)."""
    values: dict[str, Any] = {
        "reservation_id": "res_8f3a1c2b9d",
        "vendor_id": "salon-ana",
        "vendor_name": "Salon Ana",
        "slot_start": datetime(2026, 12, 1, 15, 0, tzinfo=UTC),
        "slot_end": datetime(2026, 12, 1, 15, 30, tzinfo=UTC),
        "timezone": "America/New_York",
        "requester_id": "alice",
        "token": TOKEN,
        "expires_at": datetime(2026, 12, 1, 15, 0, tzinfo=UTC) - timedelta(hours=20),
        "answer_url": None,
    }
    values.update(changes)
    return VendorNotification(**values)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -------------------------------------------------------------------------- webhooks


@dataclass
class ReceivedWebhook:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass
class _Script:
    status: int
    remaining: int
    delay: float | None


class WebhookReceiver:
    """Records POSTs; answers 204 unless told otherwise with `respond(...)`."""

    def __init__(self) -> None:
        self.received: list[ReceivedWebhook] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._scripts: list[_Script] = []
        self._httpd: _WebhookHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WebhookReceiver:
        httpd = _WebhookHTTPServer(("127.0.0.1", 0), _WebhookHandler)
        httpd.receiver = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="webhook-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_port}/hooks/bookiji"

    def respond(self, status: int, *, count: int = 1, delay: float | None = None) -> None:
        with self._lock:
            self._scripts.append(_Script(status, count, delay))

    def _next(self) -> _Script | None:
        with self._lock:
            for script in self._scripts:
                if script.remaining > 0:
                    script.remaining -= 1
                    return script
        return None

    def _handle(self, handler: _WebhookHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            self.received.append(
                ReceivedWebhook(
                    handler.path, {k.lower(): v for k, v in handler.headers.items()}, body
                )
            )
        script = self._next()
        if script is not None and script.delay:
            self._stopping.wait(script.delay)
        status = script.status if script is not None else 204
        try:
            handler.send_response(status)
            payload = b"" if status == 204 else b'{"ok": false}'
            if payload:
                handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (ConnectionError, TimeoutError):
            handler.close_connection = True


class _WebhookHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    receiver: WebhookReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        self.receiver.errors.append(traceback.format_exc())


class _WebhookHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _WebhookHTTPServer

    def do_POST(self) -> None:
        self.server.receiver._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


# -------------------------------------------------------------------------- SMTP


@dataclass
class SmtpHandler:
    """aiosmtpd handler: stores accepted messages; `rcpt_reply`/`data_reply` reject instead
    (e.g. "550 5.1.1 Mailbox unavailable", "451 4.3.0 Temporary failure")."""

    rcpt_reply: str | None = None
    data_reply: str | None = None
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_RCPT(
        self,
        server: Any,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        content = envelope.original_content or envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 2.0.0 Message accepted for delivery"


class Credentials:
    """aiosmtpd authenticator accepting one username/password pair."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def __call__(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            ok = (
                auth_data.login.decode() == self.username
                and auth_data.password.decode() == self.password
            )
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)


class SmtpServer(Controller):
    """aiosmtpd's threaded Controller on 127.0.0.1 and an ephemeral port.

    Controller connects to its own port once at start; with port 0 it must first learn
    which port the listener got, hence the `_trigger_server` override.
    """

    def __init__(self, handler: SmtpHandler, **smtp_parameters: Any) -> None:
        super().__init__(
            handler, hostname="127.0.0.1", port=0, ready_timeout=5.0, **smtp_parameters
        )
        self.sink = handler

    def _trigger_server(self) -> None:
        server = cast(asyncio.Server, self.server)
        self.port = int(server.sockets[0].getsockname()[1])
        super()._trigger_server()  # type: ignore[no-untyped-call]

    def __enter__(self) -> SmtpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def headers_of(message: EmailMessage) -> Mapping[str, str]:
    return {k: str(v) for k, v in message.items()}
