"""A stateful, Stripe-compatible test server, with fault injection.

The official `stripe` SDK talks to it over real HTTP on 127.0.0.1 (pass the server's
`base_url` as `base_addresses={"api": ...}`). It implements the part of Stripe's v1 API that
our payments code uses, in Stripe's documented wire formats (form-encoded requests with
`a[b][0]=c` nesting, JSON responses, Stripe's error object):

* PaymentIntents: create (with `confirm=true`), retrieve, update, confirm, capture
  (`amount_to_capture`), cancel, list (`limit`, `starting_after`, `ending_before`,
  `customer`, `created`), search (Stripe's query language: `metadata['k']:'v'`, `status`,
  `amount`, `currency`, `customer`, `created`, joined by AND or by OR, `-` negation);
* Refunds (create, retrieve, list), Charges (retrieve, list), PaymentMethods (retrieve),
  Events (retrieve, list).

Payments use Stripe's documented test PaymentMethods (`TEST_PAYMENT_METHODS`): `pm_card_visa`
authorizes; `pm_card_chargeDeclined*` decline with a 402 `card_error` (the PaymentIntent
exists in `requires_payment_method` with `last_payment_error`, as at Stripe);
`pm_card_authenticationRequired` goes to `requires_action` (`next_action.use_stripe_sdk`),
or declines with `authentication_required` when `off_session=true`. As at Stripe, a test
PaymentMethod token is turned into a new `pm_...` id on the PaymentIntent.

API version: the SDK pins `Stripe-Version: 2026-10-28.endive`. From 2026-09-30 (endive)
Stripe rejects the `payment_method_types` parameter (400
`payment_method_types_no_longer_supported`); use `allowed_payment_method_types=["card"]` or
dynamic payment methods (the default). Older `Stripe-Version`s still accept it.

Idempotency as Stripe documents it for v1: a POST's `Idempotency-Key` (scoped per API key and
`Stripe-Account`) saves the status and body of the first request once the endpoint began
executing (successes, card declines, state errors, ...); the same key with the same
parameters replays it with `Idempotent-Replayed: true`; with other parameters or another
endpoint it is a 400 `idempotency_error`; while the first request is still executing it is a
409 (`idempotency_key_in_use`). Parameter validation errors, 401s and injected faults in
front of the API are not saved.

Faults: `fail_next(method, path_fragment, status=..., after_apply=..., delay=..., drop=...)`;
with `after_apply=True` the operation is applied and its real response saved under the
idempotency key, but the client gets the fault (or a dropped connection), so a retry with the
same key replays the real result. Test helpers: `complete_authentication`,
`expire_authorization`. Ledger: `intents`, `charges`, `refunds`, `events`, `captures()`,
`requests`. Webhooks: every state change emits an event into `events`; with `webhook_url`
set, events are POSTed there signed with `Stripe-Signature: t=...,v1=...` (HMAC-SHA256 of
`"{t}.{payload}"` with `webhook_secret`), verifiable by `stripe.Webhook.construct_event`.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import hmac
import json
import queue
import re
import secrets
import string
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.fakes.loopback import FakeHandler, FakeHTTPServer, LoopbackFake

API_VERSION = "2026-10-28.endive"
_ALNUM = string.ascii_letters + string.digits
_TEST_KEY = re.compile(r"(sk|rk)_test_[A-Za-z0-9_]{8,}")
_VERSION = re.compile(r"(\d{4}-\d{2}-\d{2})(?:\.([a-z]+))?")
_MAX_AMOUNT = 99_999_999
# Stripe's minimum charge amounts (smallest currency unit) for the common currencies.
_MIN_AMOUNT = {
    "usd": 50, "eur": 50, "gbp": 30, "aud": 50, "cad": 50, "chf": 50, "nzd": 50, "sgd": 50,
    "jpy": 50, "dkk": 250, "nok": 300, "sek": 300, "pln": 200, "czk": 1500, "hkd": 400,
    "mxn": 1000, "brl": 50, "aed": 200,
}  # fmt: skip
_ZERO_DECIMAL = frozenset({"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf",
                           "ugx", "vnd", "vuv", "xaf", "xof", "xpf"})  # fmt: skip
_CANCELABLE = (
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
    "processing",
)
_CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
_SUPPORTED_PM_TYPES = ("card",)
_DEFAULT_FAULT_MESSAGES = {
    400: ("invalid_request_error", None, "Injected fault: bad request."),
    401: ("invalid_request_error", None, "Injected fault: invalid API key."),
    402: ("card_error", "card_declined", "Your card was declined."),
    403: ("invalid_request_error", None, "Injected fault: permission denied."),
    404: ("invalid_request_error", "resource_missing", "Injected fault: no such object."),
    409: (
        "invalid_request_error",
        "lock_timeout",
        "This object cannot be accessed right now because another API request or Stripe "
        "process is currently accessing it. If you see this error intermittently, retry the "
        "request.",
    ),
    429: (
        "invalid_request_error",
        "rate_limit",
        "Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
    ),
}


def _rand(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def new_id(prefix: str, length: int = 24) -> str:
    """An id in Stripe's style, e.g. `pi_3MtwBwLkdIwHu7ix28a3tqPa`."""
    return f"{prefix}_{_rand(length)}"


# ------------------------------------------------------------------------------ test cards


@dataclass(frozen=True)
class Decline:
    """How a test card fails: the error's `code`, `decline_code`, `message` and `param`."""

    code: str
    decline_code: str | None
    message: str
    param: str | None = None


@dataclass(frozen=True)
class TestCard:
    """The behaviour of one of Stripe's test PaymentMethods."""

    __test__ = False  # not a pytest test class

    brand: str
    last4: str
    funding: str = "credit"
    country: str = "US"
    decline: Decline | None = None  # declines at authorization (after authentication)
    authentication: bool = False  # requires 3D Secure on every payment


_GENERIC = Decline("card_declined", "generic_decline", "Your card was declined.")
_INSUFFICIENT = Decline("card_declined", "insufficient_funds", "Your card has insufficient funds.")
_EXPIRED = Decline("expired_card", "expired_card", "Your card has expired.", "exp_month")
_CVC = Decline("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect.", "cvc")
_PROCESSING = Decline(
    "processing_error",
    "processing_error",
    "An error occurred while processing your card. Try again in a little bit.",
)
_AUTH_REQUIRED = Decline(
    "authentication_required",
    "authentication_required",
    "Your card was declined. This transaction requires authentication.",
)
_VISA = TestCard("visa", "4242")

# Stripe's documented test PaymentMethods (https://docs.stripe.com/testing), both the
# `pm_card_visa_chargeDeclined...` and the shorter `pm_card_chargeDeclined...` spellings.
TEST_PAYMENT_METHODS: dict[str, TestCard] = {
    "pm_card_visa": _VISA,
    "pm_card_visa_debit": TestCard("visa", "5556", funding="debit"),
    "pm_card_mastercard": TestCard("mastercard", "4444"),
    "pm_card_mastercard_debit": TestCard("mastercard", "8210", funding="debit"),
    "pm_card_amex": TestCard("amex", "8431"),
    "pm_card_discover": TestCard("discover", "1117"),
    "pm_card_chargeDeclined": TestCard("visa", "0002", decline=_GENERIC),
    "pm_card_visa_chargeDeclined": TestCard("visa", "0002", decline=_GENERIC),
    "pm_card_chargeDeclinedInsufficientFunds": TestCard("visa", "9995", decline=_INSUFFICIENT),
    "pm_card_visa_chargeDeclinedInsufficientFunds": TestCard("visa", "9995", decline=_INSUFFICIENT),
    "pm_card_chargeDeclinedExpiredCard": TestCard("visa", "0069", decline=_EXPIRED),
    "pm_card_visa_chargeDeclinedExpiredCard": TestCard("visa", "0069", decline=_EXPIRED),
    "pm_card_chargeDeclinedIncorrectCvc": TestCard("visa", "0127", decline=_CVC),
    "pm_card_chargeDeclinedProcessingError": TestCard("visa", "0119", decline=_PROCESSING),
    "pm_card_visa_chargeDeclinedLostCard": TestCard(
        "visa", "9987", decline=Decline("card_declined", "lost_card", "Your card was declined.")
    ),
    "pm_card_visa_chargeDeclinedStolenCard": TestCard(
        "visa", "9979", decline=Decline("card_declined", "stolen_card", "Your card was declined.")
    ),
    "pm_card_chargeDeclinedFraudulent": TestCard(
        "visa", "0019", decline=Decline("card_declined", "fraudulent", "Your card was declined.")
    ),
    "pm_card_authenticationRequired": TestCard("visa", "3155", authentication=True),
    "pm_card_threeDSecure2Required": TestCard("visa", "3220", authentication=True),
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": TestCard(
        "visa", "3178", authentication=True, decline=_INSUFFICIENT
    ),
}


# ------------------------------------------------------------------------------ records


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    params: dict[str, Any]  # decoded (nested) form or query parameters
    headers: dict[str, str]  # lower-cased names
    idempotency_key: str | None
    request_id: str
    status: int = 0  # 0: the connection was dropped
    replayed: bool = False
    fault: str | None = None  # "before" (not applied), "after_apply", or None

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    @property
    def stripe_account(self) -> str | None:
        return self.headers.get("stripe-account")


@dataclass
class WebhookDelivery:
    event_id: str
    event_type: str
    url: str
    attempt: int
    status: int | None  # HTTP status, None when the endpoint could not be reached
    error: str | None
    payload: bytes
    signature: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class _Fault:
    method: str
    fragment: str
    status: int | None
    remaining: int
    body: bytes | None
    headers: dict[str, str]
    delay: float | None
    after_apply: bool
    drop: bool

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and self.fragment in path


@dataclass
class _Ctx:
    """Who caused a change: for events' `request` and for scoping objects to an account."""

    request_id: str | None
    idempotency_key: str | None
    account: str | None
    api_version: str


@dataclass
class _Intent:
    obj: dict[str, Any]
    seq: int
    account: str | None
    searchable_at: float
    card: TestCard | None = None
    authenticated: bool = False
    captures: int = 0


@dataclass
class _Stored:
    obj: dict[str, Any]
    seq: int
    account: str | None


@dataclass
class _PaymentMethod:
    obj: dict[str, Any]
    card: TestCard


@dataclass
class _IdemRecord:
    method: str
    path: str
    fingerprint: str
    request_id: str
    in_flight: bool = True
    status: int = 0
    body: bytes = b""


@dataclass
class _Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


class _ApiError(Exception):
    """A Stripe error response. `executed`: the endpoint began executing (idempotency saves it)."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        decline_code: str | None = None,
        param: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        executed: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error: dict[str, Any] = {"type": type_, "message": message}
        if code:
            self.error["code"] = code
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if decline_code:
            self.error["decline_code"] = decline_code
        if param:
            self.error["param"] = param
        self.error.update(extra or {})
        self.headers = dict(headers or {})
        self.executed = executed

    def payload(self, request_id: str) -> dict[str, Any]:
        error = dict(self.error)
        error["request_log_url"] = (
            f"https://dashboard.stripe.com/test/logs/{request_id}?t={int(time.time())}"
        )
        return {"error": error}


def _invalid(
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    status: int = 400,
    executed: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> _ApiError:
    return _ApiError(
        status,
        "invalid_request_error",
        message,
        code=code,
        param=param,
        executed=executed,
        extra=extra,
    )


# ------------------------------------------------------------------------------ the server


class StripeServer(LoopbackFake):
    """The test server. Use as a context manager, or `start()` / `close()`."""

    _thread_name = "fake-stripe"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        strict_api_keys: bool = False,
        webhook_secret: str | None = None,
        webhook_url: str | None = None,
        api_version: str = API_VERSION,
        search_lag: float = 0.0,
        webhook_timeout: float = 5.0,
        webhook_max_attempts: int = 3,
        webhook_retry_delay: float = 0.2,
    ) -> None:
        self.api_key = api_key or f"sk_test_bookiji{_rand(24)}"
        # False: any well-formed sk_test_/rk_test_ key works (like a fresh test account);
        # True: only `api_key` and keys given to add_api_key().
        self.strict_api_keys = strict_api_keys
        self.webhook_secret = webhook_secret or f"whsec_{_rand(32)}"
        self.webhook_url = webhook_url
        self.api_version = api_version  # of events (an account's default version)
        # Stripe's search index lags writes ("don't use search for read-after-write flows");
        # a new PaymentIntent becomes searchable `search_lag` seconds after creation.
        self.search_lag = search_lag
        self.webhook_timeout = webhook_timeout
        self.webhook_max_attempts = webhook_max_attempts
        self.webhook_retry_delay = webhook_retry_delay
        self.requests: list[RecordedRequest] = []
        self.webhook_deliveries: list[WebhookDelivery] = []
        self.errors: list[str] = []  # tracebacks of bugs in the server itself
        self._keys = {self.api_key}
        self._revoked: set[str] = set()
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._faults: list[_Fault] = []
        self._seq = 0
        self._intents: dict[str, _Intent] = {}
        self._charges: dict[str, _Stored] = {}
        self._refunds: dict[str, _Stored] = {}
        self._events: dict[str, _Stored] = {}
        self._payment_methods: dict[str, _PaymentMethod] = {}
        self._idempotency: dict[tuple[str, str | None, str], _IdemRecord] = {}
        self._webhook_queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._webhook_pending = 0
        self._webhook_idle = threading.Condition(self._lock)
        self._httpd: FakeHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -------------------------------------------------------------------------- lifecycle

    def _background_threads(self) -> list[threading.Thread]:
        return [threading.Thread(target=self._deliver_webhooks, name="fake-stripe-hooks",
                                 daemon=True)]  # fmt: skip

    # -------------------------------------------------------------------------- ledger

    @property
    def intents(self) -> dict[str, dict[str, Any]]:
        """Every PaymentIntent's current JSON, by id (a snapshot)."""
        with self._lock:
            return {i: copy.deepcopy(it.obj) for i, it in self._intents.items()}

    def intent(self, intent_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._intents[intent_id].obj)

    @property
    def charges(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {i: copy.deepcopy(c.obj) for i, c in self._charges.items()}

    def charge_of(self, intent_id: str) -> dict[str, Any] | None:
        """The PaymentIntent's latest charge (amount_captured, amount_refunded, ...)."""
        with self._lock:
            charge_id = self._intents[intent_id].obj["latest_charge"]
            return copy.deepcopy(self._charges[charge_id].obj) if charge_id else None

    @property
    def refunds(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {i: copy.deepcopy(r.obj) for i, r in self._refunds.items()}

    def refunds_of(self, intent_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(r.obj)
                for r in sorted(self._refunds.values(), key=lambda r: r.seq)
                if r.obj["payment_intent"] == intent_id
            ]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event emitted so far, oldest first."""
        with self._lock:
            return [copy.deepcopy(e.obj) for e in sorted(self._events.values(), key=_seq)]

    def events_of(
        self, event_type: str | None = None, object_id: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if (event_type is None or e["type"] == event_type)
            and (object_id is None or e["data"]["object"].get("id") == object_id)
        ]

    def captures(self, intent_id: str) -> int:
        """How many capture operations were applied to this PaymentIntent (manual or automatic)."""
        with self._lock:
            intent = self._intents.get(intent_id)
            return intent.captures if intent else 0

    def find_intents(self, **metadata: str) -> list[dict[str, Any]]:
        """PaymentIntents whose metadata contains all these pairs, newest first (no search lag)."""
        with self._lock:
            return [
                copy.deepcopy(it.obj)
                for it in sorted(self._intents.values(), key=_seq, reverse=True)
                if all(it.obj["metadata"].get(k) == v for k, v in metadata.items())
            ]

    def requests_to(self, fragment: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if fragment in r.path and (method is None or r.method == method.upper())
            ]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # -------------------------------------------------------------------------- control

    def add_api_key(self, key: str) -> None:
        with self._lock:
            self._keys.add(key)
            self._revoked.discard(key)

    def revoke_api_key(self, key: str) -> None:
        """Requests with this key get Stripe's 401 `api_key_expired`."""
        with self._lock:
            self._revoked.add(key)
            self._keys.discard(key)

    def fail_next(
        self,
        method: str,
        path_fragment: str,
        *,
        status: int | None = 500,
        count: int = 1,
        body: bytes | str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
        after_apply: bool = False,
        drop: bool = False,
    ) -> None:
        """Fault the next `count` requests with this method ("*": any) and path fragment.

        * `after_apply=False` (default): the request fails in front of the API, after `delay`
          seconds: nothing is applied, nothing is saved under its idempotency key.
        * `after_apply=True`: the operation IS applied and its real response saved under the
          idempotency key; then, after `delay`, the client gets `status` instead.
        * `drop=True`: instead of answering, the connection is closed (the client sees a
          network error), before or after applying as above.
        * `status=None`: no error; the request is answered normally but takes `delay` seconds
          while executing (its idempotency key is in flight meanwhile: a concurrent request
          with that key gets a 409). Use it to make a client time out.

        Fault bodies are Stripe error JSON unless `body` is given; 409, 429 and 5xx carry
        `Stripe-Should-Retry: true` unless `headers` say otherwise.
        """
        raw: bytes | None
        if body is None or isinstance(body, bytes):
            raw = body
        elif isinstance(body, str):
            raw = body.encode()
        else:
            raw = json.dumps(body).encode()
        with self._lock:
            self._faults.append(
                _Fault(
                    method.upper(),
                    path_fragment,
                    status,
                    count,
                    raw,
                    dict(headers or {}),
                    delay,
                    after_apply,
                    drop,
                )
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def add_payment_method(self, test_payment_method: str = "pm_card_visa") -> str:
        """A saved PaymentMethod (new `pm_...` id) behaving like the given test PaymentMethod."""
        with self._lock:
            return self._mint_payment_method(TEST_PAYMENT_METHODS[test_payment_method])

    def complete_authentication(self, intent_id: str, *, succeed: bool = True) -> dict[str, Any]:
        """The customer finishes (or fails) 3D Secure on a `requires_action` PaymentIntent.

        Success: the payment is authorized (`requires_capture` + a
        `payment_intent.amount_capturable_updated` event for manual capture, `succeeded` for
        automatic capture), or declined if the card declines after authentication. Failure:
        `requires_payment_method` with `payment_intent_authentication_failure` and a
        `payment_intent.payment_failed` event. Returns the PaymentIntent.
        """
        with self._lock:
            intent = self._intents[intent_id]
            if intent.obj["status"] != "requires_action":
                raise ValueError(f"{intent_id} is {intent.obj['status']}, not requires_action")
            ctx = _Ctx(None, None, intent.account, self.api_version)
            if succeed:
                intent.authenticated = True
                # A decline after authentication is recorded on the PaymentIntent.
                with contextlib.suppress(_ApiError):
                    self._authorize(intent, ctx)
            else:
                pm = self._payment_methods[intent.obj["payment_method"]]
                self._fail_intent(
                    intent,
                    ctx,
                    {
                        "code": "payment_intent_authentication_failure",
                        "doc_url": "https://stripe.com/docs/error-codes/"
                        "payment-intent-authentication-failure",
                        "message": "The provided PaymentMethod has failed authentication. You "
                        "can provide payment_method_data or a new PaymentMethod to attempt to "
                        "fulfill this PaymentIntent again.",
                        "payment_method": copy.deepcopy(pm.obj),
                        "type": "invalid_request_error",
                    },
                )
            return copy.deepcopy(intent.obj)

    def expire_authorization(self, intent_id: str) -> dict[str, Any]:
        """An uncaptured authorization lapses (Stripe cancels it after 7 days)."""
        with self._lock:
            intent = self._intents[intent_id]
            if intent.obj["status"] != "requires_capture":
                raise ValueError(f"{intent_id} is {intent.obj['status']}, not requires_capture")
            ctx = _Ctx(None, None, intent.account, self.api_version)
            charge = self._charges[intent.obj["latest_charge"]].obj
            charge.update(refunded=True, amount_refunded=charge["amount"])
            self._emit("charge.expired", charge, ctx)
            self._set_canceled(intent, "automatic", ctx)
            return copy.deepcopy(intent.obj)

    # -------------------------------------------------------------------------- webhooks

    def sign(
        self, payload: bytes | str, *, timestamp: int | None = None, secret: str | None = None
    ) -> str:
        """The `Stripe-Signature` header for this payload."""
        text = payload.decode() if isinstance(payload, bytes) else payload
        ts = int(time.time()) if timestamp is None else timestamp
        key = (secret or self.webhook_secret).encode()
        digest = hmac.new(key, f"{ts}.{text}".encode(), hashlib.sha256).hexdigest()
        return f"t={ts},v1={digest}"

    def signed_event(
        self,
        event: Mapping[str, Any] | bytes,
        *,
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> tuple[bytes, str]:
        """(payload bytes, Stripe-Signature header) as Stripe would POST this event."""
        payload = event if isinstance(event, bytes) else _event_json(event)
        return payload, self.sign(payload, timestamp=timestamp, secret=secret)

    def wait_for_webhooks(self, timeout: float = 5.0) -> bool:
        """Wait until every queued webhook delivery finished (True) or `timeout` passed."""
        deadline = time.monotonic() + timeout
        with self._webhook_idle:
            while self._webhook_pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._webhook_idle.wait(left)
        return True

    def _deliver_webhooks(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while not self._stopping.is_set():
            try:
                event = self._webhook_queue.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                self._deliver(opener, event)
            except Exception:
                self.errors.append(traceback.format_exc())
            finally:
                with self._webhook_idle:
                    self._webhook_pending -= 1
                    self._webhook_idle.notify_all()

    def _deliver(self, opener: urllib.request.OpenerDirector, event: dict[str, Any]) -> None:
        url = self.webhook_url
        if not url:
            return
        for attempt in range(1, self.webhook_max_attempts + 1):
            payload, signature = self.signed_event(event)
            request = urllib.request.Request(
                url,
                data=payload,
                method="POST",
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": signature,
                    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                    "Accept": "*/*; q=0.5, application/xml",
                    "Cache-Control": "no-cache",
                },
            )
            status: int | None = None
            error: str | None = None
            try:
                with opener.open(request, timeout=self.webhook_timeout) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (OSError, urllib.error.URLError) as exc:
                error = repr(exc)
            delivery = WebhookDelivery(
                event["id"], event["type"], url, attempt, status, error, payload, signature
            )
            with self._lock:
                self.webhook_deliveries.append(delivery)
            if delivery.ok or attempt == self.webhook_max_attempts:
                return
            if self._stopping.wait(self.webhook_retry_delay * 2 ** (attempt - 1)):
                return

    # -------------------------------------------------------------------------- dispatch

    def _handle(self, handler: FakeHandler, method: str) -> None:
        request_id = f"req_{_rand(14)}"
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw_body = handler.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in handler.headers.items()}
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if method == "POST" and raw_body:
            pairs += parse_qsl(raw_body.decode("utf-8", "replace"), keep_blank_values=True)
        key = headers.get("idempotency-key") if method == "POST" else None
        record = RecordedRequest(
            method=method,
            path=parts.path,
            query={k: v for k, v in parse_qsl(parts.query, keep_blank_values=True)},
            params={},
            headers=headers,
            idempotency_key=key,
            request_id=request_id,
        )
        with self._lock:
            self.requests.append(record)
            fault = self._take_fault(method, parts.path)
        try:
            response = self._process(record, pairs, fault)
        except Exception:
            self.errors.append(traceback.format_exc())
            error = _ApiError(500, "api_error", "An unknown error occurred.")
            response = _Response(500, _dump(error.payload(request_id)))
        record.status = 0 if response.drop else response.status
        if response.drop:
            handler.drop()
            return
        headers_out = {
            "Request-Id": request_id,
            "Stripe-Version": headers.get("stripe-version") or self.api_version,
            "Cache-Control": "no-cache, no-store",
            **response.headers,
        }
        if key:
            headers_out.setdefault("Idempotency-Key", key)
        handler.reply(response.status, response.body, headers_out)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(method, path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_response(self, fault: _Fault, request_id: str) -> _Response:
        status = fault.status or 500
        headers = dict(fault.headers)
        retryable = status in (409, 429) or status >= 500
        if retryable and not any(k.lower() == "stripe-should-retry" for k in headers):
            headers["Stripe-Should-Retry"] = "true"
        body = fault.body
        if body is None:
            type_, code, message = _DEFAULT_FAULT_MESSAGES.get(
                status,
                ("api_error", None, "An unknown error occurred (injected fault)."),
            )
            body = _dump(_ApiError(status, type_, message, code=code).payload(request_id))
        return _Response(status, body, headers)

    def _process(
        self, record: RecordedRequest, pairs: list[tuple[str, str]], fault: _Fault | None
    ) -> _Response:
        rid = record.request_id
        if fault is not None and not fault.after_apply and (fault.drop or fault.status):
            record.fault = "before"
            if fault.delay:
                self._stopping.wait(fault.delay)
            return _Response(0, b"", drop=True) if fault.drop else self._fault_response(fault, rid)
        try:
            record.params = _decode_params(pairs)
            api_key = self._authenticate(record.headers)
            version = record.headers.get("stripe-version") or self.api_version
            if not _VERSION.fullmatch(version):
                raise _invalid(f"Invalid Stripe API version: {version}")
            route, path_args = _route(record.method, record.path)
        except _ApiError as exc:
            return _Response(exc.status, _dump(exc.payload(rid)), exc.headers)
        ctx = _Ctx(rid, record.idempotency_key, record.stripe_account, version)
        slow = fault.delay if fault is not None and fault.status is None else None
        key = record.idempotency_key
        if record.method == "POST" and key:
            response = self._idempotent(record, pairs, api_key, ctx, route, path_args, slow)
        else:
            response = self._execute(record, ctx, route, path_args, slow)[0]
        if fault is not None and fault.after_apply and (fault.drop or fault.status):
            record.fault = "after_apply"
            if fault.delay:
                self._stopping.wait(fault.delay)
            return _Response(0, b"", drop=True) if fault.drop else self._fault_response(fault, rid)
        return response

    def _execute(
        self,
        record: RecordedRequest,
        ctx: _Ctx,
        route: Callable[..., tuple[int, dict[str, Any]]],
        path_args: dict[str, str],
        slow: float | None,
    ) -> tuple[_Response, bool]:
        """Run the endpoint; returns the response and whether the endpoint began executing."""
        if slow:
            self._stopping.wait(slow)
        try:
            with self._lock:
                status, payload = route(self, record.params, ctx, **path_args)
            return _Response(status, _dump(payload)), True
        except _ApiError as exc:
            return _Response(exc.status, _dump(exc.payload(record.request_id)), exc.headers), (
                exc.executed
            )

    def _idempotent(
        self,
        record: RecordedRequest,
        pairs: list[tuple[str, str]],
        api_key: str,
        ctx: _Ctx,
        route: Callable[..., tuple[int, dict[str, Any]]],
        path_args: dict[str, str],
        slow: float | None,
    ) -> _Response:
        key = record.idempotency_key or ""
        rid = record.request_id
        if len(key) > 255:
            error = _invalid("Idempotency-Key must be at most 255 characters long.")
            return _Response(400, _dump(error.payload(rid)))
        scope = (api_key, ctx.account, key)
        fingerprint = hashlib.sha256(json.dumps(sorted(pairs)).encode()).hexdigest()
        with self._lock:
            saved = self._idempotency.get(scope)
            if saved is None:
                saved = _IdemRecord(record.method, record.path, fingerprint, rid)
                self._idempotency[scope] = saved
                fresh = True
            else:
                fresh = False
        if not fresh:
            return self._replay(saved, record, key, fingerprint)
        try:
            response, executed = self._execute(record, ctx, route, path_args, slow)
        except BaseException:
            with self._lock:
                del self._idempotency[scope]
            raise
        with self._lock:
            if executed:
                saved.status, saved.body, saved.in_flight = response.status, response.body, False
            else:
                del self._idempotency[scope]  # validation failures are not saved
        response.headers["Original-Request"] = rid
        return response

    def _replay(
        self, saved: _IdemRecord, record: RecordedRequest, key: str, fingerprint: str
    ) -> _Response:
        rid = record.request_id
        if saved.in_flight:
            error = _invalid(
                "There is currently another in-progress request using this Idempotent Key "
                "(that probably means you submitted twice, and the other request is still "
                "going through): " + key + ". Please try again later.",
                code="idempotency_key_in_use",
                status=409,
            )
            return _Response(409, _dump(error.payload(rid)), {"Stripe-Should-Retry": "true"})
        if (saved.method, saved.path) != (record.method, record.path):
            error = _ApiError(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{saved.method} {saved.path}' vs '{record.method} "
                f"{record.path}'). Try using a key other than '{key}' if you meant to execute "
                "a different request.",
            )
            return _Response(400, _dump(error.payload(rid)))
        if saved.fingerprint != fingerprint:
            error = _ApiError(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
            )
            return _Response(400, _dump(error.payload(rid)))
        record.replayed = True
        return _Response(
            saved.status,
            saved.body,
            {"Idempotent-Replayed": "true", "Original-Request": saved.request_id},
        )

    def _authenticate(self, headers: Mapping[str, str]) -> str:
        auth = headers.get("authorization", "")
        key = ""
        if auth.startswith("Bearer "):
            key = auth[len("Bearer ") :].strip()
        elif auth.startswith("Basic "):
            try:
                key = base64.b64decode(auth[len("Basic ") :]).decode().partition(":")[0]
            except ValueError:
                key = ""
        challenge = {"WWW-Authenticate": 'Basic realm="Stripe"'}
        if not key:
            raise _ApiError(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                "or we can help at https://support.stripe.com/.",
                headers=challenge,
            )
        masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]
        with self._lock:
            if key in self._revoked:
                raise _ApiError(
                    401,
                    "invalid_request_error",
                    f"Expired API Key provided: {masked}",
                    code="api_key_expired",
                    headers=challenge,
                )
            known = key in self._keys or (
                not self.strict_api_keys and _TEST_KEY.fullmatch(key) is not None
            )
        if not known:
            raise _ApiError(
                401,
                "invalid_request_error",
                f"Invalid API Key provided: {masked}",
                headers=challenge,
            )
        return key

    # -------------------------------------------------------------------------- helpers

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _emit(self, event_type: str, obj: Mapping[str, Any], ctx: _Ctx) -> None:
        event_id = new_id("evt")
        event: dict[str, Any] = {
            "id": event_id,
            "object": "event",
            "api_version": self.api_version,
            "created": int(time.time()),
            "data": {"object": copy.deepcopy(dict(obj))},
            "livemode": False,
            "pending_webhooks": 1 if self.webhook_url else 0,
            "request": {"id": ctx.request_id, "idempotency_key": ctx.idempotency_key},
            "type": event_type,
        }
        self._events[event_id] = _Stored(event, self._next_seq(), ctx.account)
        if self.webhook_url:
            with self._webhook_idle:
                self._webhook_pending += 1
            self._webhook_queue.put(copy.deepcopy(event))

    def _mint_payment_method(self, card: TestCard, customer: str | None = None) -> str:
        pm_id = new_id("pm")
        fingerprint = hashlib.sha256(f"{card.brand}{card.last4}".encode()).hexdigest()[:16]
        obj = {
            "id": pm_id,
            "object": "payment_method",
            "allow_redisplay": "unspecified",
            "billing_details": {
                "address": {
                    "city": None,
                    "country": None,
                    "line1": None,
                    "line2": None,
                    "postal_code": None,
                    "state": None,
                },
                "email": None,
                "name": None,
                "phone": None,
                "tax_id": None,
            },
            "card": {
                "brand": card.brand,
                "checks": {
                    "address_line1_check": None,
                    "address_postal_code_check": None,
                    "cvc_check": "unchecked",
                },
                "country": card.country,
                "display_brand": card.brand,
                "exp_month": 12,
                "exp_year": 2034,
                "fingerprint": fingerprint,
                "funding": card.funding,
                "generated_from": None,
                "last4": card.last4,
                "networks": {"available": [card.brand], "preferred": None},
                "regulated_status": "unregulated",
                "three_d_secure_usage": {"supported": True},
                "wallet": None,
            },
            "created": int(time.time()),
            "customer": customer,
            "livemode": False,
            "metadata": {},
            "type": "card",
        }
        self._payment_methods[pm_id] = _PaymentMethod(obj, card)
        return pm_id

    def _resolve_payment_method(self, value: Any, param: str = "payment_method") -> str:
        if not isinstance(value, str) or not value:
            raise _invalid(f"Invalid string: {value!r}", param=param)
        if value in self._payment_methods:
            return value
        card = TEST_PAYMENT_METHODS.get(value)
        if card is None:
            raise _invalid(
                f"No such PaymentMethod: '{value}'", param=param, code="resource_missing"
            )
        return self._mint_payment_method(card)

    def _intent_for(self, intent_id: str, ctx: _Ctx) -> _Intent:
        intent = self._intents.get(intent_id)
        if intent is None or intent.account != ctx.account:
            raise _invalid(
                f"No such payment_intent: '{intent_id}'",
                param="intent",
                code="resource_missing",
                status=404,
            )
        return intent

    def _render_intent(self, intent: _Intent, expand: Iterable[str] = ()) -> dict[str, Any]:
        obj = copy.deepcopy(intent.obj)
        for path in expand:
            if path == "latest_charge" and obj["latest_charge"]:
                obj["latest_charge"] = copy.deepcopy(self._charges[obj["latest_charge"]].obj)
            elif path == "payment_method" and obj["payment_method"]:
                pm = self._payment_methods[obj["payment_method"]]
                obj["payment_method"] = copy.deepcopy(pm.obj)
        return obj

    def _state_error(self, message: str, intent: _Intent) -> _ApiError:
        return _invalid(
            message,
            code="payment_intent_unexpected_state",
            executed=True,
            extra={"payment_intent": copy.deepcopy(intent.obj)},
        )

    # -------------------------------------------------------------------------- PaymentIntents

    def _create_intent(self, p: dict[str, Any], ctx: _Ctx) -> tuple[int, dict[str, Any]]:
        _check_known(p, _PI_CREATE)
        _check_unsupported(p)
        self._reject_payment_method_types(p, ctx)
        amount = _int(p, "amount", required=True)
        currency = _currency(p)
        _check_amount(amount, currency)
        capture_method = _enum(
            p, "capture_method", ("automatic", "automatic_async", "manual"), "automatic_async"
        )
        confirm = _bool(p, "confirm", default=False)
        confirmation_method = _enum(p, "confirmation_method", ("automatic", "manual"), "automatic")
        confirm_options = _confirm_options(p)
        if confirm_options["off_session"] and not confirm:
            raise _invalid(
                "You can only pass off_session when confirm is true.", param="off_session"
            )
        customer = _customer(p)
        metadata = _metadata(p, {})
        transfer_data = _transfer_data(p, amount)
        on_behalf_of = _account_id(p, "on_behalf_of")
        fee = _int(p, "application_fee_amount", minimum=0)
        if fee is not None:
            if transfer_data is None and ctx.account is None and on_behalf_of is None:
                raise _invalid(
                    "Can only apply an application_fee_amount when the PaymentIntent is "
                    "attempting a direct payment (using an OAuth key or Stripe-Account header) "
                    "or destination payment (using `transfer_data[destination]`).",
                    param="application_fee_amount",
                )
            if fee > amount:
                raise _invalid(
                    "The application fee amount cannot be greater than the amount.",
                    param="application_fee_amount",
                )
        types, automatic, allowed, excluded = _payment_method_types(p)
        pm_id = None
        if p.get("payment_method") not in (None, ""):
            pm_id = self._resolve_payment_method(p["payment_method"])
        if confirm:
            if pm_id is None:
                raise _invalid(
                    "You cannot confirm this PaymentIntent because it's missing a payment "
                    "method. You can either update the PaymentIntent with a payment method and "
                    "then confirm it again, or confirm it again directly with a payment method.",
                    param="payment_method",
                    code="payment_intent_unexpected_state",
                )
            _check_type_allowed(types)
        # -- validation done: from here on the endpoint executes
        now = int(time.time())
        intent_id = new_id("pi")
        obj: dict[str, Any] = {
            "id": intent_id,
            "object": "payment_intent",
            "allowed_payment_method_types": allowed,
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": fee,
            "automatic_payment_methods": automatic,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": capture_method,
            "client_secret": f"{intent_id}_secret_{_rand(25)}",
            "confirmation_method": confirmation_method,
            "created": now,
            "currency": currency,
            "customer": customer,
            "customer_account": None,
            "description": _str(p, "description"),
            "excluded_payment_method_types": excluded,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata,
            "next_action": None,
            "on_behalf_of": on_behalf_of,
            "payment_method": pm_id,
            "payment_method_configuration_details": None,
            "payment_method_options": {
                "card": {
                    "installments": None,
                    "mandate_options": None,
                    "network": None,
                    "request_three_d_secure": "automatic",
                }
            },
            "payment_method_types": types,
            "processing": None,
            "receipt_email": _str(p, "receipt_email"),
            "review": None,
            "setup_future_usage": _str(p, "setup_future_usage"),
            "shipping": p.get("shipping"),
            "source": None,
            "statement_descriptor": _str(p, "statement_descriptor"),
            "statement_descriptor_suffix": _str(p, "statement_descriptor_suffix"),
            "status": "requires_confirmation" if pm_id else "requires_payment_method",
            "transfer_data": transfer_data,
            "transfer_group": _str(p, "transfer_group"),
        }
        intent = _Intent(
            obj,
            self._next_seq(),
            ctx.account,
            searchable_at=time.monotonic() + self.search_lag,
            card=self._payment_methods[pm_id].card if pm_id else None,
        )
        self._intents[intent_id] = intent
        self._emit("payment_intent.created", obj, ctx)
        if confirm:
            self._confirm(intent, ctx, confirm_options)
        return 200, self._render_intent(intent, _expand(p))

    def _retrieve_intent(self, p: dict[str, Any], ctx: _Ctx, id: str) -> tuple[int, dict[str, Any]]:
        _check_known(p, {"expand": None, "client_secret": None})
        intent = self._intent_for(id, ctx)
        return 200, self._render_intent(intent, _expand(p))

    def _update_intent(self, p: dict[str, Any], ctx: _Ctx, id: str) -> tuple[int, dict[str, Any]]:
        _check_known(p, _PI_UPDATE)
        _check_unsupported(p)
        self._reject_payment_method_types(p, ctx)
        intent = self._intent_for(id, ctx)
        obj = intent.obj
        changes: dict[str, Any] = {}
        amount_changes = {"amount", "currency", "payment_method", "capture_method"} & set(p)
        if amount_changes and obj["status"] not in _CONFIRMABLE:
            raise self._state_error(
                f"You cannot update this PaymentIntent's {sorted(amount_changes)[0]} because it "
                f"has a status of {obj['status']}.",
                intent,
            )
        if "amount" in p:
            changes["amount"] = _int(p, "amount", required=True)
        if "currency" in p:
            changes["currency"] = _currency(p)
        _check_amount(
            changes.get("amount", obj["amount"]), changes.get("currency", obj["currency"])
        )
        if "capture_method" in p:
            changes["capture_method"] = _enum(
                p, "capture_method", ("automatic", "automatic_async", "manual"), "automatic"
            )
        if "application_fee_amount" in p:
            changes["application_fee_amount"] = _int(p, "application_fee_amount", minimum=0)
        for name in _PI_UPDATE_STRINGS:
            if name in p:
                changes[name] = _str(p, name)
        if "customer" in p:
            changes["customer"] = _customer(p)
        if "transfer_data" in p:
            changes["transfer_data"] = _transfer_data(p, changes.get("amount", obj["amount"]))
        metadata = _metadata(p, obj["metadata"]) if "metadata" in p else None
        pm_id = None
        if p.get("payment_method") not in (None, ""):
            pm_id = self._resolve_payment_method(p["payment_method"])
        # -- executes
        obj.update(changes)
        if metadata is not None:
            obj["metadata"] = metadata
        if pm_id is not None:
            obj["payment_method"] = pm_id
            intent.card = self._payment_methods[pm_id].card
            intent.authenticated = False
            obj["status"] = "requires_confirmation"
            obj["next_action"] = None
        return 200, self._render_intent(intent, _expand(p))

    def _confirm_intent(self, p: dict[str, Any], ctx: _Ctx, id: str) -> tuple[int, dict[str, Any]]:
        _check_known(p, _PI_CONFIRM)
        _check_unsupported(p)
        self._reject_payment_method_types(p, ctx)
        intent = self._intent_for(id, ctx)
        obj = intent.obj
        options = _confirm_options(p)
        capture_method = None
        if "capture_method" in p:
            capture_method = _enum(
                p, "capture_method", ("automatic", "automatic_async", "manual"), "automatic"
            )
        pm_id = None
        if p.get("payment_method") not in (None, ""):
            pm_id = self._resolve_payment_method(p["payment_method"])
        if obj["status"] not in _CONFIRMABLE:
            raise self._state_error(
                "You cannot confirm this PaymentIntent because it has a status of "
                f"{obj['status']}. Only a PaymentIntent with one of the following statuses may "
                f"be confirmed: {', '.join(_CONFIRMABLE)}.",
                intent,
            )
        if pm_id is None and obj["payment_method"] is None:
            raise _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method. "
                "You can either update the PaymentIntent with a payment method and then confirm "
                "it again, or confirm it again directly with a payment method.",
                param="payment_method",
                code="payment_intent_unexpected_state",
            )
        _check_type_allowed(obj["payment_method_types"])
        # -- executes
        if capture_method is not None:
            obj["capture_method"] = capture_method
        if pm_id is not None and pm_id != obj["payment_method"]:
            obj["payment_method"] = pm_id
            intent.card = self._payment_methods[pm_id].card
            intent.authenticated = False
        for name in ("receipt_email", "setup_future_usage"):
            if name in p:
                obj[name] = _str(p, name)
        self._confirm(intent, ctx, options)
        return 200, self._render_intent(intent, _expand(p))

    def _confirm(self, intent: _Intent, ctx: _Ctx, options: dict[str, Any]) -> None:
        obj = intent.obj
        card = intent.card
        assert card is not None
        obj["last_payment_error"] = None
        if card.authentication and not intent.authenticated:
            if options["off_session"] or options["error_on_requires_action"]:
                self._decline(intent, ctx, _AUTH_REQUIRED)
            return_url = options["return_url"]
            if return_url and not options["use_stripe_sdk"]:
                next_action: dict[str, Any] = {
                    "type": "redirect_to_url",
                    "redirect_to_url": {
                        "return_url": return_url,
                        "url": f"https://hooks.stripe.com/3d_secure_2/hosted?intent={obj['id']}",
                    },
                }
            else:
                next_action = {
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {
                        "type": "three_d_secure_redirect",
                        "stripe_js": f"https://hooks.stripe.com/redirect/authenticate/{_rand(24)}",
                        "source": new_id("src"),
                    },
                }
            obj.update(status="requires_action", next_action=next_action)
            self._emit("payment_intent.requires_action", obj, ctx)
            return
        self._authorize(intent, ctx)

    def _new_charge(self, intent: _Intent) -> dict[str, Any]:
        obj = intent.obj
        card = intent.card
        pm = self._payment_methods[obj["payment_method"]]
        assert card is not None
        destination = (obj["transfer_data"] or {}).get("destination")
        charge = {
            "id": new_id("ch"),
            "object": "charge",
            "amount": obj["amount"],
            "amount_captured": 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": obj["application_fee_amount"],
            "balance_transaction": None,
            "billing_details": copy.deepcopy(pm.obj["billing_details"]),
            "calculated_statement_descriptor": "BOOKIJI",
            "captured": False,
            "created": int(time.time()),
            "currency": obj["currency"],
            "customer": obj["customer"],
            "description": obj["description"],
            "destination": destination,
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": None,
            "failure_message": None,
            "fraud_details": {},
            "livemode": False,
            "metadata": dict(obj["metadata"]),
            "on_behalf_of": obj["on_behalf_of"],
            "outcome": None,
            "paid": False,
            "payment_intent": obj["id"],
            "payment_method": obj["payment_method"],
            "payment_method_details": {
                "card": {
                    "amount_authorized": None,
                    "brand": card.brand,
                    "capture_before": int(time.time()) + 7 * 86400,
                    "checks": copy.deepcopy(pm.obj["card"]["checks"]),
                    "country": card.country,
                    "exp_month": 12,
                    "exp_year": 2034,
                    "fingerprint": pm.obj["card"]["fingerprint"],
                    "funding": card.funding,
                    "last4": card.last4,
                    "network": card.brand,
                    "three_d_secure": {"result": "authenticated", "version": "2.2.0"}
                    if intent.authenticated
                    else None,
                },
                "type": "card",
            },
            "receipt_email": obj["receipt_email"],
            "receipt_url": None,
            "refunded": False,
            "review": None,
            "shipping": obj["shipping"],
            "source_transfer": None,
            "statement_descriptor": obj["statement_descriptor"],
            "statement_descriptor_suffix": obj["statement_descriptor_suffix"],
            "status": "pending",
            "transfer": None,
            "transfer_data": copy.deepcopy(obj["transfer_data"]),
            "transfer_group": obj["transfer_group"],
        }
        self._charges[charge["id"]] = _Stored(charge, self._next_seq(), intent.account)
        obj["latest_charge"] = charge["id"]
        return charge

    def _authorize(self, intent: _Intent, ctx: _Ctx) -> None:
        obj = intent.obj
        card = intent.card
        assert card is not None
        if card.decline is not None:
            self._decline(intent, ctx, card.decline)
        charge = self._new_charge(intent)
        charge.update(
            status="succeeded",
            paid=True,
            outcome={
                "advice_code": None,
                "network_advice_code": None,
                "network_decline_code": None,
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "risk_score": 20,
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
        )
        charge["payment_method_details"]["card"]["amount_authorized"] = obj["amount"]
        obj.update(next_action=None, last_payment_error=None)
        if obj["capture_method"] == "manual":
            obj.update(status="requires_capture", amount_capturable=obj["amount"])
            self._emit("charge.succeeded", charge, ctx)
            self._emit("payment_intent.amount_capturable_updated", obj, ctx)
            return
        self._capture(intent, obj["amount"], ctx, charge, emit_captured=False)

    def _decline(
        self, intent: _Intent, ctx: _Ctx, decline: Decline, charge: dict[str, Any] | None = None
    ) -> None:
        charge = charge or self._new_charge(intent)
        obj = intent.obj
        pm = self._payment_methods[obj["payment_method"]]
        charge.update(
            status="failed",
            paid=False,
            failure_code=decline.code,
            failure_message=decline.message,
            outcome={
                "advice_code": "try_again_later" if decline.code == "processing_error" else None,
                "network_advice_code": None,
                "network_decline_code": None,
                "network_status": "declined_by_network",
                "reason": decline.decline_code,
                "risk_level": "normal",
                "risk_score": 20,
                "seller_message": "The bank did not return any further details with this decline.",
                "type": "issuer_declined",
            },
        )
        error: dict[str, Any] = {
            "charge": charge["id"],
            "code": decline.code,
            "decline_code": decline.decline_code,
            "doc_url": f"https://stripe.com/docs/error-codes/{decline.code.replace('_', '-')}",
            "message": decline.message,
            "payment_method": copy.deepcopy(pm.obj),
            "type": "card_error",
        }
        if decline.param:
            error["param"] = decline.param
        self._emit("charge.failed", charge, ctx)
        self._fail_intent(intent, ctx, error)
        raise _ApiError(
            402,
            "card_error",
            decline.message,
            code=decline.code,
            decline_code=decline.decline_code,
            param=decline.param,
            extra={
                "charge": charge["id"],
                "payment_intent": copy.deepcopy(obj),
                "payment_method": copy.deepcopy(pm.obj),
            },
            executed=True,
        )

    def _fail_intent(self, intent: _Intent, ctx: _Ctx, error: dict[str, Any]) -> None:
        # As at Stripe, a failed attempt detaches the PaymentMethod from the PaymentIntent.
        intent.obj.update(
            status="requires_payment_method",
            last_payment_error=error,
            next_action=None,
            payment_method=None,
            amount_capturable=0,
        )
        intent.card = None
        intent.authenticated = False
        self._emit("payment_intent.payment_failed", intent.obj, ctx)

    def _capture(
        self,
        intent: _Intent,
        amount: int,
        ctx: _Ctx,
        charge: dict[str, Any],
        *,
        emit_captured: bool = True,
    ) -> None:
        obj = intent.obj
        intent.captures += 1
        charge.update(
            captured=True,
            amount_captured=amount,
            balance_transaction=new_id("txn"),
        )
        if obj["transfer_data"]:
            charge["transfer"] = new_id("tr")
        if obj["application_fee_amount"] is not None:
            charge["application_fee"] = new_id("fee")
        obj.update(status="succeeded", amount_capturable=0, amount_received=amount)
        self._emit("charge.captured" if emit_captured else "charge.succeeded", charge, ctx)
        self._emit("payment_intent.succeeded", obj, ctx)

    def _capture_intent(self, p: dict[str, Any], ctx: _Ctx, id: str) -> tuple[int, dict[str, Any]]:
        _check_known(p, _PI_CAPTURE)
        intent = self._intent_for(id, ctx)
        obj = intent.obj
        amount_to_capture = _int(p, "amount_to_capture", minimum=1)
        fee = _int(p, "application_fee_amount", minimum=0)
        if obj["status"] != "requires_capture":
            raise self._state_error(
                "This PaymentIntent could not be captured because it has a status of "
                f"{obj['status']}. Only a PaymentIntent with one of the following statuses may "
                "be captured: requires_capture.",
                intent,
            )
        amount = obj["amount_capturable"] if amount_to_capture is None else amount_to_capture
        if amount > obj["amount_capturable"]:
            raise _invalid(
                f"The amount_to_capture ({amount}) must be less than or equal to the "
                f"PaymentIntent's amount_capturable ({obj['amount_capturable']}).",
                param="amount_to_capture",
                code="amount_too_large",
                executed=True,
            )
        if fee is not None and fee > amount:
            raise _invalid(
                "The application fee amount cannot be greater than the captured amount.",
                param="application_fee_amount",
                executed=True,
            )
        metadata = _metadata(p, obj["metadata"]) if "metadata" in p else None
        # -- executes
        if fee is not None:
            obj["application_fee_amount"] = fee
        if metadata is not None:
            obj["metadata"] = metadata
        charge = self._charges[obj["latest_charge"]].obj
        self._capture(intent, amount, ctx, charge)
        return 200, self._render_intent(intent, _expand(p))

    def _cancel_intent(self, p: dict[str, Any], ctx: _Ctx, id: str) -> tuple[int, dict[str, Any]]:
        _check_known(p, {"cancellation_reason": None, "expand": None})
        reason = _enum(
            p,
            "cancellation_reason",
            ("duplicate", "fraudulent", "requested_by_customer", "abandoned"),
            None,
        )
        intent = self._intent_for(id, ctx)
        if intent.obj["status"] not in _CANCELABLE:
            raise self._state_error(
                "You cannot cancel this PaymentIntent because it has a status of "
                f"{intent.obj['status']}. Only a PaymentIntent with one of the following "
                f"statuses may be canceled: {', '.join(_CANCELABLE)}.",
                intent,
            )
        if intent.obj["status"] == "requires_capture":
            # The authorization is released: the uncaptured charge shows as refunded.
            charge = self._charges[intent.obj["latest_charge"]].obj
            charge.update(refunded=True, amount_refunded=charge["amount"])
        self._set_canceled(intent, reason, ctx)
        return 200, self._render_intent(intent, _expand(p))

    def _set_canceled(self, intent: _Intent, reason: str | None, ctx: _Ctx) -> None:
        intent.obj.update(
            status="canceled",
            canceled_at=int(time.time()),
            cancellation_reason=reason,
            amount_capturable=0,
            next_action=None,
        )
        self._emit("payment_intent.canceled", intent.obj, ctx)

    def _list_intents(self, p: dict[str, Any], ctx: _Ctx) -> tuple[int, dict[str, Any]]:
        _check_known(p, _LIST | {"customer": None, "customer_account": None})
        customer = _str(p, "customer")
        created = _range(p, "created")
        items = [
            it
            for it in sorted(self._intents.values(), key=_seq, reverse=True)
            if it.account == ctx.account
            and (customer is None or it.obj["customer"] == customer)
            and created(it.obj["created"])
        ]
        expand = [e[len("data.") :] for e in _expand(p) if e.startswith("data.")]
        page = _paginate([it.obj for it in items], p, "/v1/payment_intents", "payment_intent")
        by_id = {it.obj["id"]: it for it in items}
        page["data"] = [self._render_intent(by_id[o["id"]], expand) for o in page["data"]]
        return 200, page

    def _search_intents(self, p: dict[str, Any], ctx: _Ctx) -> tuple[int, dict[str, Any]]:
        _check_known(p, {"query": None, "limit": None, "page": None, "expand": None})
        query = _str(p, "query")
        if not query:
            raise _invalid(
                "Missing required param: query.", param="query", code="parameter_missing"
            )
        matcher = _parse_query(query)
        limit = _limit(p)
        now = time.monotonic()
        hits = [
            it
            for it in sorted(self._intents.values(), key=_seq, reverse=True)
            if it.account == ctx.account and it.searchable_at <= now and matcher(it.obj)
        ]
        fingerprint = hashlib.sha256(query.encode()).hexdigest()[:12]
        offset = 0
        if p.get("page"):
            try:
                token = json.loads(base64.urlsafe_b64decode(str(p["page"]).encode()))
                offset, token_query = int(token["o"]), token["q"]
            except (ValueError, KeyError, TypeError):
                raise _invalid("Invalid page token.", param="page") from None
            if token_query != fingerprint:
                raise _invalid("The page token does not match this query.", param="page")
        chunk = hits[offset : offset + limit]
        has_more = offset + limit < len(hits)
        next_page = None
        if has_more:
            raw = json.dumps({"o": offset + limit, "q": fingerprint}).encode()
            next_page = base64.urlsafe_b64encode(raw).decode()
        expand = [e[len("data.") :] for e in _expand(p) if e.startswith("data.")]
        result: dict[str, Any] = {
            "object": "search_result",
            "data": [self._render_intent(it, expand) for it in chunk],
            "has_more": has_more,
            "next_page": next_page,
            "url": "/v1/payment_intents/search",
        }
        if "total_count" in _expand(p):
            result["total_count"] = len(hits)
        return 200, result

    def _reject_payment_method_types(self, p: Mapping[str, Any], ctx: _Ctx) -> None:
        if "payment_method_types" not in p:
            return
        match = _VERSION.fullmatch(ctx.api_version)
        date, suffix = (match.group(1), match.group(2)) if match else ("", None)
        if date >= "2026-09-30" or (suffix == "preview" and date >= "2026-08-26"):
            raise _invalid(
                "The `payment_method_types` parameter is no longer supported on this API "
                f"version ({ctx.api_version}). Use dynamic payment methods, "
                "`allowed_payment_method_types` or `excluded_payment_method_types` instead.",
                param="payment_method_types",
                code="payment_method_types_no_longer_supported",
            )

    # -------------------------------------------------------------------------- refunds etc.

    def _create_refund(self, p: dict[str, Any], ctx: _Ctx) -> tuple[int, dict[str, Any]]:
        _check_known(p, _REFUND_CREATE)
        amount = _int(p, "amount", minimum=1)
        reason = _enum(p, "reason", ("duplicate", "fraudulent", "requested_by_customer"), None)
        reverse_transfer = _bool(p, "reverse_transfer", default=False)
        _bool(p, "refund_application_fee", default=False)
        metadata = _metadata(p, {})
        if p.get("payment_intent"):
            intent_id = str(p["payment_intent"])
            intent = self._intents.get(intent_id)
            if intent is None or intent.account != ctx.account:
                raise _invalid(
                    f"No such payment_intent: '{intent_id}'",
                    param="payment_intent",
                    code="resource_missing",
                )
            charge_id = intent.obj["latest_charge"]
        elif p.get("charge"):
            charge_id = str(p["charge"])
            stored = self._charges.get(charge_id)
            if stored is None or stored.account != ctx.account:
                raise _invalid(
                    f"No such charge: '{charge_id}'", param="charge", code="resource_missing"
                )
            intent = self._intents[stored.obj["payment_intent"]]
        else:
            raise _invalid(
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                code="parameter_missing",
            )
        charge = self._charges[charge_id].obj if charge_id else None
        if charge is None or not charge["captured"] or intent.obj["status"] != "succeeded":
            raise _invalid(
                f"This PaymentIntent ({intent.obj['id']}) does not have a successful charge to "
                "refund.",
                code="charge_not_refundable",
                executed=True,
            )
        remaining = charge["amount_captured"] - charge["amount_refunded"]
        if remaining <= 0:
            raise _invalid(
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
                executed=True,
            )
        refund_amount = remaining if amount is None else amount
        if refund_amount > remaining:
            raise _invalid(
                f"Refund amount ({_money(refund_amount, charge['currency'])}) is greater than "
                f"unrefunded amount on charge ({_money(remaining, charge['currency'])})",
                param="amount",
                code="amount_too_large",
                executed=True,
            )
        # -- executes
        refund = {
            "id": new_id("re"),
            "object": "refund",
            "amount": refund_amount,
            "balance_transaction": new_id("txn"),
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "destination_details": {
                "card": {
                    "reference_status": "pending",
                    "reference_type": "acquirer_reference_number",
                    "type": "refund",
                },
                "type": "card",
            },
            "metadata": metadata,
            "payment_intent": intent.obj["id"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": new_id("trr") if reverse_transfer and charge["transfer"] else None,
        }
        self._refunds[refund["id"]] = _Stored(refund, self._next_seq(), ctx.account)
        charge["amount_refunded"] += refund_amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
        self._emit("refund.created", refund, ctx)
        self._emit("charge.refunded", charge, ctx)
        return 200, self._render_refund(refund, _expand(p))

    def _render_refund(self, refund: dict[str, Any], expand: Iterable[str]) -> dict[str, Any]:
        obj = copy.deepcopy(refund)
        for path in expand:
            if path == "charge":
                obj["charge"] = copy.deepcopy(self._charges[refund["charge"]].obj)
            elif path == "payment_intent":
                obj["payment_intent"] = copy.deepcopy(self._intents[refund["payment_intent"]].obj)
        return obj

    def _retrieve_refund(self, p: dict[str, Any], ctx: _Ctx, id: str) -> tuple[int, dict[str, Any]]:
        _check_known(p, {"expand": None})
        stored = self._refunds.get(id)
        if stored is None or stored.account != ctx.account:
            raise _invalid(
                f"No such refund: '{id}'", param="id", code="resource_missing", status=404
            )
        return 200, self._render_refund(stored.obj, _expand(p))

    def _list_refunds(self, p: dict[str, Any], ctx: _Ctx) -> tuple[int, dict[str, Any]]:
        _check_known(p, _LIST | {"charge": None, "payment_intent": None})
        charge, intent = _str(p, "charge"), _str(p, "payment_intent")
        created = _range(p, "created")
        items = [
            r.obj
            for r in sorted(self._refunds.values(), key=_seq, reverse=True)
            if r.account == ctx.account
            and (charge is None or r.obj["charge"] == charge)
            and (intent is None or r.obj["payment_intent"] == intent)
            and created(r.obj["created"])
        ]
        return 200, _paginate(copy.deepcopy(items), p, "/v1/refunds", "refund")

    def _retrieve_charge(self, p: dict[str, Any], ctx: _Ctx, id: str) -> tuple[int, dict[str, Any]]:
        _check_known(p, {"expand": None})
        stored = self._charges.get(id)
        if stored is None or stored.account != ctx.account:
            raise _invalid(
                f"No such charge: '{id}'", param="id", code="resource_missing", status=404
            )
        return 200, copy.deepcopy(stored.obj)

    def _list_charges(self, p: dict[str, Any], ctx: _Ctx) -> tuple[int, dict[str, Any]]:
        _check_known(p, _LIST | {"customer": None, "payment_intent": None, "transfer_group": None})
        customer, intent = _str(p, "customer"), _str(p, "payment_intent")
        created = _range(p, "created")
        items = [
            c.obj
            for c in sorted(self._charges.values(), key=_seq, reverse=True)
            if c.account == ctx.account
            and (customer is None or c.obj["customer"] == customer)
            and (intent is None or c.obj["payment_intent"] == intent)
            and created(c.obj["created"])
        ]
        return 200, _paginate(copy.deepcopy(items), p, "/v1/charges", "charge")

    def _retrieve_payment_method(
        self, p: dict[str, Any], ctx: _Ctx, id: str
    ) -> tuple[int, dict[str, Any]]:
        _check_known(p, {"expand": None})
        pm = self._payment_methods.get(id)
        if pm is None and id in TEST_PAYMENT_METHODS:
            pm = self._payment_methods[self._mint_payment_method(TEST_PAYMENT_METHODS[id])]
        if pm is None:
            raise _invalid(
                f"No such PaymentMethod: '{id}'",
                param="payment_method",
                code="resource_missing",
                status=404,
            )
        return 200, copy.deepcopy(pm.obj)

    def _retrieve_event(self, p: dict[str, Any], ctx: _Ctx, id: str) -> tuple[int, dict[str, Any]]:
        _check_known(p, {"expand": None})
        stored = self._events.get(id)
        if stored is None or stored.account != ctx.account:
            raise _invalid(
                f"No such event: '{id}'", param="id", code="resource_missing", status=404
            )
        return 200, copy.deepcopy(stored.obj)

    def _list_events(self, p: dict[str, Any], ctx: _Ctx) -> tuple[int, dict[str, Any]]:
        _check_known(p, _LIST | {"type": None, "types": None, "delivery_success": None})
        wanted = _str(p, "type")
        types = p.get("types")
        if types is not None and not isinstance(types, list):
            raise _invalid("Invalid array", param="types")
        created = _range(p, "created")

        def selected(event: dict[str, Any]) -> bool:
            kind = event["type"]
            if wanted is not None:
                if wanted.endswith(".*"):
                    if not kind.startswith(wanted[:-1]):
                        return False
                elif kind != wanted:
                    return False
            return (types is None or kind in types) and created(event["created"])

        items = [
            e.obj
            for e in sorted(self._events.values(), key=_seq, reverse=True)
            if e.account == ctx.account and selected(e.obj)
        ]
        return 200, _paginate(copy.deepcopy(items), p, "/v1/events", "event")


# ------------------------------------------------------------------------------ routing

_ROUTES: list[tuple[str, re.Pattern[str], Callable[..., tuple[int, dict[str, Any]]]]] = [
    ("POST", re.compile(r"/v1/payment_intents"), StripeServer._create_intent),
    ("GET", re.compile(r"/v1/payment_intents"), StripeServer._list_intents),
    ("GET", re.compile(r"/v1/payment_intents/search"), StripeServer._search_intents),
    ("GET", re.compile(r"/v1/payment_intents/(?P<id>[^/]+)"), StripeServer._retrieve_intent),
    ("POST", re.compile(r"/v1/payment_intents/(?P<id>[^/]+)"), StripeServer._update_intent),
    (
        "POST",
        re.compile(r"/v1/payment_intents/(?P<id>[^/]+)/confirm"),
        StripeServer._confirm_intent,
    ),
    (
        "POST",
        re.compile(r"/v1/payment_intents/(?P<id>[^/]+)/capture"),
        StripeServer._capture_intent,
    ),
    ("POST", re.compile(r"/v1/payment_intents/(?P<id>[^/]+)/cancel"), StripeServer._cancel_intent),
    ("POST", re.compile(r"/v1/refunds"), StripeServer._create_refund),
    ("GET", re.compile(r"/v1/refunds"), StripeServer._list_refunds),
    ("GET", re.compile(r"/v1/refunds/(?P<id>[^/]+)"), StripeServer._retrieve_refund),
    ("GET", re.compile(r"/v1/charges"), StripeServer._list_charges),
    ("GET", re.compile(r"/v1/charges/(?P<id>[^/]+)"), StripeServer._retrieve_charge),
    (
        "GET",
        re.compile(r"/v1/payment_methods/(?P<id>[^/]+)"),
        StripeServer._retrieve_payment_method,
    ),
    ("GET", re.compile(r"/v1/events"), StripeServer._list_events),
    ("GET", re.compile(r"/v1/events/(?P<id>[^/]+)"), StripeServer._retrieve_event),
]


def _route(
    method: str, path: str
) -> tuple[Callable[..., tuple[int, dict[str, Any]]], dict[str, str]]:
    for route_method, pattern, handler in _ROUTES:
        match = pattern.fullmatch(path)
        if match and route_method == method:
            return handler, {k: unquote(v) for k, v in match.groupdict().items()}
    raise _invalid(
        f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or "
        "we can help at https://support.stripe.com/.",
        status=404,
    )


# ------------------------------------------------------------------------------ parameters

_CONFIRM_FIELDS: dict[str, Any] = {
    "allowed_payment_method_types": None,
    "amount_details": None,
    "capture_method": None,
    "confirmation_token": None,
    "error_on_requires_action": None,
    "excluded_payment_method_types": None,
    "expand": None,
    "hooks": None,
    "mandate": None,
    "mandate_data": None,
    "off_session": None,
    "payment_details": None,
    "payment_method": None,
    "payment_method_data": None,
    "payment_method_options": None,
    "payment_method_types": None,  # rejected from endive on, see _reject_payment_method_types
    "radar_options": None,
    "receipt_email": None,
    "return_url": None,
    "setup_future_usage": None,
    "shipping": None,
    "use_stripe_sdk": None,
}
_PI_CONFIRM = {**_CONFIRM_FIELDS, "amount_to_confirm": None}
_PI_CREATE: dict[str, Any] = {
    **_CONFIRM_FIELDS,
    "amount": None,
    "application_fee_amount": None,
    "automatic_payment_methods": {"enabled": None, "allow_redirects": None},
    "confirm": None,
    "confirmation_method": None,
    "currency": None,
    "customer": None,
    "customer_account": None,
    "description": None,
    "metadata": None,
    "on_behalf_of": None,
    "payment_method_configuration": None,
    "statement_descriptor": None,
    "statement_descriptor_suffix": None,
    "transfer_data": {"destination": None, "amount": None},
    "transfer_group": None,
}
_PI_UPDATE: dict[str, Any] = {
    "allowed_payment_method_types": None,
    "amount": None,
    "amount_details": None,
    "application_fee_amount": None,
    "capture_method": None,
    "currency": None,
    "customer": None,
    "customer_account": None,
    "description": None,
    "excluded_payment_method_types": None,
    "expand": None,
    "hooks": None,
    "metadata": None,
    "payment_details": None,
    "payment_method": None,
    "payment_method_configuration": None,
    "payment_method_data": None,
    "payment_method_options": None,
    "payment_method_types": None,
    "receipt_email": None,
    "setup_future_usage": None,
    "shipping": None,
    "statement_descriptor": None,
    "statement_descriptor_suffix": None,
    "transfer_data": {"amount": None},
    "transfer_group": None,
}
_PI_UPDATE_STRINGS = (
    "description",
    "receipt_email",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "transfer_group",
    "setup_future_usage",
)
_PI_CAPTURE: dict[str, Any] = {
    "amount_details": None,
    "amount_to_capture": None,
    "application_fee_amount": None,
    "expand": None,
    "final_capture": None,
    "hooks": None,
    "metadata": None,
    "payment_details": None,
    "statement_descriptor": None,
    "statement_descriptor_suffix": None,
    "transfer_data": {"amount": None},
}
_REFUND_CREATE: dict[str, Any] = {
    "amount": None,
    "charge": None,
    "currency": None,
    "customer": None,
    "expand": None,
    "instructions_email": None,
    "metadata": None,
    "origin": None,
    "payment_intent": None,
    "reason": None,
    "refund_application_fee": None,
    "reverse_transfer": None,
}
_LIST = {"created": None, "ending_before": None, "expand": None, "limit": None,
         "starting_after": None}  # fmt: skip
_UNSUPPORTED = ("confirmation_token", "payment_method_data", "mandate_data", "customer_account")
_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SUBKEY = re.compile(r"\[([^\[\]]*)\]")


def _decode_params(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """`a[b][0]=x` form/query pairs -> nested dicts and lists, as Stripe's Rack parser does."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        match = _KEY.fullmatch(raw_key)
        if not match:
            raise _invalid(f"Invalid parameter name: {raw_key}")
        parts = [match.group(1), *_SUBKEY.findall(match.group(2))]
        node: dict[str, Any] = root
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if part == "":  # `a[]=x`: append
                part = str(len(node))
            if last:
                if isinstance(node.get(part), dict):
                    raise _invalid(f"Invalid hash: {raw_key}", param=parts[0])
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise _invalid(f"Invalid hash: {raw_key}", param=parts[0])
                node = child
    return {k: _listify(v, k == "metadata") for k, v in root.items()}


def _listify(value: Any, keep_dict: bool) -> Any:
    if not isinstance(value, dict):
        return value
    items = {k: _listify(v, False) for k, v in value.items()}
    if not keep_dict and items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def _check_known(params: Mapping[str, Any], allowed: Mapping[str, Any], prefix: str = "") -> None:
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else key
        if key not in allowed:
            raise _invalid(
                f"Received unknown parameter: {name}", param=name, code="parameter_unknown"
            )
        sub = allowed[key]
        if isinstance(sub, dict):
            if isinstance(value, str) and value == "":
                continue
            if not isinstance(value, dict):
                raise _invalid(f"Invalid object: {name}", param=name)
            _check_known(value, sub, name)


def _check_unsupported(params: Mapping[str, Any]) -> None:
    for name in _UNSUPPORTED:
        if name in params:
            raise _invalid(
                f"`{name}` is valid for Stripe but not supported by this test server; use a "
                "test PaymentMethod (e.g. pm_card_visa) in `payment_method`.",
                param=name,
            )


def _str(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _invalid(f"Invalid string: {value!r}", param=name)
    return value


def _int(
    params: Mapping[str, Any], name: str, *, required: bool = False, minimum: int | None = None
) -> Any:
    value = params.get(name)
    if value is None:
        if required:
            raise _invalid(f"Missing required param: {name}.", param=name, code="parameter_missing")
        return None
    if value == "":
        if required:
            raise _invalid(
                f"You passed an empty string for '{name}'. We assume empty values are an "
                f"attempt to unset a parameter; however '{name}' cannot be unset. You should "
                f"remove '{name}' from your request or supply a non-empty value.",
                param=name,
                code="parameter_invalid_empty",
            )
        return None
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise _invalid(f"Invalid integer: {value}", param=name, code="parameter_invalid_integer")
    number = int(value)
    if minimum is not None and number < minimum:
        raise _invalid(
            f"This value must be greater than or equal to {minimum}.",
            param=name,
            code="parameter_invalid_integer",
        )
    return number


def _bool(params: Mapping[str, Any], name: str, *, default: bool) -> bool:
    value = params.get(name)
    if value is None or value == "":
        return default
    if value not in ("true", "false"):
        raise _invalid(f"Invalid boolean: {value}", param=name)
    return bool(value == "true")


def _enum(params: Mapping[str, Any], name: str, choices: tuple[str, ...], default: Any) -> Any:
    value = params.get(name)
    if value is None or value == "":
        return default
    if value not in choices:
        raise _invalid(f"Invalid {name}: must be one of {', '.join(choices)}", param=name)
    return value


def _currency(params: Mapping[str, Any]) -> str:
    value = params.get("currency")
    if value is None or value == "":
        raise _invalid(
            "Missing required param: currency.", param="currency", code="parameter_missing"
        )
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]{3}", value):
        raise _invalid(
            f"Invalid currency: {str(value).lower()}. Stripe currently supports these "
            "currencies: usd, eur, gbp, ... (any ISO 4217 code in this test server).",
            param="currency",
        )
    return value.lower()


def _check_amount(amount: int, currency: str) -> None:
    if amount < 1:
        raise _invalid(
            "This value must be greater than or equal to 1.",
            param="amount",
            code="parameter_invalid_integer",
        )
    minimum = _MIN_AMOUNT.get(currency, 1)
    if amount < minimum:
        raise _invalid(
            f"Amount must be at least {_money(minimum, currency)}",
            param="amount",
            code="amount_too_small",
        )
    if amount > _MAX_AMOUNT:
        raise _invalid(
            f"Amount must be no more than {_money(_MAX_AMOUNT, currency)}",
            param="amount",
            code="amount_too_large",
        )


def _money(amount: int, currency: str) -> str:
    if currency in _ZERO_DECIMAL:
        return f"{amount} {currency}"
    symbol = "$" if currency == "usd" else ""
    return f"{symbol}{amount / 100:,.2f} {currency}"


def _metadata(params: Mapping[str, Any], current: Mapping[str, str]) -> dict[str, str]:
    value = params.get("metadata")
    if value is None:
        return dict(current)
    if value == "":
        return {}  # `metadata=` unsets all keys
    if not isinstance(value, dict):
        raise _invalid("Invalid object", param="metadata")
    merged = dict(current)
    for key, item in value.items():
        if not isinstance(item, str):
            raise _invalid("Metadata values must be strings.", param=f"metadata[{key}]")
        if len(key) > 40:
            raise _invalid("Metadata keys can have up to 40 characters.", param=f"metadata[{key}]")
        if len(item) > 500:
            raise _invalid(
                "Metadata values can have up to 500 characters.", param=f"metadata[{key}]"
            )
        if item == "":
            merged.pop(key, None)  # an empty value unsets the key
        else:
            merged[key] = item
    if len(merged) > 50:
        raise _invalid("You can have at most 50 metadata keys.", param="metadata")
    return merged


def _customer(params: Mapping[str, Any]) -> str | None:
    customer = _str(params, "customer")
    if customer is not None and not customer.startswith("cus_"):
        raise _invalid(f"No such customer: '{customer}'", param="customer", code="resource_missing")
    return customer


def _account_id(params: Mapping[str, Any], name: str) -> str | None:
    account = _str(params, name)
    if account is not None and not account.startswith("acct_"):
        raise _invalid(f"No such account: '{account}'", param=name, code="resource_missing")
    return account


def _transfer_data(params: Mapping[str, Any], amount: int) -> dict[str, Any] | None:
    value = params.get("transfer_data")
    if value is None or value == "":
        return None
    destination = value.get("destination")
    if not destination:
        raise _invalid(
            "Missing required param: transfer_data[destination].",
            param="transfer_data[destination]",
            code="parameter_missing",
        )
    if not isinstance(destination, str) or not destination.startswith("acct_"):
        raise _invalid(
            f"No such destination: '{destination}'",
            param="transfer_data[destination]",
            code="resource_missing",
        )
    data: dict[str, Any] = {"destination": destination}
    transfer_amount = _int(value, "amount", minimum=1)
    if transfer_amount is not None:
        if transfer_amount > amount:
            raise _invalid(
                "transfer_data[amount] cannot be greater than amount.",
                param="transfer_data[amount]",
            )
        data["amount"] = transfer_amount
    return data


def _confirm_options(params: Mapping[str, Any]) -> dict[str, Any]:
    off_session = params.get("off_session")
    if off_session in (None, "", "false"):
        off = False
    elif off_session in ("true", "one_off", "recurring"):
        off = True
    else:
        raise _invalid(f"Invalid off_session: {off_session}", param="off_session")
    return {
        "off_session": off,
        "error_on_requires_action": _bool(params, "error_on_requires_action", default=False),
        "use_stripe_sdk": _bool(params, "use_stripe_sdk", default=False),
        "return_url": _str(params, "return_url"),
    }


def _str_list(params: Mapping[str, Any], name: str) -> list[str] | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(f"Invalid array: {name}", param=name)
    return value


def _payment_method_types(
    params: Mapping[str, Any],
) -> tuple[list[str], dict[str, Any] | None, list[str] | None, list[str] | None]:
    """(payment_method_types, automatic_payment_methods, allowed, excluded) of a new intent."""
    allowed = _str_list(params, "allowed_payment_method_types")
    excluded = _str_list(params, "excluded_payment_method_types")
    explicit = _str_list(params, "payment_method_types")  # API versions before endive
    apm = params.get("automatic_payment_methods")
    if allowed is not None:
        for other in ("payment_method_types", "excluded_payment_method_types",
                      "automatic_payment_methods", "payment_method_configuration"):  # fmt: skip
            if other in params:
                raise _invalid(
                    f"You cannot specify both `allowed_payment_method_types` and `{other}`.",
                    param="allowed_payment_method_types",
                )
        return [t for t in allowed if t in _SUPPORTED_PM_TYPES], None, allowed, None
    if explicit is not None:
        if apm:
            raise _invalid(
                "You may only specify one of these parameters: automatic_payment_methods, "
                "payment_method_types.",
                param="automatic_payment_methods",
            )
        for kind in explicit:
            if kind not in _SUPPORTED_PM_TYPES:
                raise _invalid(
                    f"The payment method type provided: {kind} is invalid or not supported by "
                    "this test server.",
                    param="payment_method_types",
                )
        return list(explicit), None, None, excluded
    enabled = True
    allow_redirects = "always"
    if isinstance(apm, dict):
        enabled = _bool(apm, "enabled", default=True)
        allow_redirects = _enum(apm, "allow_redirects", ("always", "never"), "always")
    types = [t for t in _SUPPORTED_PM_TYPES if t not in (excluded or [])]
    if not enabled:
        return types, None, None, excluded
    return types, {"allow_redirects": allow_redirects, "enabled": True}, None, excluded


def _check_type_allowed(types: list[str]) -> None:
    if "card" not in types:
        raise _invalid(
            "The PaymentMethod provided (card) is not allowed for this PaymentIntent. Please "
            f"attach a PaymentMethod of one of the following types: {', '.join(types)}.",
            param="payment_method",
            code="payment_intent_incompatible_payment_method",
        )


def _expand(params: Mapping[str, Any]) -> list[str]:
    value = params.get("expand")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _invalid("Invalid array", param="expand")
    known = {"latest_charge", "payment_method", "charge", "payment_intent", "total_count"}
    for path in value:
        if path.removeprefix("data.") not in known:
            raise _invalid(f"This property cannot be expanded ({path}).", param="expand")
    return value


def _limit(params: Mapping[str, Any]) -> int:
    limit = _int(params, "limit")
    if limit is None:
        return 10
    if not 1 <= limit <= 100:
        raise _invalid(
            "This value must be less than or equal to 100 and greater than or equal to 1.",
            param="limit",
        )
    return int(limit)


def _range(params: Mapping[str, Any], name: str) -> Callable[[int], bool]:
    value = params.get(name)
    if value is None or value == "":
        return lambda _: True
    if isinstance(value, str):
        exact = _int(params, name)
        return lambda v: v == exact
    if not isinstance(value, dict):
        raise _invalid("Invalid object", param=name)
    bounds = {op: _int(value, op) for op in ("gt", "gte", "lt", "lte")}
    for op in value:
        if op not in bounds:
            raise _invalid(
                f"Received unknown parameter: {name}[{op}]",
                param=f"{name}[{op}]",
                code="parameter_unknown",
            )
    return lambda v: (
        (bounds["gt"] is None or v > bounds["gt"])
        and (bounds["gte"] is None or v >= bounds["gte"])
        and (bounds["lt"] is None or v < bounds["lt"])
        and (bounds["lte"] is None or v <= bounds["lte"])
    )


def _paginate(
    items: list[dict[str, Any]], params: Mapping[str, Any], url: str, kind: str
) -> dict[str, Any]:
    """A list object: `items` newest first; `starting_after` / `ending_before` cursors."""
    limit = _limit(params)
    ids = [item["id"] for item in items]
    after, before = _str(params, "starting_after"), _str(params, "ending_before")
    if after is not None:
        if after not in ids:
            raise _invalid(
                f"No such {kind}: '{after}'", param="starting_after", code="resource_missing"
            )
        start = ids.index(after) + 1
        page, has_more = items[start : start + limit], start + limit < len(items)
    elif before is not None:
        if before not in ids:
            raise _invalid(
                f"No such {kind}: '{before}'", param="ending_before", code="resource_missing"
            )
        end = ids.index(before)
        start = max(0, end - limit)
        page, has_more = items[start:end], start > 0
    else:
        page, has_more = items[:limit], len(items) > limit
    return {"object": "list", "data": page, "has_more": has_more, "url": url}


# ------------------------------------------------------------------------------ search

_CLAUSE = re.compile(
    r"""\s*(?P<neg>-)?(?P<field>metadata\[(?P<q>['"])(?P<mkey>.+?)(?P=q)\]|[a-z_]+)"""
    r"""\s*(?P<op>:|~|>=|<=|>|<)\s*"""
    r"""(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"]+)\s*"""
)
_SEARCH_FIELDS = {"amount": "number", "created": "number", "currency": "string",
                  "customer": "string", "status": "string"}  # fmt: skip


def _parse_query(query: str) -> Callable[[dict[str, Any]], bool]:
    """Stripe's search query language, for PaymentIntents' query fields."""
    tokens = re.split(r"\s+(AND|OR)\s+", query.strip())
    clauses, joins = tokens[0::2], set(tokens[1::2])
    if len(joins) > 1:
        raise _invalid("Invalid query: a query can use AND or OR, but not both.", param="query")
    if len(clauses) > 10:
        raise _invalid("Invalid query: a query can have at most 10 clauses.", param="query")
    tests = [_parse_clause(clause) for clause in clauses]
    if joins == {"OR"}:
        return lambda obj: any(test(obj) for test in tests)
    return lambda obj: all(test(obj) for test in tests)


def _parse_clause(clause: str) -> Callable[[dict[str, Any]], bool]:
    match = _CLAUSE.fullmatch(clause)
    if not match:
        raise _invalid(f"Invalid query: could not parse `{clause.strip()}`.", param="query")
    raw = match.group("value")
    quoted = raw[0] in "'\""
    value = re.sub(r"\\(.)", r"\1", raw[1:-1]) if quoted else raw
    op = match.group("op")
    negate = match.group("neg") is not None
    if match.group("mkey") is not None:
        key = match.group("mkey")
        if op not in (":", "~"):
            raise _invalid("Invalid query: metadata supports only `:`.", param="query")

        def test(obj: dict[str, Any]) -> bool:
            found: str | None = obj["metadata"].get(key)
            if op == "~":
                return found is not None and value in found
            return found == value

    else:
        name = match.group("field")
        kind = _SEARCH_FIELDS.get(name)
        if kind is None:
            raise _invalid(
                f"Field `{name}` is an unsupported search field for resource `payment_intents`."
                " See http://stripe.com/docs/search#query-fields-for-payment-intents for a list "
                "of supported fields.",
                param="query",
            )
        if kind == "number":
            try:
                number = int(value)
            except ValueError:
                raise _invalid(f"Invalid query: `{name}` takes a number.", param="query") from None
            compare: dict[str, Callable[[int], bool]] = {
                ":": lambda v: v == number,
                ">": lambda v: v > number,
                "<": lambda v: v < number,
                ">=": lambda v: v >= number,
                "<=": lambda v: v <= number,
            }
            if op not in compare:
                raise _invalid(f"Invalid query: `{op}` is not valid for {name}.", param="query")

            def test(obj: dict[str, Any]) -> bool:
                return compare[op](obj[name])

        else:
            if op not in (":", "~"):
                raise _invalid(f"Invalid query: `{op}` is not valid for {name}.", param="query")
            if op == "~" and len(value) < 3:
                raise _invalid(
                    "Invalid query: substring matching needs at least 3 characters.",
                    param="query",
                )

            def test(obj: dict[str, Any]) -> bool:
                found = obj.get(name)
                if found is None:
                    return False
                return value in found if op == "~" else found == value

    return (lambda obj: not test(obj)) if negate else test


# ------------------------------------------------------------------------------ plumbing


def _seq(item: _Intent | _Stored) -> int:
    return item.seq


def _dump(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, indent=2).encode()


def _event_json(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, indent=2).encode()
