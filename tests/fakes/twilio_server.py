"""A local stand-in for Twilio's Programmable Messaging REST API, with fault injection.

The real `twilio` SDK talks to it over real HTTP on 127.0.0.1. It implements what sending
an SMS needs, in Twilio's documented wire formats:

* `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`: HTTP Basic auth with the account
  SID and auth token; form parameters `To`, `From`, `Body` (and `MessagingServiceSid`);
  answers 201 with a Message resource (`sid` "SM" + 32 hex, `status` "queued",
  `num_segments` computed for GSM-7 or UCS-2);
* `GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`: the stored message.

Errors use Twilio's JSON `{"code", "message", "more_info", "status"}`: 20003 (401,
authentication), 20404 (unknown resource), 21604/21603/21602 (missing To/From/Body),
21211 (invalid 'To' number: not E.164), 21606 ('From' not a number of this account),
21617 (body over 1600 characters).

Faults: `fail_next(status, code=, message=, count=, delay=)` answers the next `count`
requests with that status and Twilio error JSON, after `delay` seconds if set; a 2xx status
with a delay means "answer normally, but late" (for client timeouts). Delays end early when
the server closes. Sent messages are in `messages`, every request in `requests`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.loopback import FakeHandler, FakeHTTPServer, LoopbackFake

API_VERSION = "2010-04-01"
_MESSAGES = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")
_MESSAGE = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages/(?P<sid>[^/]+)\.json$")
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_DEFAULT_ERRORS = {  # status -> (code, message)
    400: (21211, "The 'To' number is not a valid phone number."),
    401: (20003, "Authenticate"),
    403: (20403, "Forbidden"),
    404: (20404, "The requested resource was not found"),
    408: (20408, "Request Timeout"),
    429: (20429, "Too Many Requests"),
    500: (20500, "An internal server error has occurred"),
    502: (20502, "Bad Gateway"),
    503: (20503, "Service Unavailable"),
}

# GSM 03.38: the basic set (1 septet) and the extension table (escape + 1 septet)
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = frozenset("^{}\\[~]|€\f")


def segments(body: str) -> tuple[int, str]:
    """(number of SMS segments, "GSM-7" or "UCS-2") as a carrier would send `body`."""
    if all(c in _GSM_BASIC or c in _GSM_EXTENDED for c in body):
        septets = sum(2 if c in _GSM_EXTENDED else 1 for c in body)
        return (1 if septets <= 160 else -(-septets // 153)), "GSM-7"
    units = len(body.encode("utf-16-le")) // 2
    return (1 if units <= 70 else -(-units // 67)), "UCS-2"


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]
    status: int = 0


@dataclass(frozen=True)
class SentMessage:
    sid: str
    account_sid: str
    to: str
    from_: str
    body: str
    num_segments: int
    encoding: str
    date_created: datetime


@dataclass
class _Fault:
    status: int
    code: int
    message: str
    remaining: int
    delay: float | None


class _TwilioError(Exception):
    def __init__(
        self, status: int, code: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def payload(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


class TwilioServer(LoopbackFake):
    """The fake. Use as a context manager, or `start()` / `close()`."""

    _thread_name = "fake-twilio"
    _content_type = "application/json; charset=utf-8"

    def __init__(
        self,
        *,
        account_sid: str | None = None,
        auth_token: str | None = None,
        numbers: Iterable[str] = ("+15005550006",),
    ) -> None:
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.auth_token = auth_token or secrets.token_hex(16)
        self.numbers: set[str] = set(numbers)  # this account's senders
        self.messages: list[SentMessage] = []
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []  # tracebacks of bugs in the fake itself
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._faults: list[_Fault] = []
        self._httpd: FakeHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle

    # ------------------------------------------------------------------ control

    def fail_next(
        self,
        status: int,
        *,
        code: int | None = None,
        message: str | None = None,
        count: int = 1,
        delay: float | None = None,
    ) -> None:
        """Answer the next `count` requests with `status` and Twilio's error JSON."""
        default_code, default_message = _DEFAULT_ERRORS.get(status, (20000 + status, "Error"))
        with self._lock:
            self._faults.append(
                _Fault(
                    status,
                    code if code is not None else default_code,
                    message if message is not None else default_message,
                    count,
                    delay,
                )
            )

    def sent_to(self, number: str) -> list[SentMessage]:
        with self._lock:
            return [m for m in self.messages if m.to == number]

    # ------------------------------------------------------------------ dispatch

    def _handle(self, handler: FakeHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        form: dict[str, str] = {}
        if "application/x-www-form-urlencoded" in handler.headers.get("Content-Type", ""):
            form = dict(parse_qsl(raw.decode(), keep_blank_values=True))
        request = RecordedRequest(
            method, parts.path, {k.lower(): v for k, v in handler.headers.items()}, form
        )
        with self._lock:
            self.requests.append(request)
            fault = self._take_fault()

        status: int
        body: dict[str, Any]
        headers: dict[str, str] = {}
        if fault is not None and fault.delay:
            self._stopping.wait(fault.delay)
        try:
            if fault is not None and not 200 <= fault.status < 300:
                raise _TwilioError(fault.status, fault.code, fault.message)
            status, body = self._route(method, parts.path, request)
        except _TwilioError as error:
            status, body, headers = error.status, error.payload(), error.headers
        request.status = status
        handler.reply(status, json.dumps(body).encode(), headers)

    def _take_fault(self) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0:
                fault.remaining -= 1
                return fault
        return None

    def _route(self, method: str, path: str, request: RecordedRequest) -> tuple[int, Any]:
        if (match := _MESSAGES.match(path)) and method == "POST":
            self._authenticate(request, match["account"])
            return 201, self._create(match["account"], request.form)
        if (match := _MESSAGE.match(path)) and method == "GET":
            self._authenticate(request, match["account"])
            with self._lock:
                found = [m for m in self.messages if m.sid == match["sid"]]
            if not found or found[0].account_sid != match["account"]:
                raise _not_found(path)
            return 200, _render(found[0])
        raise _not_found(path)

    def _authenticate(self, request: RecordedRequest, account: str) -> None:
        challenge = {"WWW-Authenticate": 'Basic realm="Twilio API"'}
        header = request.headers.get("authorization", "")
        user = password = None
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user = None
        if user != self.account_sid or password != self.auth_token or account != self.account_sid:
            raise _TwilioError(401, 20003, "Authenticate", challenge)

    def _create(self, account: str, form: Mapping[str, str]) -> dict[str, Any]:
        to = form.get("To", "")
        from_ = form.get("From", "")
        body = form.get("Body", "")
        if not to:
            raise _TwilioError(400, 21604, "A 'To' phone number is required.")
        if not _E164.match(to):
            raise _TwilioError(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not from_ and not form.get("MessagingServiceSid"):
            raise _TwilioError(400, 21603, "A 'From' phone number is required.")
        if from_ and from_ not in self.numbers:
            raise _TwilioError(
                400,
                21606,
                f"The From phone number {from_} is not a valid, SMS-capable inbound phone "
                "number or short code for your account.",
            )
        if not body and not form.get("MediaUrl"):
            raise _TwilioError(400, 21602, "Message body is required.")
        if len(body) > 1600:
            raise _TwilioError(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        count, encoding = segments(body)
        message = SentMessage(
            sid="SM" + secrets.token_hex(16),
            account_sid=account,
            to=to,
            from_=from_,
            body=body,
            num_segments=count,
            encoding=encoding,
            date_created=datetime.now(UTC).replace(microsecond=0),
        )
        with self._lock:
            self.messages.append(message)
        return _render(message)


def _render(message: SentMessage) -> dict[str, Any]:
    uri = f"/{API_VERSION}/Accounts/{message.account_sid}/Messages/{message.sid}"
    created = format_datetime(message.date_created)
    return {
        "account_sid": message.account_sid,
        "api_version": API_VERSION,
        "body": message.body,
        "date_created": created,
        "date_sent": None,
        "date_updated": created,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": message.from_,
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": str(message.num_segments),
        "price": None,
        "price_unit": "USD",
        "sid": message.sid,
        "status": "queued",
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "to": message.to,
        "uri": f"{uri}.json",
    }


def _not_found(path: str) -> _TwilioError:
    return _TwilioError(404, 20404, f"The requested resource {path} was not found")
