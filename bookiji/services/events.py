"""An outbox event's `data` as partners read it, from webhooks and from `GET /v1/events`.

The outbox keeps what a transition wrote, in plain JSON, and is never erased. A cancel's free
text therefore is not in it: the `reservation.cancelled` event gains `cancelNote` when it is
read, from the reservation's sealed `cancel_note`. After `requesters forget` the note is
null, whether the event is sent, retried, replayed or polled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlmodel import Session, col, select

from bookiji.domain.states import ReservationState
from bookiji.services.transitions import event_type
from bookiji.store.models import OutboxEvent, Reservation

CANCELLED_EVENT = event_type(ReservationState.CANCELLED)


def cancel_notes(session: Session, events: Iterable[OutboxEvent]) -> dict[str, str | None]:
    """The notes of the reservations whose cancel is among `events` (one query)."""
    ids = {e.reservation_id for e in events if e.type == CANCELLED_EVENT and e.reservation_id}
    if not ids:
        return {}
    rows = session.exec(
        select(Reservation.id, Reservation.cancel_note).where(col(Reservation.id).in_(ids))
    ).all()
    return {rid: note for rid, note in rows}


def event_data(event: OutboxEvent, notes: Mapping[str, str | None]) -> dict[str, Any]:
    """The event's stored payload; a cancel's with its note (null when none or erased)."""
    if event.type != CANCELLED_EVENT:
        return event.payload
    note = notes.get(event.reservation_id) if event.reservation_id else None
    return {**event.payload, "cancelNote": note}
