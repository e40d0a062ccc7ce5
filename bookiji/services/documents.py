"""The JSON documents partners and operators read: one shape for the API and `--json`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Protocol

from sqlmodel import col, select

from bookiji.domain.errors import NotFound
from bookiji.domain.timeutil import format_instant
from bookiji.store.database import Database
from bookiji.store.models import (
    CompensationAction,
    Reservation,
    Vendor,
    VendorNotificationRow,
)
from bookiji.store.uow import UnitOfWork


def _party(amount: int, state: str, reference: str | None) -> dict[str, Any]:
    return {"amount": amount, "state": state, "paymentIntentId": reference}


class ReservationView(Protocol):
    """What a document reads of a reservation: a stored row, or a new hold's fields before
    anything is read back (the hold answers from memory)."""

    @property
    def id(self) -> str: ...
    @property
    def vendor_id(self) -> str: ...
    @property
    def requester_id(self) -> str: ...
    @property
    def requester_contact(self) -> dict[str, Any] | None: ...
    @property
    def partner_id(self) -> str | None: ...
    @property
    def state(self) -> str: ...
    @property
    def state_deadline(self) -> datetime | None: ...
    @property
    def slot_start(self) -> datetime: ...
    @property
    def slot_end(self) -> datetime: ...
    @property
    def block_start(self) -> datetime: ...
    @property
    def block_end(self) -> datetime: ...
    @property
    def currency(self) -> str: ...
    @property
    def deposit_amount(self) -> int: ...
    @property
    def vendor_payment_state(self) -> str: ...
    @property
    def vendor_payment_ref(self) -> str | None: ...
    @property
    def price_amount(self) -> int: ...
    @property
    def requester_payment_state(self) -> str: ...
    @property
    def requester_payment_ref(self) -> str | None: ...
    @property
    def meta(self) -> dict[str, Any]: ...
    @property
    def cancel_note(self) -> str | None: ...
    @property
    def idempotency_key(self) -> str | None: ...
    @property
    def version(self) -> int | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


class StepView(Protocol):
    @property
    def from_state(self) -> str | None: ...
    @property
    def to_state(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def reason(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def details(self) -> dict[str, Any]: ...


class NotificationView(Protocol):
    @property
    def channel(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def next_attempt_at(self) -> datetime | None: ...
    @property
    def sent_at(self) -> datetime | None: ...


def view(row: dict[str, Any]) -> Any:
    """A row not read back from the database, seen through the attributes a document reads."""
    return SimpleNamespace(**row)


def reservation_document(
    reservation: ReservationView,
    history: Sequence[StepView],
    compensations: Sequence[CompensationAction] = (),
    notifications: Sequence[NotificationView] = (),
) -> dict[str, Any]:
    """`GET /v1/reservations/{id}`: camelCase, RFC 3339 UTC times, full state history."""
    return {
        "reservationId": reservation.id,
        "vendorId": reservation.vendor_id,
        "requesterId": reservation.requester_id,
        "requester": reservation.requester_contact,
        "partnerId": reservation.partner_id,
        "state": reservation.state,
        "stateDeadline": format_instant(reservation.state_deadline),
        "expiresAt": format_instant(reservation.state_deadline),
        "slotStartTime": format_instant(reservation.slot_start),
        "slotEndTime": format_instant(reservation.slot_end),
        "blockStartTime": format_instant(reservation.block_start),
        "blockEndTime": format_instant(reservation.block_end),
        "payment": {
            "currency": reservation.currency,
            "vendorDeposit": _party(
                reservation.deposit_amount,
                reservation.vendor_payment_state,
                reservation.vendor_payment_ref,
            ),
            "requesterPayment": _party(
                reservation.price_amount,
                reservation.requester_payment_state,
                reservation.requester_payment_ref,
            ),
        },
        "compensationActions": [
            {
                "id": action.id,
                "party": action.party,
                "action": action.kind,
                "amount": action.amount,
                "status": action.status,
                "attempts": action.attempts,
                "lastError": action.last_error,
                "nextAttemptAt": format_instant(action.next_attempt_at)
                if action.status == "pending"
                else None,
                "completedAt": format_instant(action.completed_at),
            }
            for action in compensations
        ],
        "vendorNotifications": [
            {
                "channel": note.channel,
                "status": note.status,
                "attempts": note.attempts,
                "lastError": note.last_error,
                "nextAttemptAt": format_instant(note.next_attempt_at),
                "sentAt": format_instant(note.sent_at),
            }
            for note in notifications
        ],
        "metadata": reservation.meta,
        "cancelNote": reservation.cancel_note,
        "idempotencyKey": reservation.idempotency_key,
        "version": reservation.version,
        "createdAt": format_instant(reservation.created_at),
        "updatedAt": format_instant(reservation.updated_at),
        "stateHistory": [
            {
                "from": step.from_state,
                "to": step.to_state,
                "at": format_instant(step.at),
                "reason": step.reason,
                "actor": step.actor,
                "details": step.details,
            }
            for step in history
        ],
    }


def load_reservation_document(
    db: Database, reservation_id: str, *, partner_id: str | None = None
) -> dict[str, Any]:
    """Read one reservation as its document. Another partner's reservation is 'not found'."""
    with UnitOfWork(db, readonly=True) as uow:
        reservation = uow.reservations.get(reservation_id)
        if reservation is None or (partner_id is not None and reservation.partner_id != partner_id):
            raise NotFound(
                f"no reservation {reservation_id!r}", details={"reservationId": reservation_id}
            )
        return document_within(uow, reservation)


def document_within(uow: UnitOfWork, reservation: Reservation) -> dict[str, Any]:
    """The document as the caller's transaction sees it (flushed rows included)."""
    compensations = uow.session.exec(
        select(CompensationAction)
        .where(col(CompensationAction.reservation_id) == reservation.id)
        .order_by(col(CompensationAction.created_at), col(CompensationAction.id))
    ).all()
    notifications = uow.session.exec(
        select(VendorNotificationRow)
        .where(col(VendorNotificationRow.reservation_id) == reservation.id)
        .order_by(col(VendorNotificationRow.created_at), col(VendorNotificationRow.channel))
    ).all()
    return reservation_document(
        reservation,
        uow.transitions.for_reservation(reservation.id),
        compensations,
        notifications,
    )


def reservation_summary(reservation: Reservation) -> dict[str, Any]:
    """A row of `reservations list --json`."""
    return {
        "reservationId": reservation.id,
        "vendorId": reservation.vendor_id,
        "requesterId": reservation.requester_id,
        "partnerId": reservation.partner_id,
        "state": reservation.state,
        "stateDeadline": format_instant(reservation.state_deadline),
        "slotStartTime": format_instant(reservation.slot_start),
        "slotEndTime": format_instant(reservation.slot_end),
        "createdAt": format_instant(reservation.created_at),
    }


def vendor_document(vendor: Vendor, calendars: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "vendorId": vendor.id,
        "name": vendor.name,
        "timezone": vendor.timezone,
        "slotMinutes": vendor.slot_minutes,
        "slotIntervalMinutes": vendor.slot_interval_minutes,
        "bufferBeforeMinutes": vendor.buffer_before_minutes,
        "bufferAfterMinutes": vendor.buffer_after_minutes,
        "minNoticeMinutes": vendor.min_notice_minutes,
        "maxAdvanceDays": vendor.max_advance_days,
        "currency": vendor.currency,
        "price": vendor.price,
        "deposit": vendor.deposit,
        "hours": vendor.hours,
        "overrides": vendor.overrides,
        "calendars": list(calendars),
        "createdAt": format_instant(vendor.created_at),
        "updatedAt": format_instant(vendor.updated_at),
    }
