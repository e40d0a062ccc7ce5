"""Queries, one class per aggregate. Services call these; they never write SQL themselves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import Select, and_, bindparam, delete, func, text, update
from sqlalchemy import select as sa_select
from sqlalchemy.orm import configure_mappers
from sqlmodel import Session, SQLModel, col, select

from bookiji.domain.states import ACTIVE_STATES
from bookiji.store.models import (
    EXPIRABLE_PREDICATE,
    IdempotencyKey,
    OutboxEvent,
    Reservation,
    ReservationTransition,
    Vendor,
)

_ACTIVE = sorted(s.value for s in ACTIVE_STATES)


EXPIRY_INDEX = "ix_reservations_expiry_due"
_M = TypeVar("_M", bound=SQLModel)


_RESERVATIONS = Reservation.__table__  # type: ignore[attr-defined]
#: Expiring needs none of the requester's sealed data: not read, not decrypted, row by row.
_UNSEALED = [c for c in _RESERVATIONS.c if c.name not in ("metadata", "requester_contact")]


def due_for_expiry_query(now: datetime, limit: int) -> Select[Any]:
    """Postgres reads it from the partial index of expirable deadlines, oldest first, and
    stops at `limit`; SQLite reads each state's due range of (state, state_deadline)."""
    return (
        sa_select(*_UNSEALED)
        .where(
            text(EXPIRABLE_PREDICATE),  # as the partial index says, literally
            _RESERVATIONS.c.state_deadline <= now,
        )
        .order_by(_RESERVATIONS.c.state_deadline)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


_VENDORS = Vendor.__table__  # type: ignore[attr-defined]
_BUMP_ONE = (
    update(_VENDORS)
    .where(_VENDORS.c.id == bindparam("vendor"))
    .values(schedule_version=_VENDORS.c.schedule_version + 1)
)

_BUMP_MANY = (
    update(_VENDORS)
    .where(_VENDORS.c.id.in_(bindparam("vendors", expanding=True)))
    .values(schedule_version=_VENDORS.c.schedule_version + 1)
)

_VENDOR_ROW = sa_select(_VENDORS).where(_VENDORS.c.id == bindparam("vendor"))

#: What a cached availability answer is checked against on every read.
VERSION_AND_NOTICE = sa_select(_VENDORS.c.schedule_version, _VENDORS.c.min_notice_minutes).where(
    _VENDORS.c.id == bindparam("vendor")
)


def _detached(model: type[_M], values: Mapping[str, Any]) -> _M:
    """A model built from a row without the session: read-only, never flushed, at a fraction
    of an ORM load's cost. Mappers are configured first (a fresh process may not have used
    the ORM yet; cheap once done)."""
    configure_mappers()
    return cast(_M, model.model_construct(**values))


class VendorRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, vendor_id: str, *, for_update: bool = False) -> Vendor | None:
        """`for_update`: lock the row until the transaction ends (Postgres; SQLite's write
        transactions are serialised whole), for a check-then-insert under this vendor."""
        return self.session.get(Vendor, vendor_id, with_for_update=True if for_update else None)

    def lock(self, vendor_ids: Sequence[str]) -> None:
        """Lock these vendors' rows (those that exist) until the transaction ends, in id order
        (a stable lock order), 500 to a statement; they stay loaded in the session."""
        ordered = sorted(set(vendor_ids))
        for first in range(0, len(ordered), 500):
            self.session.exec(
                select(Vendor)
                .where(col(Vendor.id).in_(ordered[first : first + 500]))
                .order_by(col(Vendor.id))
                .with_for_update()
            ).all()

    def read(self, vendor_id: str) -> Vendor | None:
        """The vendor as stored, outside the session's identity map: for a path that reads
        its rules and never changes it (a hold), at a fraction of an ORM load's cost."""
        row = self.session.connection().execute(_VENDOR_ROW, {"vendor": vendor_id}).first()
        return None if row is None else _detached(Vendor, dict(row._mapping))

    def add(self, vendor: Vendor) -> None:
        self.session.add(vendor)

    def list(self) -> Sequence[Vendor]:
        return self.session.exec(select(Vendor).order_by(col(Vendor.id))).all()

    def bump_schedule_version(self, vendor_id: str) -> None:
        self.bump_schedule_versions([vendor_id])

    def bump_schedule_versions(self, vendor_ids: Sequence[str]) -> None:
        """One statement per 500 vendors, in id order (a stable lock order), so a sweep that
        touches thousands of vendors does not pay a round trip for each."""
        ordered = sorted(set(vendor_ids))
        if len(ordered) == 1:  # every hold: a plain statement, built once
            self.session.connection().execute(_BUMP_ONE, {"vendor": ordered[0]})
            return
        connection = self.session.connection()  # Core: no ORM bulk-update bookkeeping
        for first in range(0, len(ordered), 500):
            connection.execute(_BUMP_MANY, {"vendors": ordered[first : first + 500]})

    def schedule_version(self, vendor_id: str) -> int | None:
        return self.session.exec(
            select(Vendor.schedule_version).where(col(Vendor.id) == vendor_id)
        ).first()


class StateUpdate(NamedTuple):
    reservation_id: str
    version: int  # as read: the row changes only if it is still at this version
    state: str
    deadline: datetime | None


_SET_STATE = (
    update(_RESERVATIONS)
    .where(_RESERVATIONS.c.id == bindparam("b_id"),
           _RESERVATIONS.c.version == bindparam("b_version"))
    .values(state=bindparam("b_state"), state_deadline=bindparam("b_deadline"),
            updated_at=bindparam("b_now"), version=_RESERVATIONS.c.version + 1)
)  # fmt: skip

# Postgres: the batch as arrays joined in one statement, not a statement per row.
_SET_STATES_PG = text(
    "UPDATE reservations AS r SET state = v.state, state_deadline = v.deadline, "
    "updated_at = :now, version = r.version + 1 "
    "FROM unnest(CAST(:ids AS text[]), CAST(:versions AS integer[]), CAST(:states AS text[]), "
    "CAST(:deadlines AS timestamptz[])) AS v(id, version, state, deadline) "
    "WHERE r.id = v.id AND r.version = v.version"
)


class ReservationRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, reservation: Reservation) -> None:
        self.session.add(reservation)

    def get(self, reservation_id: str, *, for_update: bool = False) -> Reservation | None:
        stmt = select(Reservation).where(col(Reservation.id) == reservation_id)
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.exec(stmt).first()

    def set_states(self, updates: Sequence[StateUpdate], *, now: datetime) -> int:
        """Move a batch of reservations to new states (the sweep); returns how many rows
        changed, fewer than asked when some moved on since they were read."""
        if not updates:
            return 0
        connection = self.session.connection()
        if connection.dialect.name == "postgresql":
            ids, versions, states, deadlines = (list(c) for c in zip(*updates, strict=True))
            result = connection.execute(_SET_STATES_PG, {
                "ids": ids, "versions": versions, "states": states, "now": now,
                "deadlines": deadlines,
            })  # fmt: skip
        else:
            result = connection.execute(_SET_STATE, [
                {"b_id": u.reservation_id, "b_version": u.version, "b_state": u.state,
                 "b_deadline": u.deadline, "b_now": now}
                for u in updates
            ])  # fmt: skip
        return int(result.rowcount)

    def lock_vendor_schedule(self, vendor_id: str) -> None:
        """Serialise hold creation per vendor until this transaction ends (Postgres).

        Without it two inserts that overlap each other can both wait on the exclusion
        constraint and end in a deadlock; with it the second simply sees the first's row.
        SQLite needs nothing: BEGIN IMMEDIATE already serialises every writer.
        """
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:vendor, 7))"),
                {"vendor": f"bookiji:vendor:{vendor_id}"},
            )

    def lock_requester_holds(self, partner_id: str | None, requester_id: str) -> None:
        """Serialise one requester's creates until this transaction ends (Postgres), so its
        hold cap is counted exactly: taken after the vendor's lock, never before one, so the
        two cannot deadlock. A partner's cap spans vendors and is not serialised (that would
        queue all of a partner's creates): it can overshoot by the creates in flight.
        SQLite needs nothing: its writers take turns."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:who, 7))"),
                {"who": f"bookiji:requester:{partner_id or ''}:{requester_id}"},
            )

    def list(
        self,
        *,
        state: str | None = None,
        vendor_id: str | None = None,
        partner_id: str | None = None,
        limit: int = 50,
    ) -> Sequence[Reservation]:
        stmt = select(Reservation)
        if state is not None:
            stmt = stmt.where(col(Reservation.state) == state)
        if vendor_id is not None:
            stmt = stmt.where(col(Reservation.vendor_id) == vendor_id)
        if partner_id is not None:
            stmt = stmt.where(col(Reservation.partner_id) == partner_id)
        stmt = stmt.order_by(col(Reservation.created_at).desc(), col(Reservation.id)).limit(limit)
        return self.session.exec(stmt).all()

    def due_for_expiry(self, now: datetime, *, limit: int) -> Sequence[Reservation]:
        """Reservations past their deadline in a state that expires, oldest deadline first.

        Locked with SKIP LOCKED on Postgres so two sweepers split the work instead of
        colliding; SQLite serialises writers anyway. Detached from the session, without
        the sealed columns (`meta` reads as empty, `requester_contact` as None).
        """
        rows = self.session.connection().execute(due_for_expiry_query(now, limit))
        # Plain rows made into detached models: a sweep of thousands reads them once and
        # writes them with set-based statements, so the ORM's per-row bookkeeping is waste.
        unread: dict[str, Any] = {"meta": {}, "requester_contact": None}  # no default factories
        keys = list(rows.keys())  # once: a row's own `_mapping.keys()` builds a view per call
        return [_detached(Reservation, {**unread, **dict(zip(keys, row, strict=True))})
                for row in rows]  # fmt: skip

    def count_by_state(self) -> dict[str, int]:
        stmt = select(Reservation.state, func.count()).group_by(col(Reservation.state))
        return {state: count for state, count in self.session.exec(stmt).all()}

    def overlapping_active_pairs(self) -> Sequence[tuple[str, str]]:
        """Every pair of active reservations of one vendor whose blocks overlap (the audit)."""
        other = Reservation.__table__.alias("other")  # type: ignore[attr-defined]
        me = Reservation.__table__  # type: ignore[attr-defined]
        stmt = (
            select(me.c.id, other.c.id)
            .select_from(me)
            .join(
                other,
                and_(
                    other.c.vendor_id == me.c.vendor_id,
                    other.c.id > me.c.id,
                    other.c.block_start < me.c.block_end,
                    other.c.block_end > me.c.block_start,
                ),
            )
            .where(me.c.state.in_(_ACTIVE), other.c.state.in_(_ACTIVE))
        )
        return [(a, b) for a, b in self.session.execute(stmt).all()]


class TransitionRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, transition: ReservationTransition) -> None:
        self.session.add(transition)

    def for_reservation(self, reservation_id: str) -> Sequence[ReservationTransition]:
        stmt = (
            select(ReservationTransition)
            .where(col(ReservationTransition.reservation_id) == reservation_id)
            .order_by(col(ReservationTransition.id))
        )
        return self.session.exec(stmt).all()

    def after(self, last_id: int, *, limit: int = 200) -> Sequence[ReservationTransition]:
        stmt = (
            select(ReservationTransition)
            .where(col(ReservationTransition.id) > last_id)
            .order_by(col(ReservationTransition.id))
            .limit(limit)
        )
        return self.session.exec(stmt).all()


class OutboxRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, event: OutboxEvent) -> None:
        self.session.add(event)

    def after(
        self, cursor: int, *, partner_id: str | None = None, limit: int = 100
    ) -> Sequence[OutboxEvent]:
        stmt = select(OutboxEvent).where(col(OutboxEvent.id) > cursor)
        if partner_id is not None:
            stmt = stmt.where(col(OutboxEvent.partner_id) == partner_id)
        return self.session.exec(stmt.order_by(col(OutboxEvent.id)).limit(limit)).all()

    def for_reservation(self, reservation_id: str) -> Sequence[OutboxEvent]:
        stmt = (
            select(OutboxEvent)
            .where(col(OutboxEvent.reservation_id) == reservation_id)
            .order_by(col(OutboxEvent.id))
        )
        return self.session.exec(stmt).all()


class IdempotencyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, scope: str, key: str, now: datetime) -> IdempotencyKey | None:
        """The record, unless it has expired (the purge may not have run yet)."""
        record = self.stored(scope, key)
        return record if record is not None and record.expires_at > now else None

    def stored(self, scope: str, key: str) -> IdempotencyKey | None:
        """The record, expired or not."""
        return self.session.get(IdempotencyKey, (scope, key))

    def drop(self, scope: str, key: str) -> None:
        """Remove an expired record now, so its key can be used afresh."""
        self.session.execute(
            delete(IdempotencyKey).where(
                col(IdempotencyKey.scope) == scope, col(IdempotencyKey.key) == key
            )
        )

    def add(self, record: IdempotencyKey) -> None:
        self.session.add(record)

    def any_expired(self, now: datetime) -> bool:
        return (
            self.session.exec(
                select(IdempotencyKey.key).where(col(IdempotencyKey.expires_at) <= now).limit(1)
            ).first()
            is not None
        )

    def purge_expired(self, now: datetime) -> int:
        result = self.session.execute(
            delete(IdempotencyKey).where(col(IdempotencyKey.expires_at) <= now)
        )
        return int(getattr(result, "rowcount", 0) or 0)
