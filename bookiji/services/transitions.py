"""The one place a reservation changes state.

State, log row and outbox event are written in the caller's transaction, so either all
three are committed or none is. Every other service goes through `apply` (`apply_many` for a
batch); a new hold plans its first steps with `plan_birth` and inserts them with its row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import StaleDataError

from bookiji.domain.states import (
    PlannedTransition,
    ReservationState,
    StageTTLs,
    initial_transition,
    is_active,
    plan_transition,
)
from bookiji.domain.timeutil import format_instant
from bookiji.services.ids import new_id
from bookiji.store.models import OutboxEvent, Reservation, ReservationTransition
from bookiji.store.repositories import StateUpdate
from bookiji.store.uow import UnitOfWork


def event_type(state: ReservationState) -> str:
    return f"reservation.{state.value.lower()}"


@dataclass(frozen=True)
class Owner:
    """Whose transition it is: what the log row and the event name."""

    reservation_id: str
    vendor_id: str
    partner_id: str | None

    @classmethod
    def of(cls, reservation: Reservation) -> Owner:
        return cls(reservation.id, reservation.vendor_id, reservation.partner_id)


def _rows(
    owner: Owner,
    planned: PlannedTransition,
    *,
    now: datetime,
    reason: str,
    actor: str,
    details: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The log row and the outbox event of one transition."""
    from_state = planned.from_state.value if planned.from_state else None
    log_row = {
        "reservation_id": owner.reservation_id,
        "from_state": from_state,
        "to_state": planned.to_state.value,
        "reason": reason,
        "actor": actor,
        "at": now,
        "details": details or {},
    }
    event = {
        "event_id": new_id("evt"),
        "type": event_type(planned.to_state),
        "reservation_id": owner.reservation_id,
        "partner_id": owner.partner_id,
        "payload": {
            "reservationId": owner.reservation_id,
            "vendorId": owner.vendor_id,
            "from": from_state,
            "to": planned.to_state.value,
            "reason": reason,
            "at": format_instant(now),
            "stateDeadline": format_instant(planned.deadline),
        },
        "created_at": now,
    }
    return log_row, event


def _record(uow: UnitOfWork, rows: tuple[dict[str, Any], dict[str, Any]]) -> None:
    log_row, event = rows
    uow.transitions.add(ReservationTransition(**log_row))
    uow.outbox.add(OutboxEvent(**event))


def apply(
    uow: UnitOfWork,
    reservation: Reservation,
    target: ReservationState,
    *,
    now: datetime,
    ttls: StageTTLs,
    reason: str,
    actor: str,
    details: dict[str, Any] | None = None,
) -> bool:
    """Move `reservation` to `target`. False when it already is there (idempotent retry).

    Raises InvalidTransition for a move the table does not allow. The version column makes
    the UPDATE fail if another writer changed the row after we read it.
    """
    planned = plan_transition(
        ReservationState(reservation.state),
        target,
        now=now,
        deadline=reservation.state_deadline,
        ttls=ttls,
    )
    if planned is None:
        return False
    if is_active(planned.to_state) != is_active(ReservationState(reservation.state)):
        uow.touch_schedule(reservation.vendor_id)
    reservation.state = planned.to_state.value
    reservation.state_deadline = planned.deadline
    reservation.updated_at = now
    owner = Owner.of(reservation)
    _record(uow, _rows(owner, planned, now=now, reason=reason, actor=actor, details=details))
    return True


@dataclass(frozen=True)
class Step:
    """One transition of a path planned before its reservation exists."""

    target: ReservationState
    reason: str
    actor: str
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class Birth:
    """Where a new reservation's first transitions leave it, with their log rows and events."""

    state: ReservationState
    deadline: datetime | None
    logs: list[dict[str, Any]]
    events: list[dict[str, Any]]


def plan_birth(
    owner: Owner,
    steps: Sequence[Step],
    *,
    now: datetime,
    ttls: StageTTLs,
    after: Birth | None = None,
) -> Birth:
    """nothing -> INTENT_CREATED -> each step's target (or on from `after`), checked against
    the table and computed in memory, so a new reservation is inserted once, in its final
    state, with all its log rows and events (a hold's hot path)."""
    if after is None:
        first, *rest = steps
        if first.target is not ReservationState.INTENT_CREATED:
            raise ValueError("a reservation's life starts in INTENT_CREATED")
        planned = initial_transition(now=now, ttls=ttls)
        log_row, event = _rows(owner, planned, now=now, reason=first.reason, actor=first.actor,
                               details=first.details)  # fmt: skip
        after = Birth(planned.to_state, planned.deadline, [log_row], [event])
        steps = rest
    state, deadline = after.state, after.deadline
    logs, events = list(after.logs), list(after.events)
    for step in steps:
        moved = plan_transition(state, step.target, now=now, deadline=deadline, ttls=ttls)
        if moved is None:
            continue
        state, deadline = moved.to_state, moved.deadline
        log_row, event = _rows(
            owner, moved, now=now, reason=step.reason, actor=step.actor, details=step.details
        )
        logs.append(log_row)
        events.append(event)
    return Birth(state, deadline, logs, events)


@dataclass(frozen=True)
class Move:
    reservation: Reservation
    target: ReservationState
    reason: str


def apply_many(
    uow: UnitOfWork, moves: Sequence[Move], *, now: datetime, ttls: StageTTLs, actor: str
) -> list[Move]:
    """`apply` for a batch (the expiry sweep): the same table, the same rows, but the log
    rows and events go in with one multi-row INSERT each. Returns the moves that happened."""
    logs: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    updates: list[StateUpdate] = []
    done: list[Move] = []
    for move in moves:
        reservation = move.reservation
        planned = plan_transition(
            ReservationState(reservation.state),
            move.target,
            now=now,
            deadline=reservation.state_deadline,
            ttls=ttls,
        )
        if planned is None:
            continue
        if is_active(planned.to_state) != is_active(ReservationState(reservation.state)):
            uow.touch_schedule(reservation.vendor_id)
        assert reservation.version is not None
        updates.append(
            StateUpdate(reservation.id, reservation.version, planned.to_state.value,
                        planned.deadline)
        )  # fmt: skip
        # What the UPDATE below writes, as the session's committed view of a row it tracks
        # (the sweep's rows are read detached, and not read again).
        if inspect(reservation, raiseerr=False) is not None:
            for name, value in (("state", planned.to_state.value),
                                ("state_deadline", planned.deadline), ("updated_at", now),
                                ("version", reservation.version + 1)):  # fmt: skip
                set_committed_value(reservation, name, value)
        log_row, event = _rows(
            Owner.of(reservation), planned, now=now, reason=move.reason, actor=actor, details=None
        )
        logs.append(log_row)
        events.append(event)
        done.append(move)
    if done:
        # One statement for the whole batch, each row still checked against the version
        # it was read at (the sweep also holds the rows locked).
        changed = uow.reservations.set_states(updates, now=now)
        if changed != len(updates):
            raise StaleDataError(
                f"{len(updates) - changed} of {len(updates)} reservations "
                "changed while the batch was being applied"
            )
        uow.insert(ReservationTransition, logs)
        uow.insert(OutboxEvent, events)
    return done
