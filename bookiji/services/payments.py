"""Dual authorization and the atomic commit.

Order (the seed's): the vendor's deposit is authorized first, then the requester's payment;
once both hold, the commit revalidates availability on fresh calendar data, captures the
vendor, captures the requester, and writes the booking with COMMITTED in one transaction.
Every provider call is recorded in `payment_operations` before it is made (with its
deterministic idempotency key) and after it returns, so a process killed anywhere is resumed
by reconciliation without a second capture. Any failure is recorded together with its
compensation rows, which are executed right after and retried until done.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from bookiji.domain.availability import Audience
from bookiji.domain.compensation import LIVE, Action, Failure, Money, Party, plan
from bookiji.domain.errors import (
    AuthorizationPending,
    BookijiError,
    InvalidTransition,
    NotFound,
    PaymentDeclined,
    PaymentProviderError,
    Unavailable,
    ValidationFailed,
)
from bookiji.domain.states import (
    FINAL_STATES,
    TRANSITIONS,
    ReservationState,
    StageTTLs,
    expiry_target,
)
from bookiji.services import transitions
from bookiji.services.availability import check_bookable, load_schedule
from bookiji.services.calendars import CalendarService
from bookiji.services.clock import Clock
from bookiji.services.compensation import (
    CompensationRunner,
    money_of,
    party_amount,
    party_money,
    party_ref,
    plan_into,
    set_money,
)
from bookiji.services.deadlines import expire_now
from bookiji.services.ids import new_id
from bookiji.services.ports import AuthorizationRequest, IntentView, PaymentGateway
from bookiji.services.tracing import span
from bookiji.store.database import Database
from bookiji.store.errors import is_unique_violation
from bookiji.store.models import (
    Booking,
    CompensationAction,
    JobLease,
    PaymentOperation,
    Reservation,
)
from bookiji.store.uow import UnitOfWork

S = ReservationState
CRASH_ENV = "BOOKIJI_CRASH_AT"


def crashpoint(name: str) -> None:
    """Fault injection for the crash tests: die here, as a power cut would.

    Inert unless BOOKIJI_CRASH_AT names this point; never set it in production.
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def operation_key(reservation_id: str, party: Party, kind: str) -> str:
    return f"bkj:{reservation_id}:{party.value}:{kind}"


@dataclass(frozen=True)
class AuthorizationOutcome:
    reservation_id: str
    party: str
    state: str
    money: str
    intent_id: str | None
    client_secret: str | None = None


@dataclass(frozen=True)
class PaymentSettings:
    application_fee_bps: int = 0  # of the requester payment, in basis points
    commit_lease: timedelta = timedelta(minutes=2)
    auto_vendor_authorization: bool = True


AWAITING = {Party.VENDOR: S.AWAITING_VENDOR_AUTH, Party.REQUESTER: S.AWAITING_REQUESTER_AUTH}
log = logging.getLogger(__name__)

AUTH_FAILURE = {
    Party.VENDOR: Failure.VENDOR_AUTH_FAILED,
    Party.REQUESTER: Failure.REQUESTER_AUTH_FAILED,
}


def provider_down(exc: PaymentProviderError, details: dict[str, Any]) -> Unavailable:
    """A call whose outcome is unknown: the caller may retry (the same key is sent again)."""
    return Unavailable(
        f"the payment provider is not answering; retry ({exc.message})", details=details
    )


class PaymentService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        ttls: StageTTLs,
        gateway: PaymentGateway,
        calendars: CalendarService | None = None,
        settings: PaymentSettings | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.ttls = ttls
        self.gateway = gateway
        self.calendars = calendars
        self.settings = settings or PaymentSettings()
        self.compensations = CompensationRunner(db, clock, gateway)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    # -- shared helpers ------------------------------------------------------------------------

    def _move(
        self,
        uow: UnitOfWork,
        reservation: Reservation,
        target: ReservationState,
        actor: str,
        reason: str,
        details: dict[str, Any] | None = None,
    ) -> bool:
        return transitions.apply(
            uow, reservation, target, now=self.clock.now(), ttls=self.ttls, reason=reason,
            actor=actor, details=details,
        )  # fmt: skip

    def _locked(self, uow: UnitOfWork, reservation_id: str) -> Reservation:
        reservation = uow.reservations.get(reservation_id, for_update=True)
        if reservation is None:
            raise NotFound(
                f"no reservation {reservation_id!r}", details={"reservationId": reservation_id}
            )
        return reservation

    def fail(
        self,
        reservation_id: str,
        failure: Failure,
        *,
        target: ReservationState,
        actor: str,
        reason: str,
        details: dict[str, Any] | None = None,
    ) -> list[str]:
        """Record a failure and its compensation rows in one transaction, then run them."""
        with UnitOfWork(self.db) as uow:
            reservation = self._locked(uow, reservation_id)
            self._move(uow, reservation, target, actor, reason, details)
            actions = plan_into(uow, reservation, failure, self.clock.now())
            ids = [a.id for a in actions]
            uow.commit()
        if ids:
            self.compensations.run(ids=ids)
        return ids

    def _begin_operation(
        self, reservation_id: str, party: Party, kind: str, amount: int
    ) -> PaymentOperation:
        """Record (or find) the operation before calling the provider. Two workers starting
        the same one both get its row (the second insert loses on the unique key and reads
        the winner's); the provider's idempotency key makes their calls one."""
        key = operation_key(reservation_id, party, kind)
        for attempt in range(2):
            now = self.clock.now()
            try:
                with UnitOfWork(self.db) as uow:
                    op = uow.session.exec(
                        select(PaymentOperation).where(col(PaymentOperation.idempotency_key) == key)
                    ).first()
                    if op is None:
                        op = PaymentOperation(
                            id=new_id("op"),
                            reservation_id=reservation_id,
                            party=party.value,
                            kind=kind,
                            idempotency_key=key,
                            amount=amount,
                            started_at=now,
                        )
                        uow.session.add(op)
                    op.attempts += 1
                    uow.commit()
                    return op
            except IntegrityError as exc:
                if attempt or not is_unique_violation(exc, "payment_operations"):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _finish_operation(
        self,
        op_id: str,
        status: str,
        *,
        intent_id: str | None = None,
        error: BookijiError | None = None,
    ) -> None:
        with UnitOfWork(self.db) as uow:
            op = uow.session.get(PaymentOperation, op_id)
            assert op is not None
            op.status = status
            op.intent_id = intent_id or op.intent_id
            op.finished_at = self.clock.now()
            if error is not None:
                op.error_code = str(error.details.get("declineCode") or error.code)[:80]
                op.error_message = error.message
            uow.commit()

    # -- authorization ---------------------------------------------------------------------------

    def authorize(
        self,
        reservation_id: str,
        party_name: str,
        *,
        payment_method: str | None = None,
        actor: str,
        partner_id: str | None = None,
        auto_commit: bool = True,
    ) -> AuthorizationOutcome:
        """Authorize one party's money (manual capture). Vendor first, then requester.

        Repeating a finished authorization is a no-op that answers as the first did."""
        try:
            party = Party(party_name)
        except ValueError:
            raise ValidationFailed("party must be 'vendor' or 'requester'") from None
        if partner_id is not None and party is Party.VENDOR and payment_method:
            raise ValidationFailed(
                "the vendor's deposit is authorized on the vendor's own saved payment method; "
                "paymentMethod is only for the requester's payment",
                details={"party": party.value},
            )
        with UnitOfWork(self.db) as uow:
            reservation = self._locked(uow, reservation_id)
            if partner_id is not None and reservation.partner_id != partner_id:
                raise NotFound(f"no reservation {reservation_id!r}")
            money = party_money(reservation, party)
            if money in (Money.AUTHORIZED, Money.CAPTURED, Money.FAILED):
                return self._outcome(reservation, party)
            now = self.clock.now()
            due = expiry_target(S(reservation.state), reservation.state_deadline, now)
            if due is not None:  # too late: expire it as the job would, and say so
                refusal, late = expire_now(uow, reservation, due, now, self.ttls)
                uow.commit()
            else:
                pending = party_ref(reservation, party) if money is Money.PENDING else None
                refresh = pending is not None and payment_method is None
                if not refresh:
                    request = self._prepare(uow, reservation, party, payment_method, actor)
                    uow.commit()
        if due is not None:
            self.compensations.run(ids=[a.id for a in late])
            raise refusal
        if refresh:
            assert pending is not None
            return self._awaited(pending, actor, auto_commit)
        if request is None:  # nothing to authorize (a zero amount)
            return self._record_authorized(reservation_id, party, None, actor, auto_commit)
        op = self._begin_operation(reservation_id, party, "authorize", request.amount)
        try:
            intent = self.gateway.authorize(request, idempotency_key=op.idempotency_key)
        except PaymentDeclined as exc:
            self._finish_operation(
                op.id, "failed", intent_id=exc.details.get("intentId"), error=exc
            )
            return self._record_declined(reservation_id, party, exc, actor)
        except PaymentProviderError as exc:
            if exc.retryable:  # unknown outcome: the same key is sent again next time
                raise provider_down(
                    exc, {"reservationId": reservation_id, "party": party.value}
                ) from None
            if pending is not None:
                # The authorization sent first still waits for the card holder, and this
                # request is not the same one (another payment method, say: the provider
                # refuses the key with other parameters). Failing the reservation would leave
                # that authorization to be completed for a reservation that is gone.
                raise AuthorizationPending(
                    f"the {party.value}'s payment {pending} is waiting for the card holder to "
                    "authenticate (3-D Secure): finish it with its client secret (send this "
                    "request without paymentMethod to get it again), or cancel the "
                    "reservation; another payment method cannot replace it",
                    details={"reservationId": reservation_id, "party": party.value,
                             "paymentIntentId": pending},
                ) from None  # fmt: skip
            if exc.details.get("param") == "payment_method" and payment_method:
                # A mistyped or foreign payment method in this request is a bad request, not
                # a decline: nothing was charged, and the request with a good one may follow.
                # (A vendor's saved one that the provider does not know fails its deposit.)
                self._finish_operation(op.id, "failed", error=exc)
                raise ValidationFailed(
                    f"the payment provider does not know the {party.value}'s payment method; "
                    "nothing was charged",
                    details={"reservationId": reservation_id, "party": party.value},
                ) from None
            if exc.details.get("code") == "idempotency_error":
                # The key went out before with other parameters (another card, say) and that
                # answer was lost: the first attempt's outcome decides, not this refusal.
                return self._earlier_attempt(reservation_id, party, actor, auto_commit)
            self._finish_operation(op.id, "failed", error=exc)
            return self._record_declined(reservation_id, party, exc, actor)
        self._finish_operation(op.id, "succeeded", intent_id=intent.id)
        return self.apply_intent(intent, actor=actor, auto_commit=auto_commit)

    def _earlier_attempt(
        self, reservation_id: str, party: Party, actor: str, auto_commit: bool
    ) -> AuthorizationOutcome:
        """Adopt what the provider made of an earlier attempt whose answer was lost."""
        try:
            intents = [
                i for i in self.gateway.find_by_reservation(reservation_id)
                if i.party == party.value
            ]  # fmt: skip
        except PaymentProviderError as exc:
            raise provider_down(exc, {"reservationId": reservation_id}) from None
        if not intents:  # the provider's search lags its writes: ask again shortly
            raise Unavailable(
                f"an earlier {party.value} authorization's outcome is not known yet; retry shortly",
                details={"reservationId": reservation_id, "party": party.value},
            )
        op = self._operation(reservation_id, party, "authorize")
        if op is not None:
            self._finish_operation(op.id, "succeeded", intent_id=intents[-1].id)
        return self.apply_intent(intents[-1], actor=actor, auto_commit=auto_commit)

    def _awaited(self, intent_id: str, actor: str, auto_commit: bool) -> AuthorizationOutcome:
        """An authorization waiting for the card holder, as the provider sees it now: its
        client secret again, or its news (authenticated, failed) applied at once."""
        try:
            intent = self.gateway.retrieve(intent_id)
        except PaymentProviderError as exc:
            raise provider_down(exc, {"paymentIntentId": intent_id}) from None
        return self.apply_intent(intent, actor=actor, auto_commit=auto_commit)

    def _prepare(
        self,
        uow: UnitOfWork,
        reservation: Reservation,
        party: Party,
        payment_method: str | None,
        actor: str,
    ) -> AuthorizationRequest | None:
        state = S(reservation.state)
        vendor = uow.vendors.get(reservation.vendor_id)
        assert vendor is not None
        if party is Party.VENDOR:
            if state is S.CONFIRMED_BY_VENDOR:
                self._move(
                    uow, reservation, S.AWAITING_VENDOR_AUTH, actor, "vendor deposit requested"
                )
            elif state is not S.AWAITING_VENDOR_AUTH:
                raise InvalidTransition(
                    f"the vendor deposit is authorized after the vendor confirms; the "
                    f"reservation is {state}",
                    details={"state": state.value},
                )
            amount = reservation.deposit_amount
            method = payment_method or vendor.payment_method_ref
            if amount and not method:
                raise ValidationFailed(
                    f"vendor {vendor.id} has no saved payment method for its deposit; "
                    "pass --payment-method",
                    details={"vendorId": vendor.id},
                )
            if not amount:
                return None
            assert method is not None
            return AuthorizationRequest(
                reservation.id, party.value, amount, reservation.currency, method,
                customer=vendor.payment_customer_ref, off_session=True,
            )  # fmt: skip
        if state is S.VENDOR_AUTHORIZED:
            self._move(uow, reservation, S.AWAITING_REQUESTER_AUTH, actor, "payment requested")
        elif state is not S.AWAITING_REQUESTER_AUTH:
            raise InvalidTransition(
                f"the requester pays after the vendor deposit is authorized; the reservation "
                f"is {state}",
                details={"state": state.value},
            )
        amount = reservation.price_amount
        if not amount:
            return None
        if not payment_method:
            raise ValidationFailed("the requester's payment method is required")
        fee = amount * self.settings.application_fee_bps // 10_000
        return AuthorizationRequest(
            reservation.id, party.value, amount, reservation.currency, payment_method,
            destination=vendor.payment_account_ref, application_fee=fee or None,
        )  # fmt: skip

    def _outcome(
        self, reservation: Reservation, party: Party, client_secret: str | None = None
    ) -> AuthorizationOutcome:
        return AuthorizationOutcome(
            reservation.id,
            party.value,
            reservation.state,
            party_money(reservation, party).value,
            party_ref(reservation, party),
            client_secret,
        )

    def apply_intent(
        self, intent: IntentView, *, actor: str, auto_commit: bool = True
    ) -> AuthorizationOutcome:
        """Move the reservation on from what the provider says about an authorization.

        Used right after `authorize`, by the provider's webhooks (3-D Secure finished or
        failed later) and by reconciliation polling; applying the same news twice is a no-op.
        """
        if intent.reservation_id is None or intent.party is None:
            raise ValidationFailed("payment has no reservation metadata", details={"id": intent.id})
        party = Party(intent.party)
        if intent.status == "requires_capture":
            return self._record_authorized(
                intent.reservation_id, party, intent.id, actor, auto_commit
            )
        if intent.status == "requires_action":
            with UnitOfWork(self.db) as uow:
                reservation = self._locked(uow, intent.reservation_id)
                if party_money(reservation, party) is Money.NOT_STARTED:
                    set_money(reservation, party, Money.PENDING, intent.id)
                    reservation.updated_at = self.clock.now()
                uow.commit()
                return self._outcome(reservation, party, intent.client_secret)
        if intent.status == "canceled" and self._record_released(intent.reservation_id, party):
            with UnitOfWork(self.db, readonly=True) as uow:
                return self._outcome(self._locked(uow, intent.reservation_id), party)
        if intent.status in ("requires_payment_method", "canceled"):
            error = PaymentDeclined(
                f"authorization failed ({intent.error_code or intent.status})",
                details={"intentId": intent.id, "declineCode": intent.error_code},
            )
            return self._record_declined(intent.reservation_id, party, error, actor)
        with UnitOfWork(self.db, readonly=True) as uow:
            return self._outcome(self._locked(uow, intent.reservation_id), party)

    def _record_authorized(
        self,
        reservation_id: str,
        party: Party,
        intent_id: str | None,
        actor: str,
        auto_commit: bool,
    ) -> AuthorizationOutcome:
        release: list[str] = []
        with UnitOfWork(self.db) as uow:
            reservation = self._locked(uow, reservation_id)
            money, now = party_money(reservation, party), self.clock.now()
            due = expiry_target(S(reservation.state), reservation.state_deadline, now)
            if due is not None and money in (Money.NOT_STARTED, Money.PENDING):
                # The card holder finished after the stage's deadline, before the expiry job
                # ran: the reservation expires as it would have, and this money is released.
                _, actions = expire_now(uow, reservation, due, now, self.ttls)
                release.extend(a.id for a in actions)
            state = S(reservation.state)
            if intent_id is not None and state in FINAL_STATES and state is not S.COMMITTED:
                if money in (Money.NOT_STARTED, Money.PENDING, Money.FAILED):
                    # The reservation ended (cancelled, expired) while this authorization was
                    # at the provider, or a declined payment was confirmed again with its
                    # client secret: the money is held for nothing. Record it where every
                    # check looks, and release it.
                    set_money(reservation, party, Money.AUTHORIZED, intent_id)
                    reservation.updated_at = self.clock.now()
                    actions = plan_into(uow, reservation, Failure.OPERATOR_FORCED, now)
                    release.extend(a.id for a in actions)
            elif money in (Money.NOT_STARTED, Money.PENDING) and state not in FINAL_STATES:
                set_money(reservation, party, Money.AUTHORIZED, intent_id)
                details = {"paymentIntentId": intent_id}
                if party is Party.VENDOR:
                    self._move(
                        uow,
                        reservation,
                        S.VENDOR_AUTHORIZED,
                        actor,
                        "vendor deposit authorized",
                        details,
                    )
                    self._move(
                        uow,
                        reservation,
                        S.AWAITING_REQUESTER_AUTH,
                        actor,
                        "awaiting the requester's payment",
                    )
                else:
                    self._move(
                        uow,
                        reservation,
                        S.AUTHORIZED_BOTH,
                        actor,
                        "requester payment authorized",
                        details,
                    )
            uow.commit()
            outcome = self._outcome(reservation, party)
        if release:
            self.compensations.run(ids=release)
            with UnitOfWork(self.db, readonly=True) as uow:
                outcome = self._outcome(self._locked(uow, reservation_id), party)
        if auto_commit and outcome.state == S.AUTHORIZED_BOTH:
            self.commit(reservation_id, actor=actor)
            with UnitOfWork(self.db, readonly=True) as uow:
                outcome = self._outcome(self._locked(uow, reservation_id), party)
        return outcome

    def _record_released(self, reservation_id: str, party: Party) -> bool:
        """The provider says an authorization we are unwinding is cancelled: that is the
        outcome of our pending cancel_authorization, so record it now (the action's own
        retry would learn the same later). False when nothing was being unwound."""
        now = self.clock.now()
        with UnitOfWork(self.db) as uow:
            reservation = self._locked(uow, reservation_id)
            if party_money(reservation, party) is not Money.AUTHORIZED:
                return False
            pending = uow.session.exec(
                select(CompensationAction).where(
                    col(CompensationAction.reservation_id) == reservation_id,
                    col(CompensationAction.party) == party.value,
                    col(CompensationAction.kind) == Action.CANCEL_AUTHORIZATION.value,
                    col(CompensationAction.status) == "pending",
                )
            ).all()
            if not pending:
                return False
            for action in pending:
                action.status, action.completed_at, action.updated_at = "done", now, now
                action.last_error = None
            set_money(reservation, party, Money.RELEASED)
            reservation.updated_at = now
            uow.commit()
        return True

    def _record_declined(
        self, reservation_id: str, party: Party, error: BookijiError, actor: str
    ) -> AuthorizationOutcome:
        target = S.FAILED_VENDOR_AUTH if party is Party.VENDOR else S.FAILED_REQUESTER_AUTH
        intent_id = error.details.get("intentId")
        with UnitOfWork(self.db) as uow:
            reservation = self._locked(uow, reservation_id)
            money = party_money(reservation, party)
            # FAILED but not yet moved: a run that stopped between the two steps; finish it.
            awaited = money in (Money.NOT_STARTED, Money.PENDING, Money.FAILED)
            if not awaited or S(reservation.state) in FINAL_STATES:
                # News about an authorization we no longer wait for (e.g. Stripe's
                # `canceled` after our compensation released it): it changes nothing.
                return self._outcome(reservation, party)
            set_money(reservation, party, Money.FAILED, intent_id)
            uow.commit()
        if S(reservation.state) is not target:
            self.fail(
                reservation_id,
                AUTH_FAILURE[party],
                target=target,
                actor=actor,
                reason=f"{party.value} authorization failed: {error.message}",
                details={"code": error.code, "declineCode": error.details.get("declineCode")},
            )
        if intent_id:
            self._void(reservation_id, party, str(intent_id))
        with UnitOfWork(self.db, readonly=True) as uow:
            return self._outcome(self._locked(uow, reservation_id), party)

    def _void(self, reservation_id: str, party: Party, intent_id: str) -> None:
        """Cancel a declined payment at the provider. Left open, it could still be confirmed
        with its client secret and hold money for a reservation that has failed (were that
        to happen anyway, its news is adopted and released: see `_record_authorized`)."""
        key = f"bkj:{reservation_id}:{party.value}:void_declined"
        try:
            self.gateway.cancel(intent_id, idempotency_key=key)
        except (PaymentDeclined, PaymentProviderError) as exc:
            log.warning(
                "reservation %s: declined payment %s left open at the provider (%s)",
                reservation_id, intent_id, exc.code,
            )  # fmt: skip

    def after_confirmation(self, reservation_id: str, *, actor: str) -> AuthorizationOutcome | None:
        """Once the vendor confirmed: authorize its deposit with its saved payment method.

        A provider outage is not the vendor's answer: the reservation stays in
        CONFIRMED_BY_VENDOR/AWAITING_VENDOR_AUTH and reconciliation tries again."""
        if not self.settings.auto_vendor_authorization:
            return None
        with UnitOfWork(self.db, readonly=True) as uow:
            reservation = self._locked(uow, reservation_id)
            vendor = uow.vendors.get(reservation.vendor_id)
            assert vendor is not None
            ready = S(reservation.state) in (S.CONFIRMED_BY_VENDOR, S.AWAITING_VENDOR_AUTH)
            can_pay = bool(vendor.payment_method_ref) or not reservation.deposit_amount
        if not (ready and can_pay):
            return None
        try:
            return self.authorize(reservation_id, Party.VENDOR.value, actor=actor)
        except Unavailable:
            return None

    # -- the atomic commit -----------------------------------------------------------------------

    def commit(self, reservation_id: str, *, actor: str) -> str:
        """Capture both authorizations and book, or fail with compensation. Returns the state.

        Safe to call again at any point (a crashed commit is resumed, never redone)."""
        # The lease belongs to this call, not to the process: in a daemon the partner's
        # request and the provider's webhook can both reach here for the same reservation.
        claim = f"{self.worker}:{secrets.token_hex(6)}"
        with span("commit", reservation_id=reservation_id) as current:
            with span("commit.claim", reservation_id=reservation_id):
                claimed = self._claim(reservation_id, actor, claim)
            if not claimed:
                with UnitOfWork(self.db, readonly=True) as uow:
                    state = self._locked(uow, reservation_id).state
            else:
                try:
                    state = self._run_commit(reservation_id, actor)
                finally:
                    self._release(reservation_id, claim)
            current.set_attribute("bookiji.state", state)
            return state

    def _lease_name(self, reservation_id: str) -> str:
        return f"commit:{reservation_id}"

    def _claim(self, reservation_id: str, actor: str, claim: str) -> bool:
        """AUTHORIZED_BOTH -> COMMIT_IN_PROGRESS, and this worker's lease on the commit. Past
        AUTHORIZED_BOTH's deadline it expires instead, as the expiry job would have (both
        authorizations released): whether a late commit books must not depend on which of
        the two ran first."""
        now = self.clock.now()
        with UnitOfWork(self.db) as uow:
            reservation = self._locked(uow, reservation_id)
            state = S(reservation.state)
            due = expiry_target(state, reservation.state_deadline, now)
            if state is S.AUTHORIZED_BOTH and due is not None:
                refusal, late = expire_now(uow, reservation, due, now, self.ttls)
                uow.commit()
            else:
                return self._take_lease(uow, reservation, actor, claim, now)
        self.compensations.run(ids=[a.id for a in late])
        raise refusal

    def _take_lease(
        self, uow: UnitOfWork, reservation: Reservation, actor: str, claim: str, now: datetime
    ) -> bool:
        state = S(reservation.state)
        if state is S.COMMITTED or state not in (S.AUTHORIZED_BOTH, S.COMMIT_IN_PROGRESS):
            if (
                state is S.COMMITTED
                or state.value.startswith("FAILED")
                or state in (S.EXPIRED, S.CANCELLED)
            ):
                return False
            raise InvalidTransition(
                f"a reservation commits once both parties authorized; it is {state}",
                details={"state": state.value},
            )
        lease = uow.session.get(JobLease, self._lease_name(reservation.id))
        if lease is not None and lease.expires_at > now and lease.owner != claim:
            return False  # another worker (or thread) is committing it right now
        if lease is None:
            lease = JobLease(name=self._lease_name(reservation.id), owner=claim,
                             acquired_at=now, expires_at=now)  # fmt: skip
            uow.session.add(lease)
        lease.owner, lease.acquired_at = claim, now
        lease.expires_at = now + self.settings.commit_lease
        self._move(uow, reservation, S.COMMIT_IN_PROGRESS, actor, "committing")
        uow.commit()
        return True

    def _release(self, reservation_id: str, claim: str) -> None:
        with UnitOfWork(self.db) as uow:
            lease = uow.session.get(JobLease, self._lease_name(reservation_id))
            if lease is not None and lease.owner == claim:
                uow.session.delete(lease)
                uow.commit()

    def _operation(self, reservation_id: str, party: Party, kind: str) -> PaymentOperation | None:
        with UnitOfWork(self.db, readonly=True) as uow:
            return uow.session.exec(
                select(PaymentOperation).where(
                    col(PaymentOperation.idempotency_key)
                    == operation_key(reservation_id, party, kind)
                )
            ).first()

    def _run_commit(self, reservation_id: str, actor: str) -> str:
        with UnitOfWork(self.db, readonly=True) as uow:
            reservation = self._locked(uow, reservation_id)
        if S(reservation.state) is not S.COMMIT_IN_PROGRESS:
            return reservation.state
        if self._operation(reservation_id, Party.VENDOR, "capture") is None:
            with span("commit.revalidate", reservation_id=reservation_id):
                verdict = self._revalidate(reservation)
            if verdict is not None:
                self.fail(
                    reservation_id,
                    Failure.AVAILABILITY_CHANGED,
                    target=S.FAILED_AVAILABILITY_CHANGED,
                    actor=actor,
                    reason=f"availability changed before commit: {verdict}",
                )
                return S.FAILED_AVAILABILITY_CHANGED.value
        for party, failure in (
            (Party.VENDOR, Failure.VENDOR_CAPTURE_FAILED),
            (Party.REQUESTER, Failure.REQUESTER_CAPTURE_FAILED),
        ):
            with span(f"commit.capture_{party.value}", reservation_id=reservation_id):
                error = self._capture(reservation_id, party)
            if error is not None:
                if isinstance(error, PaymentProviderError) and error.retryable:
                    raise Unavailable(
                        f"the payment provider is not answering; the commit resumes later "
                        f"({error.message})",
                        details={"reservationId": reservation_id},
                    )
                self.fail(
                    reservation_id,
                    failure,
                    target=S.FAILED_COMMIT,
                    actor=actor,
                    reason=f"{party.value} capture failed: {error.message}",
                    details={"code": error.code},
                )
                return S.FAILED_COMMIT.value
        crashpoint("before_finalize")
        with span("commit.finalize", reservation_id=reservation_id):
            return self._finalize(reservation_id, actor)

    def _revalidate(self, reservation: Reservation) -> str | None:
        """None if the slot is still bookable on fresh data, else why not."""
        if self.calendars is not None:
            for connection in self.calendars.connections(reservation.vendor_id):
                synced = self.calendars.sync_one(connection.id)
                if synced.status != "ok":
                    # Judged on its last good busy times: a calendar outage must not stop
                    # every booking (the hold was checked on them too); say so where the
                    # operator, already alerted to the failing sync, will look.
                    log.warning(
                        "reservation %s: commit revalidated on calendar %s's last good data "
                        "(sync failed: %s)", reservation.id, connection.id, synced.error,
                    )  # fmt: skip
        with UnitOfWork(self.db, readonly=True) as uow:
            vendor = uow.vendors.get(reservation.vendor_id)
            assert vendor is not None
            minutes = (reservation.slot_end - reservation.slot_start) // timedelta(minutes=1)
            schedule = load_schedule(
                uow, vendor, reservation.slot_start, reservation.slot_end,
                slot_minutes=minutes, exclude_reservation=reservation.id, margin=timedelta(0),
            )  # fmt: skip
        # Notice and horizon were met when the slot was held; judge them as of then.
        # Kept in the log the partner reads: in the partner's words, no event titles.
        verdict = check_bookable(
            schedule,
            reservation.slot_start,
            now=reservation.created_at,
            audience=Audience(partner_id=reservation.partner_id),
        )
        if verdict.bookable:
            return None
        return "; ".join(f.message for f in verdict.findings)

    def _capture(self, reservation_id: str, party: Party) -> BookijiError | None:
        with UnitOfWork(self.db, readonly=True) as uow:
            reservation = self._locked(uow, reservation_id)
        money = party_money(reservation, party)
        ref = party_ref(reservation, party)
        if money is Money.CAPTURED or (money is Money.AUTHORIZED and ref is None):
            if ref is None:
                self._record_captured(reservation_id, party)
            return None
        if money is not Money.AUTHORIZED or ref is None:
            return PaymentProviderError(f"{party.value} money is {money}", retryable=False)
        previous = self._operation(reservation_id, party, "capture")
        op = self._begin_operation(
            reservation_id, party, "capture", party_amount(reservation, party)
        )
        crashpoint(f"before_{party.value}_capture")
        try:
            if previous is not None and previous.status == "started":
                # A crash left the outcome unknown: ask before acting (and if the capture did
                # happen, sending the same key again would only replay it anyway).
                current = self.gateway.retrieve(ref)
                if current.status == "succeeded":
                    self._finish_operation(op.id, "succeeded", intent_id=ref)
                    self._record_captured(reservation_id, party)
                    return None
            intent = self.gateway.capture(ref, idempotency_key=op.idempotency_key)
        except (PaymentDeclined, PaymentProviderError) as exc:
            if not getattr(exc, "retryable", False):
                self._finish_operation(op.id, "failed", intent_id=ref, error=exc)
            return exc
        crashpoint(f"after_{party.value}_capture")
        self._finish_operation(op.id, "succeeded", intent_id=intent.id)
        self._record_captured(reservation_id, party)
        return None

    def _record_captured(self, reservation_id: str, party: Party) -> None:
        with UnitOfWork(self.db) as uow:
            reservation = self._locked(uow, reservation_id)
            set_money(reservation, party, Money.CAPTURED)
            reservation.updated_at = self.clock.now()
            uow.commit()

    def _finalize(self, reservation_id: str, actor: str) -> str:
        now = self.clock.now()
        with UnitOfWork(self.db) as uow:
            reservation = self._locked(uow, reservation_id)
            if S(reservation.state) is S.COMMITTED:
                return reservation.state
            uow.session.add(
                Booking(
                    id=new_id("bkg"),
                    reservation_id=reservation.id,
                    vendor_id=reservation.vendor_id,
                    requester_id=reservation.requester_id,
                    slot_start=reservation.slot_start,
                    slot_end=reservation.slot_end,
                    currency=reservation.currency,
                    price_amount=reservation.price_amount,
                    deposit_amount=reservation.deposit_amount,
                    created_at=now,
                )
            )
            self._move(uow, reservation, S.COMMITTED, actor, "both captured; booked")
            uow.commit()
            return reservation.state

    # -- operators ---------------------------------------------------------------------------------

    def compensation_preview(self, reservation_id: str, *, refund: bool) -> list[dict[str, Any]]:
        """What `force_compensate` would do, without doing it."""
        reservation = self._compensable(reservation_id, refund=refund)
        steps = plan(Failure.OPERATOR_FORCED, *self._held(reservation))
        return [
            {"party": s.party.value, "action": s.action.value,
             "paymentIntentId": party_ref(reservation, s.party)}
            for s in steps
        ]  # fmt: skip

    def _compensable(self, reservation_id: str, *, refund: bool) -> Reservation:
        """The reservation, unless forcing would refund a booking nobody asked to refund."""
        with UnitOfWork(self.db, readonly=True) as uow:
            reservation = self._locked(uow, reservation_id)
        if S(reservation.state) is S.COMMITTED and not refund:
            raise InvalidTransition(
                "the reservation is COMMITTED: compensating it refunds both parties; "
                "pass --refund to do that",
                details={"state": reservation.state},
            )
        return reservation

    def _held(self, reservation: Reservation) -> tuple[Money, Money]:
        """(vendor, requester) money an operator's unwind must undo: what the row says, or
        what the provider still holds where the row says nothing is held (an authorization
        the workflow lost track of, that the money sweep flags), so forcing releases it."""
        held = []
        for party in (Party.VENDOR, Party.REQUESTER):
            money, ref = party_money(reservation, party), party_ref(reservation, party)
            if money not in LIVE and ref is not None:
                try:
                    seen = money_of(self.gateway.retrieve(ref))
                except PaymentProviderError as exc:
                    raise provider_down(exc, {"paymentIntentId": ref}) from None
                money = seen if seen in LIVE else money
            held.append(money)
        return held[0], held[1]

    def force_compensate(self, reservation_id: str, *, refund: bool, actor: str) -> list[str]:
        """Unwind a reservation an operator judges stuck: fail it (if not final) and release
        or refund every live authorization or capture. Safe to run twice."""
        seen = self._compensable(reservation_id, refund=refund)
        held = self._held(seen)  # may ask the provider: outside any transaction
        now = self.clock.now()
        with UnitOfWork(self.db) as uow:
            reservation = self._locked(uow, reservation_id)
            state = S(reservation.state)
            if state is S.COMMIT_IN_PROGRESS:
                self._move(
                    uow, reservation, S.FAILED_COMMIT, actor, "compensation forced by operator"
                )
            elif S.CANCELLED in TRANSITIONS[state]:
                self._move(uow, reservation, S.CANCELLED, actor, "compensation forced by operator")
            # The row's own money where it says something is held (it may have moved since
            # `held` was read), else the provider's.
            recorded = (party_money(reservation, Party.VENDOR),
                        party_money(reservation, Party.REQUESTER))  # fmt: skip
            held = (
                recorded[0] if recorded[0] in LIVE else held[0],
                recorded[1] if recorded[1] in LIVE else held[1],
            )
            actions = plan_into(uow, reservation, Failure.OPERATOR_FORCED, now, held)
            uow.commit()
        with UnitOfWork(self.db, readonly=True) as uow:
            pending = uow.session.exec(
                select(CompensationAction.id).where(
                    col(CompensationAction.reservation_id) == reservation_id,
                    col(CompensationAction.status) == "pending",
                )
            ).all()
        self.compensations.run(ids=list(pending))
        return [a.id for a in actions]
