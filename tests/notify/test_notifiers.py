"""Vendor notification channels over real loopback endpoints.

Shared behaviour runs over every channel (`channel` fixture); then each channel's own
contract: Standard Webhooks signatures and stable ids, SMTP replies through a real aiosmtpd
server, the real `twilio` SDK against the fake Twilio API, and the console line.
"""

from __future__ import annotations

import io
import json
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trustme
from standardwebhooks import Webhook, WebhookVerificationError

from bookiji.integrations.notify import ConsoleNotifier, local_slot
from bookiji.integrations.notify_email import SmtpNotifier
from bookiji.integrations.notify_sms import SMS_SOFT_LIMIT, TwilioSmsNotifier, sms_body
from bookiji.integrations.notify_webhook import WebhookNotifier, webhook_id
from bookiji.services.ports import NotificationFailed
from tests.fakes.twilio_server import TwilioServer
from tests.notify.conftest import SMTP_PASSWORD, VENDOR_PHONE, WEBHOOK_SECRET, Channel
from tests.notify.support import (
    TOKEN,
    Credentials,
    SmtpHandler,
    SmtpServer,
    WebhookReceiver,
    closed_port,
    notification,
)

D = "\u2013"  # the en dash between times

pytestmark = [
    pytest.mark.timeout(60),
    # the AUTH tests run without TLS on purpose; aiosmtpd warns about that
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
]

ANSWER_URL = "https://partners.bookiji.example/v1/vendor-answers"
SENDER = "Bookiji <bookings@bookiji.example>"
FROM_NUMBER = "+15005550006"


def _assert_clean(error: NotificationFailed, secrets: tuple[str, ...]) -> None:
    """Neither the message, nor repr, nor anything chained to it names a secret."""
    texts = [str(error), repr(error), error.message, json.dumps(error.to_envelope())]
    cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    while cause is not None:
        texts.append(repr(cause))
        texts.append(str(cause))
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    for secret in secrets:
        for text in texts:
            assert secret not in text, f"secret leaked into: {text!r}"


# =========================================================================== every channel


def test_delivered_notification_names_the_reservation_and_the_local_slot(
    channel: Channel,
) -> None:
    assert channel.notifier.channel == channel.name
    channel.notifier.send(channel.destination, notification())
    text = channel.delivered()
    assert "res_8f3a1c2b9d" in text
    # 15:00Z on 1 Dec 2026 is 10:00 in New York (EST); the UTC hour is not what is shown
    assert "10:00" in text
    assert "10:30" in text


def test_failure_messages_never_contain_a_secret(channel: Channel) -> None:
    channel.break_next()  # the failing endpoints echo the token and credentials back
    with pytest.raises(NotificationFailed) as caught:
        channel.notifier.send(channel.destination, notification(answer_url=ANSWER_URL))
    assert caught.value.code == "notification_failed"
    _assert_clean(caught.value, channel.secrets)


def test_naive_times_are_refused_before_anything_is_sent(channel: Channel) -> None:
    with pytest.raises(NotificationFailed) as caught:
        channel.notifier.send(
            channel.destination, notification(slot_start=datetime(2026, 12, 1, 15, 0))
        )
    assert caught.value.retryable is False
    assert channel.delivered() == ""


# =========================================================================== local times


def test_local_slot_formats_in_the_vendor_zone() -> None:
    slot = local_slot(notification())
    assert slot.short() == f"Tue 1 Dec 10:00{D}10:30"
    assert slot.long() == f"Tuesday 1 December 2026, 10:00{D}10:30 (America/New_York, UTC-05:00)"
    assert slot.expiry() == "Mon 30 Nov 14:00 (America/New_York)"


def test_local_slot_across_midnight_and_across_a_dst_change() -> None:
    late = local_slot(
        notification(
            slot_start=datetime(2026, 12, 2, 4, 30, tzinfo=UTC),
            slot_end=datetime(2026, 12, 2, 5, 30, tzinfo=UTC),
        )
    )
    assert late.short() == f"Tue 1 Dec 23:30{D}Wed 2 Dec 00:30"
    # London falls back at 01:00Z on 25 Oct 2026: 00:30 BST to 01:30 GMT
    dst = local_slot(
        notification(
            timezone="Europe/London",
            slot_start=datetime(2026, 10, 24, 23, 30, tzinfo=UTC),
            slot_end=datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
        )
    )
    assert (
        dst.long()
        == f"Sunday 25 October 2026, 00:30{D}01:30 (Europe/London, UTC+01:00 → UTC+00:00)"
    )


def test_unknown_timezone_falls_back_to_utc_and_says_so() -> None:
    slot = local_slot(notification(timezone="Mars/Olympus_Mons"))
    assert slot.short() == f"Tue 1 Dec 15:00{D}15:30"
    assert slot.zone == "UTC"


# =========================================================================== webhook


def _webhook(timeout: float = 5.0) -> WebhookNotifier:
    return WebhookNotifier(WEBHOOK_SECRET, timeout=timeout)


@pytest.fixture
def hook() -> Iterator[WebhookNotifier]:
    with _webhook() as notifier:
        yield notifier


def test_webhook_is_signed_per_standard_webhooks(
    hook: WebhookNotifier, webhook_receiver: WebhookReceiver
) -> None:
    hook.send(webhook_receiver.url, notification(answer_url=ANSWER_URL))
    (received,) = webhook_receiver.received
    assert received.path == "/hooks/bookiji"
    assert received.headers["content-type"] == "application/json"
    assert received.headers["webhook-signature"].startswith("v1,")
    assert abs(int(received.headers["webhook-timestamp"]) - time.time()) < 60

    payload = Webhook(WEBHOOK_SECRET).verify(received.body, received.headers)
    assert payload == {
        "type": "reservation.confirmation_requested",
        "reservationId": "res_8f3a1c2b9d",
        "vendorId": "salon-ana",
        "slotStartTime": "2026-12-01T15:00:00Z",
        "slotEndTime": "2026-12-01T15:30:00Z",
        "timezone": "America/New_York",
        "localStart": "2026-12-01T10:00:00-05:00",
        "localEnd": "2026-12-01T10:30:00-05:00",
        "requesterId": "alice",
        "token": TOKEN,
        "expiresAt": "2026-11-30T19:00:00Z",
        "answerUrl": f"{ANSWER_URL}?token={TOKEN}",
    }


def test_webhook_signature_fails_with_a_wrong_secret_or_a_changed_body(
    hook: WebhookNotifier, webhook_receiver: WebhookReceiver
) -> None:
    hook.send(webhook_receiver.url, notification())
    (received,) = webhook_receiver.received
    other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(received.body, received.headers)
    tampered = received.body.replace(b"alice", b"mallory")
    with pytest.raises(WebhookVerificationError):
        Webhook(WEBHOOK_SECRET).verify(tampered, received.headers)


def test_webhook_without_answer_url_sends_null(
    hook: WebhookNotifier, webhook_receiver: WebhookReceiver
) -> None:
    hook.send(webhook_receiver.url, notification())
    assert webhook_receiver.received[0].json()["answerUrl"] is None


def test_webhook_id_is_stable_across_retries_and_differs_per_token(
    hook: WebhookNotifier, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.respond(503)
    with pytest.raises(NotificationFailed) as caught:
        hook.send(webhook_receiver.url, notification())
    assert caught.value.retryable is True
    hook.send(webhook_receiver.url, notification())
    hook.send(webhook_receiver.url, notification(token="vct_another-token"))
    hook.send(webhook_receiver.url, notification(reservation_id="res_other"))
    first, retry, new_token, other_reservation = webhook_receiver.received
    assert first.headers["webhook-id"] == retry.headers["webhook-id"]
    assert first.headers["webhook-id"] == webhook_id(notification())
    assert first.body == retry.body  # byte-identical payload across attempts
    assert len({first.headers["webhook-id"], new_token.headers["webhook-id"],
                other_reservation.headers["webhook-id"]}) == 3  # fmt: skip
    assert TOKEN not in first.headers["webhook-id"]
    for received in webhook_receiver.received:
        Webhook(WEBHOOK_SECRET).verify(received.body, received.headers)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (410, False),
        (422, False),
        (301, False),  # redirects are not followed
        (408, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
    ],
)
def test_webhook_status_codes_map_to_retryable(
    hook: WebhookNotifier, webhook_receiver: WebhookReceiver, status: int, retryable: bool
) -> None:
    webhook_receiver.respond(status)
    with pytest.raises(NotificationFailed) as caught:
        hook.send(webhook_receiver.url, notification())
    assert caught.value.retryable is retryable
    assert str(status) in str(caught.value)
    _assert_clean(caught.value, (TOKEN, WEBHOOK_SECRET))


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_webhook_any_2xx_is_delivered(
    hook: WebhookNotifier, webhook_receiver: WebhookReceiver, status: int
) -> None:
    webhook_receiver.respond(status)
    hook.send(webhook_receiver.url, notification())


def test_webhook_timeout_is_retryable(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.respond(204, delay=5)
    started = time.monotonic()
    with _webhook(timeout=0.3) as notifier, pytest.raises(NotificationFailed) as caught:
        notifier.send(webhook_receiver.url, notification())
    assert time.monotonic() - started < 3
    assert caught.value.retryable is True
    assert "timed out" in str(caught.value)
    _assert_clean(caught.value, (TOKEN, WEBHOOK_SECRET))


def test_webhook_connection_refused_is_retryable(hook: WebhookNotifier) -> None:
    with pytest.raises(NotificationFailed) as caught:
        hook.send(f"http://127.0.0.1:{closed_port()}/hook", notification())
    assert caught.value.retryable is True


@pytest.mark.parametrize("destination", ["ftp://example.com/x", "not a url", "/relative/path"])
def test_webhook_unusable_destination_is_not_retryable(
    hook: WebhookNotifier, destination: str
) -> None:
    with pytest.raises(NotificationFailed) as caught:
        hook.send(destination, notification())
    assert caught.value.retryable is False


def test_webhook_error_message_omits_the_destination_path_and_query(
    hook: WebhookNotifier, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.respond(500)
    with pytest.raises(NotificationFailed) as caught:
        hook.send(webhook_receiver.url + "?key=vendor-own-secret", notification())
    assert "vendor-own-secret" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


def test_webhook_uses_a_given_client_and_leaves_it_open(
    webhook_receiver: WebhookReceiver,
) -> None:
    with httpx.Client() as client:
        notifier = WebhookNotifier(WEBHOOK_SECRET, client=client)
        notifier.send(webhook_receiver.url, notification())
        notifier.close()
        assert not client.is_closed
    assert len(webhook_receiver.received) == 1


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_!!!not-base64!!!"])
def test_webhook_rejects_a_malformed_secret_without_echoing_it(secret: str) -> None:
    with pytest.raises(ValueError) as caught:
        WebhookNotifier(secret)
    if secret.removeprefix("whsec_"):
        assert secret.removeprefix("whsec_") not in str(caught.value)


# =========================================================================== email


def _smtp(server: SmtpServer, **kwargs: object) -> SmtpNotifier:
    options: dict[str, object] = {"sender": SENDER, "timeout": 5.0}
    options.update(kwargs)
    return SmtpNotifier("127.0.0.1", server.port, **options)  # type: ignore[arg-type]


def test_email_is_delivered_with_subject_body_and_recipient(smtp_server: SmtpServer) -> None:
    _smtp(smtp_server).send("Salon Ana <ana@salon.example>", notification())
    (message,) = smtp_server.sink.messages
    assert smtp_server.sink.envelopes == [("bookings@bookiji.example", ["ana@salon.example"])]
    assert message["Subject"] == f"Booking request: Tue 1 Dec 10:00{D}10:30 (America/New_York)"
    assert message["To"] == "Salon Ana <ana@salon.example>"
    assert message["From"] == SENDER
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@bookiji.example>")
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    plain = text.get_content()
    assert "Hello Salon Ana," in plain
    assert f"Tuesday 1 December 2026, 10:00{D}10:30 (America/New_York, UTC-05:00)" in plain
    assert "alice" in plain
    assert "res_8f3a1c2b9d" in plain
    assert TOKEN in plain  # no answer URL: the code itself, with instructions
    assert "confirmation code" in plain
    assert "Mon 30 Nov 14:00 (America/New_York)" in plain
    assert TOKEN in html.get_content()


def test_email_with_answer_url_links_it_with_the_token(smtp_server: SmtpServer) -> None:
    _smtp(smtp_server).send("ana@salon.example", notification(answer_url=ANSWER_URL + "?lang=en"))
    (message,) = smtp_server.sink.messages
    plain = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    link = f"{ANSWER_URL}?lang=en&token={TOKEN}"
    assert link in plain
    assert f'href="{link.replace("&", "&amp;")}"' in html


def test_email_message_id_is_stable_per_reservation_and_token(smtp_server: SmtpServer) -> None:
    notifier = _smtp(smtp_server)
    notifier.send("ana@salon.example", notification())
    notifier.send("ana@salon.example", notification())
    notifier.send("ana@salon.example", notification(token="vct_other"))
    ids = [m["Message-ID"] for m in smtp_server.sink.messages]
    assert ids[0] == ids[1] != ids[2]


def test_email_escapes_html_from_vendor_data(smtp_server: SmtpServer) -> None:
    _smtp(smtp_server).send(
        "ana@salon.example", notification(vendor_name="<script>x</script>\r\nBcc: evil@x")
    )
    (message,) = smtp_server.sink.messages
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html
    assert message["Bcc"] is None


@pytest.mark.parametrize(
    "reply",
    ["550 5.1.1 Mailbox unavailable", "553 5.1.3 Bad destination mailbox address"],
)
def test_email_permanent_rejection_is_not_retryable(reply: str) -> None:
    with SmtpServer(SmtpHandler(rcpt_reply=reply)) as server:
        with pytest.raises(NotificationFailed) as caught:
            _smtp(server).send("ana@salon.example", notification())
        assert not server.sink.messages
    assert caught.value.retryable is False
    assert reply[:3] in str(caught.value)


def test_email_temporary_failure_is_retryable() -> None:
    handler = SmtpHandler(data_reply="451 4.3.0 Temporary failure, try later")
    with SmtpServer(handler) as server, pytest.raises(NotificationFailed) as caught:
        _smtp(server).send("ana@salon.example", notification())
    assert caught.value.retryable is True
    assert "451" in str(caught.value)


def test_email_unreachable_server_is_retryable() -> None:
    notifier = SmtpNotifier("127.0.0.1", closed_port(), sender=SENDER, timeout=2)
    with pytest.raises(NotificationFailed) as caught:
        notifier.send("ana@salon.example", notification())
    assert caught.value.retryable is True


def test_email_silent_server_times_out_and_is_retryable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel completes the handshake; no greeting ever comes
        notifier = SmtpNotifier("127.0.0.1", silent.getsockname()[1], sender=SENDER, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(NotificationFailed) as caught:
            notifier.send("ana@salon.example", notification())
    assert time.monotonic() - started < 3
    assert caught.value.retryable is True
    assert "timed out" in str(caught.value)


def test_email_login_with_credentials() -> None:
    with SmtpServer(
        SmtpHandler(),
        authenticator=Credentials("bookiji", SMTP_PASSWORD),
        auth_require_tls=False,
        auth_required=True,
    ) as server:
        _smtp(server, username="bookiji", password=SMTP_PASSWORD).send(
            "ana@salon.example", notification()
        )
        assert len(server.sink.messages) == 1


def test_email_bad_credentials_are_not_retryable_and_not_echoed() -> None:
    with SmtpServer(
        SmtpHandler(),
        authenticator=Credentials("bookiji", "the-right-one"),
        auth_require_tls=False,
        auth_required=True,
    ) as server:
        with pytest.raises(NotificationFailed) as caught:
            _smtp(server, username="bookiji", password=SMTP_PASSWORD).send(
                "ana@salon.example", notification()
            )
        assert not server.sink.messages
    assert caught.value.retryable is False
    assert "535" in str(caught.value)
    _assert_clean(caught.value, (TOKEN, SMTP_PASSWORD))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _tls_server(ca: trustme.CA) -> SmtpServer:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    return SmtpServer(
        SmtpHandler(),
        tls_context=server_context,
        require_starttls=True,
        authenticator=Credentials("bookiji", SMTP_PASSWORD),
        auth_required=True,
    )


def test_email_starttls_then_login(ca: trustme.CA) -> None:
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with _tls_server(ca) as server:
        _smtp(
            server,
            starttls=True,
            ssl_context=client_context,
            username="bookiji",
            password=SMTP_PASSWORD,
        ).send("ana@salon.example", notification())
        assert len(server.sink.messages) == 1


def test_email_untrusted_certificate_is_not_retryable(ca: trustme.CA) -> None:
    with _tls_server(ca) as server, pytest.raises(NotificationFailed) as caught:
        _smtp(server, starttls=True, username="bookiji", password=SMTP_PASSWORD).send(
            "ana@salon.example", notification()
        )
    assert caught.value.retryable is False
    _assert_clean(caught.value, (TOKEN, SMTP_PASSWORD))


def test_email_starttls_required_but_not_offered_is_not_retryable(
    smtp_server: SmtpServer,
) -> None:
    with pytest.raises(NotificationFailed) as caught:
        _smtp(smtp_server, starttls=True).send("ana@salon.example", notification())
    assert caught.value.retryable is False


@pytest.mark.parametrize("destination", ["not-an-address", "ana@salon.example\r\nBcc: x@y"])
def test_email_bad_destination_is_not_retryable(smtp_server: SmtpServer, destination: str) -> None:
    with pytest.raises(NotificationFailed) as caught:
        _smtp(smtp_server).send(destination, notification())
    assert caught.value.retryable is False
    assert not smtp_server.sink.messages


# =========================================================================== sms


def _sms(
    server: TwilioServer, *, auth_token: str | None = None, timeout: float = 5.0
) -> TwilioSmsNotifier:
    return TwilioSmsNotifier(
        server.account_sid,
        auth_token or server.auth_token,
        from_number=FROM_NUMBER,
        base_url=server.base_url,
        timeout=timeout,
    )


def test_sms_is_delivered_through_the_twilio_sdk(twilio_server: TwilioServer) -> None:
    _sms(twilio_server).send(VENDOR_PHONE, notification(answer_url=ANSWER_URL))
    (message,) = twilio_server.sent_to(VENDOR_PHONE)
    assert message.from_ == FROM_NUMBER
    assert message.sid.startswith("SM")
    assert message.body.startswith("Bookiji booking request res_8f3a1c2b9d: Tue 1 Dec 10:00-10:30")
    assert "(America/New_York)" in message.body
    assert message.body.endswith(f"{ANSWER_URL}?token={TOKEN}")
    assert len(message.body) <= SMS_SOFT_LIMIT
    assert message.encoding == "GSM-7"
    (request,) = twilio_server.requests
    assert request.path == f"/2010-04-01/Accounts/{twilio_server.account_sid}/Messages.json"
    assert request.headers["user-agent"].startswith("twilio-python/")


def test_sms_without_answer_url_carries_the_code(twilio_server: TwilioServer) -> None:
    _sms(twilio_server).send(VENDOR_PHONE, notification())
    (message,) = twilio_server.messages
    assert TOKEN in message.body
    assert "http" not in message.body


def test_sms_body_drops_details_before_the_link() -> None:
    long_url = "https://partners.bookiji.example/v1/answers/" + "x" * 100
    body = sms_body(notification(answer_url=long_url, requester_id="r" * 40))
    assert len(body) <= SMS_SOFT_LIMIT
    assert "r" * 40 not in body  # the requester went first
    assert "res_8f3a1c2b9d" in body and "10:00-10:30" in body
    assert body.endswith(f"{long_url}?token={TOKEN}")
    huge = "https://partners.bookiji.example/" + "y" * 400
    body = sms_body(notification(answer_url=huge))
    assert body.endswith(f"{huge}?token={TOKEN}")  # never cut: longer than 320 it is


def test_sms_invalid_to_number_is_not_retryable(twilio_server: TwilioServer) -> None:
    with pytest.raises(NotificationFailed) as caught:
        _sms(twilio_server).send("555-0123", notification())
    assert caught.value.retryable is False
    assert "21211" in str(caught.value)
    assert not twilio_server.messages


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (500, 20500, True),
        (503, 20503, True),
        (429, 20429, True),
        (400, 21610, False),
        (404, 20404, False),
    ],
)
def test_sms_twilio_errors_map_to_retryable(
    twilio_server: TwilioServer, status: int, code: int, retryable: bool
) -> None:
    twilio_server.fail_next(status, code=code)
    with pytest.raises(NotificationFailed) as caught:
        _sms(twilio_server).send(VENDOR_PHONE, notification())
    assert caught.value.retryable is retryable
    assert str(code) in str(caught.value)
    _assert_clean(caught.value, (TOKEN, twilio_server.auth_token))


def test_sms_bad_credentials_are_not_retryable_and_not_echoed(
    twilio_server: TwilioServer,
) -> None:
    wrong = "f" * 32
    with pytest.raises(NotificationFailed) as caught:
        _sms(twilio_server, auth_token=wrong).send(VENDOR_PHONE, notification())
    assert caught.value.retryable is False
    assert "20003" in str(caught.value)
    _assert_clean(caught.value, (TOKEN, wrong, twilio_server.auth_token))


def test_sms_timeout_is_retryable(twilio_server: TwilioServer) -> None:
    twilio_server.fail_next(201, delay=5)  # answers normally, but too late
    started = time.monotonic()
    with pytest.raises(NotificationFailed) as caught:
        _sms(twilio_server, timeout=0.3).send(VENDOR_PHONE, notification())
    assert time.monotonic() - started < 3
    assert caught.value.retryable is True


def test_sms_connection_refused_is_retryable() -> None:
    notifier = TwilioSmsNotifier(
        "AC" + "0" * 32,
        "token-xyz",
        from_number=FROM_NUMBER,
        base_url=f"http://127.0.0.1:{closed_port()}",
        timeout=2,
    )
    with pytest.raises(NotificationFailed) as caught:
        notifier.send(VENDOR_PHONE, notification())
    assert caught.value.retryable is True
    _assert_clean(caught.value, (TOKEN, "token-xyz"))


def test_sms_requires_credentials_instead_of_reading_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "1" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "from-env")
    with pytest.raises(ValueError):
        TwilioSmsNotifier("", "", from_number=FROM_NUMBER)


# =========================================================================== console


def test_console_prints_one_line_without_the_token() -> None:
    stream = io.StringIO()
    ConsoleNotifier(stream).send("", notification(answer_url=ANSWER_URL))
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert TOKEN not in text
    assert "res_8f3a1c2b9d" in text
    assert f"Tue 1 Dec 10:00{D}10:30 (America/New_York)" in text
    assert "bookiji reservations confirm res_8f3a1c2b9d" in text
    assert "Salon Ana" in text and "alice" in text


def test_console_defaults_to_stderr_and_stays_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ConsoleNotifier().send("", notification(vendor_name="Evil\nVendor\x1b[2J"))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "\x1b" not in captured.err
    assert TOKEN not in captured.err


def test_console_answer_link_is_never_printed() -> None:
    stream = io.StringIO()
    ConsoleNotifier(stream).send("", notification(answer_url=f"{ANSWER_URL}?token={TOKEN}"))
    assert TOKEN not in stream.getvalue()
    assert ANSWER_URL not in stream.getvalue()


def test_answer_link_keeps_a_url_that_already_has_the_token() -> None:
    from bookiji.integrations.notify import answer_link

    url = f"{ANSWER_URL}?token={TOKEN}"
    assert answer_link(notification(answer_url=url)) == url
    link = answer_link(notification(answer_url=ANSWER_URL))
    assert link is not None
    assert parse_qs(urlsplit(link).query) == {"token": [TOKEN]}
