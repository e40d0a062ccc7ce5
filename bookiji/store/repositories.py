"""Queries, one class per aggregate. Services call these; they never write SQL themselves."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import and_, bindparam, delete, func, text, update
from sqlalchemy import select as sa_select
from sqlalchemy.orm import QueryableAttribute, configure_mappers, defer
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

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
_SEALED = (Reservation.meta, Reservation.requester_contact)


def due_for_expiry_query(now: datetime, limit: int) -> SelectOfScalar[Reservation]:
    """Postgres reads it from the partial index of expirable deadlines, oldest first, and
    stops at `limit`; SQLite reads each state's due range of (state, state_deadline)."""
    return (
        select(Reservation)
        .where(
            text(EXPIRABLE_PREDICATE),  # as the partial index says, literally
            col(Reservation.state_deadline) <= now,
        )
        .order_by(col(Reservation.state_deadline))
        .limit(limit)
        .with_for_update(skip_locked=True)
        # Expiring needs none of the requester's sealed data: not decrypted, row by row.
        .options(*(defer(cast(QueryableAttribute[Any], c)) for c in _SEALED))
    )


_VENDORS = Vendor.__table__  # type: ignore[attr-defined]
_BUMP_ONE = (
    update(_VENDORS)
    .where(_VENDORS.c.id == bindparam("vendor"))
    .values(schedule_version=_VENDORS.c.schedule_version + 1)
)

_VENDOR_ROW = sa_select(_VENDORS).where(_VENDORS.c.id == bindparam("vendor"))

_VERSION_AND_NOTICE = sa_select(_VENDORS.c.schedule_version, _VENDORS.c.min_notice_minutes).where(
    _VENDORS.c.id == bindparam("vendor")
)


class VendorRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, vendor_id: str) -> Vendor | None:
        return self.session.get(Vendor, vendor_id)

    def read(self, vendor_id: str) -> Vendor | None:
        """The vendor as stored, outside the session's identity map: for a path that reads
        its rules and never changes it (a hold), at a fraction of an ORM load's cost."""
        row = self.session.connection().execute(_VENDOR_ROW, {"vendor": vendor_id}).first()
        if row is None:
            return None
        configure_mappers()  # a fresh process may not have used the ORM yet (cheap after)
        return Vendor.model_construct(**row._mapping)

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
        for first in range(0, len(ordered), 500):
            self.session.execute(
                update(Vendor)
                .where(col(Vendor.id).in_(ordered[first : first + 500]))
                .values(schedule_version=col(Vendor.schedule_version) + 1)
                .execution_options(synchronize_session=False)
            )

    def version_and_notice(self, vendor_id: str) -> tuple[int, int] | None:
        """What a cached availability answer is checked against on every read."""
        row = self.session.connection().execute(_VERSION_AND_NOTICE, {"vendor": vendor_id}).first()
        return None if row is None else (row[0], row[1])

    def schedule_version(self, vendor_id: str) -> int | None:
        return self.session.exec(
            select(Vendor.schedule_version).where(col(Vendor.id) == vendor_id)
        ).first()


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

    def overlapping_active(
        self, vendor_id: str, block_start: datetime, block_end: datetime
    ) -> Sequence[Reservation]:
        """Active reservations whose block overlaps [block_start, block_end)."""
        stmt = (
            select(Reservation)
            .where(
                col(Reservation.vendor_id) == vendor_id,
                col(Reservation.block_start) < block_end,
                col(Reservation.block_end) > block_start,
                col(Reservation.state).in_(_ACTIVE),
            )
            .order_by(col(Reservation.block_start))
        )
        return self.session.exec(stmt).all()

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
        colliding; SQLite serialises writers anyway.
        """
        return self.session.exec(due_for_expiry_query(now, limit)).all()

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

    def get(self, scope: str, key: str) -> IdempotencyKey | None:
        return self.session.get(IdempotencyKey, (scope, key))

    def add(self, record: IdempotencyKey) -> None:
        self.session.add(record)

    def purge_expired(self, now: datetime) -> int:
        result = self.session.execute(
            delete(IdempotencyKey).where(col(IdempotencyKey.expires_at) <= now)
        )
        return int(getattr(result, "rowcount", 0) or 0)
