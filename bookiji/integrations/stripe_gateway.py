"""StripeGateway: manual-capture PaymentIntents through the official `stripe` SDK.

Vendor deposit: a PaymentIntent on the vendor's saved payment method (customer,
off_session, confirm). Requester payment: a destination charge to the vendor's connected
account (transfer_data.destination, application_fee_amount), payment method from the
partner; `requires_action` hands back the client secret. Every mutating call carries the
caller's deterministic idempotency key; retries (tenacity, exponential backoff) happen only
for connection errors, 429, 5xx and lock timeouts, never for declines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import stripe
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from bookiji.domain.errors import BookijiError, PaymentDeclined, PaymentProviderError
from bookiji.services.ports import AuthorizationRequest, IntentView

T = TypeVar("T")


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    if isinstance(exc, stripe.CardError | stripe.IdempotencyError):
        return False
    if isinstance(exc, stripe.StripeError):
        status = exc.http_status or 0
        code = exc.code or (exc.error.code if exc.error else None)
        # 409: a request with the same key still in flight (lock_timeout /
        # idempotency_key_in_use); sending the same key again shortly after is safe.
        return status >= 500 or status in (409, 429) or code == "lock_timeout"
    return False


def _plain(obj: Any) -> dict[str, Any]:
    """A Stripe object as plain dicts all the way down."""
    if obj is None:
        return {}
    to_dict = getattr(obj, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else dict(obj)


def _view(obj: Any) -> IntentView:
    intent = _plain(obj)
    metadata = intent.get("metadata") or {}
    charge = intent.get("latest_charge")
    refunded = charge.get("amount_refunded", 0) if isinstance(charge, dict) else 0
    error = intent.get("last_payment_error") or {}
    return IntentView(
        id=intent["id"],
        status=intent["status"],
        amount=intent["amount"],
        currency=intent["currency"],
        amount_capturable=intent.get("amount_capturable") or 0,
        amount_received=intent.get("amount_received") or 0,
        amount_refunded=refunded or 0,
        client_secret=intent.get("client_secret")
        if intent["status"] == "requires_action"
        else None,
        reservation_id=metadata.get("reservation_id"),
        party=metadata.get("party"),
        error_code=error.get("decline_code") or error.get("code"),
    )


class StripeGateway:
    name = "stripe"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_attempts: int = 4,
        max_wait: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": base_url} if base_url else None,
            max_network_retries=0,  # we retry ourselves, with the same idempotency key
            http_client=stripe.RequestsClient(timeout=timeout),
        )
        self.max_attempts = max_attempts
        self.max_wait = max_wait
        self.sleep = sleep

    def _call(self, what: str, call: Callable[[], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential_jitter(multiplier=0.2, max=self.max_wait, jitter=0.2),
            sleep=self.sleep,
            reraise=False,
        )
        try:
            return retrying(call)
        except RetryError as exhausted:
            last = exhausted.last_attempt.exception()
            raise PaymentProviderError(
                f"Stripe {what} failed after {self.max_attempts} attempts ({type(last).__name__})",
                retryable=True,
            ) from None
        except stripe.CardError as exc:
            intent = _plain(exc.error.payment_intent if exc.error else None)
            decline = (exc.error.decline_code if exc.error else None) or exc.code
            raise PaymentDeclined(
                f"the card was declined ({decline})",
                details={"intentId": intent.get("id"), "declineCode": decline},
            ) from None
        except stripe.StripeError as exc:
            # The SDK's message is Stripe's own text, which never carries our secrets.
            raise PaymentProviderError(
                f"Stripe {what} failed: {exc.code or type(exc).__name__}: "
                f"{exc.user_message or (exc.error.message if exc.error else '')}",
                retryable=_retryable(exc),
                details={
                    # A key sent before with other parameters: the caller's cue that an
                    # earlier attempt's outcome decides (Stripe gives such errors no code).
                    "code": "idempotency_error"
                    if isinstance(exc, stripe.IdempotencyError)
                    else exc.code,
                    "status": exc.http_status,
                    "param": exc.error.param if exc.error else None,
                },
            ) from None

    def authorize(self, request: AuthorizationRequest, *, idempotency_key: str) -> IntentView:
        params: dict[str, Any] = {
            "amount": request.amount,
            "currency": request.currency,
            "capture_method": "manual",
            "confirm": True,
            "payment_method": request.payment_method,
            # Cards only, confirmed server-side: no redirect-based methods, no return_url.
            "allowed_payment_method_types": ["card"],
            "metadata": {"reservation_id": request.reservation_id, "party": request.party},
        }
        if request.customer:
            params["customer"] = request.customer
        if request.off_session:
            params["off_session"] = True
        if request.destination:
            params["transfer_data"] = {"destination": request.destination}
        if request.application_fee:
            params["application_fee_amount"] = request.application_fee
        intent = self._call(
            "authorization",
            lambda: self.client.v1.payment_intents.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return _view(intent)

    def capture(
        self, intent_id: str, *, idempotency_key: str, amount: int | None = None
    ) -> IntentView:
        params: dict[str, Any] = {} if amount is None else {"amount_to_capture": amount}
        intent = self._call(
            "capture",
            lambda: self.client.v1.payment_intents.capture(
                intent_id,
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return _view(intent)

    def cancel(self, intent_id: str, *, idempotency_key: str) -> IntentView:
        intent = self._call(
            "cancel",
            lambda: self.client.v1.payment_intents.cancel(
                intent_id, options={"idempotency_key": idempotency_key}
            ),
        )
        return _view(intent)

    def refund(
        self, intent_id: str, *, idempotency_key: str, amount: int | None = None
    ) -> IntentView:
        params: dict[str, Any] = {"payment_intent": intent_id}
        if amount is not None:
            params["amount"] = amount
        paid = _plain(
            self._call("refund", lambda: self.client.v1.payment_intents.retrieve(intent_id))
        )
        if paid.get("transfer_data"):
            # A destination charge: without these Stripe refunds from the platform's balance
            # and the vendor keeps the transfer (and the platform its fee).
            params["reverse_transfer"] = True
            if paid.get("application_fee_amount"):
                params["refund_application_fee"] = True
        self._call(
            "refund",
            lambda: self.client.v1.refunds.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return self.retrieve(intent_id)

    def retrieve(self, intent_id: str) -> IntentView:
        intent = self._call(
            "retrieve",
            lambda: self.client.v1.payment_intents.retrieve(
                intent_id, params={"expand": ["latest_charge"]}
            ),
        )
        return _view(intent)

    def find_by_reservation(self, reservation_id: str) -> list[IntentView]:
        query = f"metadata['reservation_id']:'{reservation_id}'"
        result = self._call(
            "search",
            # With the charge, as `retrieve` reads it: without it a refund is invisible (the
            # intent still says succeeded) and the money sweep called refunded money captured.
            lambda: self.client.v1.payment_intents.search(
                params={"query": query, "limit": 100, "expand": ["data.latest_charge"]}
            ),
        )
        return [_view(intent) for intent in result.data]


class InvalidWebhook(BookijiError):
    code = "invalid_signature"
    http_status = 400


#: The Stripe events that move a reservation on; others are acknowledged and ignored.
INTENT_EVENTS = frozenset(
    {
        "payment_intent.amount_capturable_updated",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
        "payment_intent.requires_action",
        "payment_intent.succeeded",
    }
)


def parse_webhook(
    payload: bytes, signature: str, secret: str, *, tolerance: int = 300
) -> tuple[str, IntentView | None]:
    """Verify a Stripe webhook's signature and return (event type, the intent it is about).

    Refuses (`invalid_signature`, 400) a payload not signed with `secret` within `tolerance`
    seconds: an unsigned event could otherwise move money."""
    try:
        event = stripe.Webhook.construct_event(payload, signature, secret, tolerance=tolerance)
    except (stripe.SignatureVerificationError, ValueError):
        raise InvalidWebhook("the Stripe signature does not verify") from None
    kind = str(event["type"])
    if kind not in INTENT_EVENTS:
        return kind, None
    return kind, _view(event["data"]["object"])
