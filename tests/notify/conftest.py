"""Fixtures: loopback endpoints, and one `channel` harness per notifier for shared tests."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from bookiji.integrations.notify import (
    ConsoleNotifier,
    SmtpNotifier,
    TwilioSmsNotifier,
    WebhookNotifier,
)
from bookiji.services.ports import Notifier
from tests.fakes.twilio_server import TwilioServer
from tests.notify.support import (
    TOKEN,
    Credentials,
    SmtpHandler,
    SmtpServer,
    WebhookReceiver,
)

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"bookiji-test-webhook-signing-key").decode()
SMTP_PASSWORD = "smtp-Pa55word-XYZ"
VENDOR_PHONE = "+14155550123"


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver
    assert not receiver.errors, receiver.errors


@pytest.fixture
def twilio_server() -> Iterator[TwilioServer]:
    with TwilioServer() as server:
        yield server
    assert not server.errors, server.errors


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with SmtpServer(SmtpHandler()) as server:
        yield server


@dataclass
class Channel:
    """One notifier wired to its loopback endpoint."""

    name: str
    notifier: Notifier
    destination: str
    delivered: Callable[[], str]  # everything delivered so far, as text
    break_next: Callable[[], None]  # the next send fails, with a server that echoes secrets
    secrets: tuple[str, ...]  # what must never appear in an error message


def _webhook(stack: ExitStack) -> Channel:
    receiver = stack.enter_context(WebhookReceiver())
    notifier = WebhookNotifier(WEBHOOK_SECRET, timeout=5)
    stack.callback(notifier.close)
    return Channel(
        "webhook",
        notifier,
        receiver.url,
        lambda: "\n".join(r.body.decode() for r in receiver.received),
        lambda: receiver.respond(422),
        (TOKEN, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_")),
    )


def _email(stack: ExitStack) -> Channel:
    handler = SmtpHandler()
    server = stack.enter_context(
        SmtpServer(
            handler,
            authenticator=Credentials("bookiji", SMTP_PASSWORD),
            auth_require_tls=False,
            auth_required=True,
        )
    )
    notifier = SmtpNotifier(
        "127.0.0.1",
        server.port,
        sender="Bookiji <bookings@bookiji.example>",
        username="bookiji",
        password=SMTP_PASSWORD,
        timeout=5,
    )

    def delivered() -> str:
        parts = []
        for message in handler.messages:
            parts.append(str(message["Subject"]))
            parts += [p.get_content() for p in message.walk() if not p.is_multipart()]
        return "\n".join(parts)

    def break_next() -> None:
        handler.rcpt_reply = f"550 5.1.1 <{TOKEN}> {SMTP_PASSWORD}: mailbox unavailable"

    return Channel(
        "email",
        notifier,
        "Salon Ana <ana@salon.example>",
        delivered,
        break_next,
        (TOKEN, SMTP_PASSWORD),
    )


def _sms(stack: ExitStack) -> Channel:
    server = stack.enter_context(TwilioServer())
    notifier = TwilioSmsNotifier(
        server.account_sid,
        server.auth_token,
        from_number="+15005550006",
        base_url=server.base_url,
        timeout=5,
    )
    return Channel(
        "sms",
        notifier,
        VENDOR_PHONE,
        lambda: "\n".join(m.body for m in server.messages),
        lambda: server.fail_next(
            400, code=21610, message=f"Attempt to send to unsubscribed recipient {TOKEN}"
        ),
        (TOKEN, server.auth_token),
    )


def _console(stack: ExitStack) -> Channel:
    stream = io.StringIO()
    notifier = ConsoleNotifier(stream)
    return Channel(
        "console",
        notifier,
        "",
        stream.getvalue,
        stream.close,  # writing to a closed stream fails
        (TOKEN,),
    )


CHANNELS = {"webhook": _webhook, "email": _email, "sms": _sms, "console": _console}


@pytest.fixture(params=sorted(CHANNELS))
def channel(request: pytest.FixtureRequest) -> Iterator[Channel]:
    with ExitStack() as stack:
        yield CHANNELS[request.param](stack)
