"""Compensation: planned in the transaction that records a failure, executed afterwards.

`plan_into` writes one `compensation_actions` row per step of the matrix (domain/
compensation.py) for the money that actually exists, in the caller's transaction, so a
failure can never be recorded without its clean-up. `CompensationRunner` executes pending
rows against the payment provider, each with its own deterministic idempotency key, and
retries with backoff until done; an action the provider refuses for good is marked
`failed` and stays visible to operators.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, or_, select

from bookiji.domain.compensation import Action, Failure, Money, Party, money_after, plan
from bookiji.domain.errors import PaymentDeclined, PaymentProviderError
from bookiji.services.clock import Clock
from bookiji.services.ids import new_id
from bookiji.services.ports import IntentView, PaymentGateway
from bookiji.store.database import Database
from bookiji.store.models import CompensationAction, Reservation
from bookiji.store.uow import UnitOfWork

MAX_BACKOFF = timedelta(hours=1)


def party_money(reservation: Reservation, party: Party) -> Money:
    raw = (
        reservation.vendor_payment_state
        if party is Party.VENDOR
        else reservation.requester_payment_state
    )
    return Money(raw)


def party_ref(reservation: Reservation, party: Party) -> str | None:
    return (
        reservation.vendor_payment_ref
        if party is Party.VENDOR
        else reservation.requester_payment_ref
    )


def party_amount(reservation: Reservation, party: Party) -> int:
    """What the party pays: the vendor its deposit, the requester the price."""
    return reservation.deposit_amount if party is Party.VENDOR else reservation.price_amount


def money_of(intent: IntentView) -> Money:
    """What a provider's intent means for the party's money."""
    if intent.status == "requires_capture":
        return Money.AUTHORIZED
    if intent.status == "requires_action":
        return Money.PENDING
    if intent.status == "succeeded":
        if intent.amount_refunded >= intent.amount_received:
            return Money.REFUNDED
        return Money.CAPTURED
    if intent.status == "canceled":
        return Money.RELEASED
    return Money.FAILED


def set_money(reservation: Reservation, party: Party, money: Money, ref: str | None = None) -> None:
    if party is Party.VENDOR:
        reservation.vendor_payment_state = money.value
        if ref is not None:
            reservation.vendor_payment_ref = ref
    else:
        reservation.requester_payment_state = money.value
        if ref is not None:
            reservation.requester_payment_ref = ref


def action_key(reservation_id: str, party: Party, action: Action) -> str:
    return f"bkj:{reservation_id}:{party.value}:{action.value}"


def plan_into(
    uow: UnitOfWork,
    reservation: Reservation,
    failure: Failure,
    now: datetime,
    held: tuple[Money, Money] | None = None,
) -> list[CompensationAction]:
    """Add the compensation rows `failure` calls for; existing rows are not duplicated.
    `held`: (vendor, requester) money to unwind when it is not what the row records."""
    vendor, requester = held or (
        party_money(reservation, Party.VENDOR),
        party_money(reservation, Party.REQUESTER),
    )
    steps = plan(failure, vendor, requester)
    created = []
    for step in steps:
        key = action_key(reservation.id, step.party, step.action)
        exists = uow.session.exec(
            select(CompensationAction).where(col(CompensationAction.idempotency_key) == key)
        ).first()
        if exists is not None:
            continue
        amount = party_amount(reservation, step.party)
        action = CompensationAction(
            id=new_id("cmp"),
            reservation_id=reservation.id,
            kind=step.action.value,
            party=step.party.value,
            amount=amount,
            currency=reservation.currency,
            status="pending",
            idempotency_key=key,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        uow.session.add(action)
        created.append(action)
    return created


@dataclass(frozen=True)
class ActionResult:
    action_id: str
    reservation_id: str
    kind: str
    party: str
    status: str
    error: str | None = None


def _reached(action: Action, intent: IntentView) -> bool:
    """Whether the provider's intent already shows what the action wants."""
    if action is Action.CANCEL_AUTHORIZATION:
        return intent.status in ("canceled", "requires_payment_method")
    return intent.status == "succeeded" and intent.amount_refunded >= intent.amount_received


class CompensationRunner:
    def __init__(self, db: Database, clock: Clock, gateway: PaymentGateway) -> None:
        self.db = db
        self.clock = clock
        self.gateway = gateway

    def due(self, *, limit: int = 100, ids: Sequence[str] | None = None) -> list[str]:
        now = self.clock.now()
        with UnitOfWork(self.db, readonly=True) as uow:
            stmt = select(CompensationAction.id).where(col(CompensationAction.status) == "pending")
            if ids is not None:
                stmt = stmt.where(col(CompensationAction.id).in_(list(ids)))
            else:
                stmt = stmt.where(
                    or_(
                        col(CompensationAction.next_attempt_at).is_(None),
                        col(CompensationAction.next_attempt_at) <= now,
                    )
                )
            stmt = stmt.order_by(col(CompensationAction.created_at)).limit(limit)
            return list(uow.session.exec(stmt).all())

    def run(self, *, limit: int = 100, ids: Sequence[str] | None = None) -> list[ActionResult]:
        return [self.run_one(action_id) for action_id in self.due(limit=limit, ids=ids)]

    def run_one(self, action_id: str) -> ActionResult:
        with UnitOfWork(self.db) as uow:
            action = uow.session.get(CompensationAction, action_id)
            assert action is not None
            reservation = uow.reservations.get(action.reservation_id)
            assert reservation is not None
            if action.status != "pending":
                return self._result(action)
            action.attempts += 1
            action.updated_at = self.clock.now()
            uow.commit()
        party, kind = Party(action.party), Action(action.kind)
        ref = party_ref(reservation, party)
        error: str | None = None
        outcome = "done"
        if ref is not None:
            try:
                if kind is Action.CANCEL_AUTHORIZATION:
                    self.gateway.cancel(ref, idempotency_key=action.idempotency_key)
                else:
                    self.gateway.refund(ref, idempotency_key=action.idempotency_key)
            except (PaymentDeclined, PaymentProviderError) as exc:
                error = exc.message
                retryable = getattr(exc, "retryable", False)
                outcome = "retry" if retryable else "check"
            if outcome == "check":  # refused: maybe because it already happened
                try:
                    outcome = "done" if _reached(kind, self.gateway.retrieve(ref)) else "failed"
                except PaymentProviderError as exc:
                    outcome, error = ("retry" if exc.retryable else "failed"), exc.message
        return self._record(action_id, outcome, error)

    def _record(self, action_id: str, outcome: str, error: str | None) -> ActionResult:
        now = self.clock.now()
        with UnitOfWork(self.db) as uow:
            action = uow.session.get(CompensationAction, action_id)
            assert action is not None
            # The reservation's row first, then the action's: the order every writer of both
            # uses (the provider's webhook completing a release does too), so none deadlock.
            reservation = uow.reservations.get(action.reservation_id, for_update=True)
            assert reservation is not None
            action.updated_at = now
            action.last_error = error
            if outcome == "done":
                action.status = "done"
                action.completed_at = now
                set_money(reservation, Party(action.party), money_after(Action(action.kind)))
                reservation.updated_at = now
            elif outcome == "retry":
                action.next_attempt_at = now + min(
                    MAX_BACKOFF, timedelta(seconds=5 * 2 ** min(action.attempts, 12))
                )
            else:
                action.status = "failed"
            uow.commit()
            return self._result(action)

    @staticmethod
    def _result(action: CompensationAction) -> ActionResult:
        return ActionResult(
            action.id,
            action.reservation_id,
            action.kind,
            action.party,
            action.status,
            action.last_error,
        )


def actions_for(db: Database, reservation_id: str) -> list[CompensationAction]:
    with UnitOfWork(db, readonly=True) as uow:
        return list(
            uow.session.exec(
                select(CompensationAction)
                .where(col(CompensationAction.reservation_id) == reservation_id)
                .order_by(col(CompensationAction.created_at), col(CompensationAction.id))
            ).all()
        )
