"""LocalGateway: the embedded default payment provider, a ledger in our own database.

Same semantics as Stripe's manual-capture PaymentIntents (statuses, idempotency keys,
Stripe's test payment methods), no network. It writes in its own transactions, as an
outside provider would, so the workflow cannot accidentally commit money movement together
with its own state. `faults` lets tests and the demo make the next call fail, optionally
after it was applied (the answer is lost, as when a connection drops).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlmodel import col, select

from bookiji.domain.errors import BookijiError, PaymentDeclined, PaymentProviderError
from bookiji.services.clock import Clock
from bookiji.services.ports import AuthorizationRequest, IntentView
from bookiji.store.database import Database
from bookiji.store.models import LocalIdempotencyKey, LocalPaymentIntent
from bookiji.store.uow import UnitOfWork

#: Stripe's documented test payment methods and what they do on authorization.
TEST_CARDS: dict[str, tuple[str, str | None]] = {
    "pm_card_visa": ("requires_capture", None),
    "pm_card_mastercard": ("requires_capture", None),
    "pm_card_amex": ("requires_capture", None),
    "pm_card_chargeDeclined": ("declined", "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": ("declined", "insufficient_funds"),
    "pm_card_visa_chargeDeclinedExpiredCard": ("declined", "expired_card"),
    "pm_card_authenticationRequired": ("requires_action", None),
    "pm_card_threeDSecure2Required": ("requires_action", None),
}
CANCELLABLE = {"requires_payment_method", "requires_capture", "requires_action"}


@dataclass
class _Fault:
    operation: str
    error: BookijiError
    after_apply: bool


@dataclass
class LocalFaults:
    """Make the next call of an operation fail: before it is applied, or after (lost answer)."""

    queue: list[_Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, operation: str, error: BookijiError, *, after_apply: bool = False) -> None:
        with self.lock:
            self.queue.append(_Fault(operation, error, after_apply))

    def take(self, operation: str) -> _Fault | None:
        with self.lock:
            for index, fault in enumerate(self.queue):
                if fault.operation == operation:
                    return self.queue.pop(index)
        return None


def _view(intent: LocalPaymentIntent) -> IntentView:
    return IntentView(
        id=intent.id,
        status=intent.status,
        amount=intent.amount,
        currency=intent.currency,
        amount_capturable=intent.amount_capturable,
        amount_received=intent.amount_received,
        amount_refunded=intent.amount_refunded,
        client_secret=intent.client_secret if intent.status == "requires_action" else None,
        reservation_id=intent.reservation_id,
        party=intent.party,
        error_code=intent.error_code,
    )


def _unexpected(intent: LocalPaymentIntent, operation: str) -> PaymentProviderError:
    return PaymentProviderError(
        f"cannot {operation} payment {intent.id} in status {intent.status}",
        retryable=False,
        details={"intentId": intent.id, "code": "payment_intent_unexpected_state"},
    )


class LocalGateway:
    name = "local"

    def __init__(self, db: Database, clock: Clock, faults: LocalFaults | None = None) -> None:
        self.db = db
        self.clock = clock
        self.faults = faults or LocalFaults()

    # -- the idempotent envelope -------------------------------------------------------------

    def _idempotent(
        self,
        operation: str,
        key: str,
        params: dict[str, Any],
        apply: Callable[[UnitOfWork], IntentView],
    ) -> IntentView:
        fault = self.faults.take(operation)
        if fault is not None and not fault.after_apply:
            raise fault.error
        digest = hashlib.sha256(
            json.dumps({"op": operation, **params}, sort_keys=True).encode()
        ).hexdigest()
        with UnitOfWork(self.db) as uow:
            stored = uow.session.get(LocalIdempotencyKey, key)
            if stored is not None:
                if stored.request_hash != digest:
                    raise PaymentProviderError(
                        "idempotency key reused with different parameters",
                        retryable=False,
                        details={"code": "idempotency_error"},
                    )
                return self._replay(stored.response)
            try:
                result: IntentView | BookijiError = apply(uow)
            except (PaymentDeclined, PaymentProviderError) as exc:
                if exc.details.get("param"):
                    # As on Stripe, a request refused before it runs (an invalid parameter)
                    # is not saved under its key: the same key may go again, corrected.
                    raise
                result = exc
            response = (
                {"intent": asdict(result)}
                if isinstance(result, IntentView)
                else {"error": type(result).__name__, "message": result.message,
                      "details": result.details,
                      "retryable": getattr(result, "retryable", False)}
            )  # fmt: skip
            uow.session.add(
                LocalIdempotencyKey(
                    key=key, request_hash=digest, response=response, created_at=self.clock.now()
                )
            )
            uow.commit()
        if fault is not None:
            raise fault.error
        return self._replay(response)

    @staticmethod
    def _replay(response: dict[str, Any]) -> IntentView:
        if "intent" in response:
            return IntentView(**response["intent"])
        if response["error"] == "PaymentDeclined":
            raise PaymentDeclined(response["message"], details=response["details"])
        raise PaymentProviderError(
            response["message"], retryable=response["retryable"], details=response["details"]
        )

    def _intent(self, uow: UnitOfWork, intent_id: str) -> LocalPaymentIntent:
        intent = uow.session.get(LocalPaymentIntent, intent_id)
        if intent is None:
            raise PaymentProviderError(
                f"no such payment {intent_id}",
                retryable=False,
                details={"code": "resource_missing", "intentId": intent_id},
            )
        return intent

    # -- operations ----------------------------------------------------------------------------

    def authorize(self, request: AuthorizationRequest, *, idempotency_key: str) -> IntentView:
        def apply(uow: UnitOfWork) -> IntentView:
            if request.amount <= 0:
                raise PaymentProviderError("amount must be positive", retryable=False)
            outcome, decline = TEST_CARDS.get(request.payment_method, ("unknown", None))
            if outcome == "unknown":
                raise PaymentProviderError(
                    f"no such payment method {request.payment_method}",
                    retryable=False,
                    details={"code": "resource_missing", "param": "payment_method"},
                )
            if outcome == "requires_action" and request.off_session:
                outcome, decline = "declined", "authentication_required"
            now = self.clock.now()
            intent_id = f"lpi_{secrets.token_hex(12)}"
            intent = LocalPaymentIntent(
                id=intent_id,
                reservation_id=request.reservation_id,
                party=request.party,
                amount=request.amount,
                currency=request.currency,
                status="requires_payment_method" if outcome == "declined" else outcome,
                amount_capturable=request.amount if outcome == "requires_capture" else 0,
                payment_method=request.payment_method,
                customer=request.customer,
                destination=request.destination,
                application_fee=request.application_fee,
                client_secret=f"{intent_id}_secret_{secrets.token_hex(8)}",
                error_code=decline,
                created_at=now,
                updated_at=now,
            )
            uow.session.add(intent)
            uow.flush()
            if outcome == "declined":
                raise PaymentDeclined(
                    f"the card was declined ({decline})",
                    details={"intentId": intent_id, "declineCode": decline},
                )
            return _view(intent)

        return self._idempotent("authorize", idempotency_key, asdict(request), apply)

    def capture(
        self, intent_id: str, *, idempotency_key: str, amount: int | None = None
    ) -> IntentView:
        def apply(uow: UnitOfWork) -> IntentView:
            intent = self._intent(uow, intent_id)
            if intent.status != "requires_capture":
                raise _unexpected(intent, "capture")
            take = intent.amount_capturable if amount is None else amount
            if not 0 < take <= intent.amount_capturable:
                raise PaymentProviderError("amount_to_capture out of range", retryable=False)
            intent.status = "succeeded"
            intent.amount_received = take
            intent.amount_capturable = 0
            intent.captures += 1
            intent.updated_at = self.clock.now()
            return _view(intent)

        params = {"intent": intent_id, "amount": amount}
        return self._idempotent("capture", idempotency_key, params, apply)

    def cancel(self, intent_id: str, *, idempotency_key: str) -> IntentView:
        def apply(uow: UnitOfWork) -> IntentView:
            intent = self._intent(uow, intent_id)
            if intent.status not in CANCELLABLE:
                raise _unexpected(intent, "cancel")
            intent.status = "canceled"
            intent.amount_capturable = 0
            intent.updated_at = self.clock.now()
            return _view(intent)

        return self._idempotent("cancel", idempotency_key, {"intent": intent_id}, apply)

    def refund(
        self, intent_id: str, *, idempotency_key: str, amount: int | None = None
    ) -> IntentView:
        def apply(uow: UnitOfWork) -> IntentView:
            intent = self._intent(uow, intent_id)
            if intent.status != "succeeded":
                raise _unexpected(intent, "refund")
            remaining = intent.amount_received - intent.amount_refunded
            give = remaining if amount is None else amount
            if not 0 < give <= remaining:
                raise PaymentProviderError("refund amount out of range", retryable=False)
            intent.amount_refunded += give
            intent.updated_at = self.clock.now()
            return _view(intent)

        params = {"intent": intent_id, "amount": amount}
        return self._idempotent("refund", idempotency_key, params, apply)

    def retrieve(self, intent_id: str) -> IntentView:
        with UnitOfWork(self.db, readonly=True) as uow:
            return _view(self._intent(uow, intent_id))

    def find_by_reservation(self, reservation_id: str) -> list[IntentView]:
        with UnitOfWork(self.db, readonly=True) as uow:
            rows = uow.session.exec(
                select(LocalPaymentIntent)
                .where(col(LocalPaymentIntent.reservation_id) == reservation_id)
                .order_by(col(LocalPaymentIntent.created_at), col(LocalPaymentIntent.id))
            ).all()
            return [_view(r) for r in rows]

    # -- the card holder's side (3-D Secure) ---------------------------------------------------

    def complete_authentication(self, intent_id: str, *, succeed: bool = True) -> IntentView:
        """What the card holder finishing (or failing) 3-D Secure does to the intent."""
        with UnitOfWork(self.db) as uow:
            intent = self._intent(uow, intent_id)
            if intent.status != "requires_action":
                raise _unexpected(intent, "authenticate")
            if succeed:
                intent.status = "requires_capture"
                intent.amount_capturable = intent.amount
            else:
                intent.status = "requires_payment_method"
                intent.error_code = "authentication_failed"
            intent.updated_at = self.clock.now()
            view = _view(intent)
            uow.commit()
            return view
