"""Caps on holds in flight, per requester and per partner.

A rate limit bounds how fast a key can ask; these caps bound how much inventory a partner
(or one of its requesters) can sit on at once, which is what actually starves other
partners. Only unfinished reservations count: every ACTIVE state except COMMITTED. A
committed booking is finished business; counting it would turn a cap on holds in flight
into a lifetime cap on bookings.

Requester ids are the partner's own identifiers, so a requester is counted within its
partner (`alice` of partner A is not `alice` of partner B).

`ReservationService.create_hold(caps=...)` counts inside the hold's own transaction: on
SQLite (writers take turns) both caps are exact; on Postgres a requester's creates are
serialised, so its cap is exact, while a partner's cap spans vendors and can overshoot by the
creates in flight (queueing all of a partner's creates would cost more than it guards).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, bindparam, case, func, text
from sqlalchemy import select as sa_select
from sqlmodel import col

from bookiji.domain.errors import HoldLimitReached
from bookiji.domain.states import ACTIVE_STATES, FINAL_STATES, ReservationState
from bookiji.store.database import Database
from bookiji.store.models import HOLDING_PREDICATE, Reservation
from bookiji.store.uow import UnitOfWork

#: Reservations that are holds in flight: active, not yet committed.
HOLDING_STATES: frozenset[ReservationState] = ACTIVE_STATES - FINAL_STATES
_HOLDING = sorted(s.value for s in HOLDING_STATES)


@dataclass(frozen=True)
class HoldCounts:
    requester: int
    partner: int


def count_active_holds(
    db: Database | UnitOfWork, *, partner_id: str | None, requester_id: str
) -> HoldCounts:
    """Holds in flight of this requester (within its partner) and of the whole partner.
    `partner_id=None` is the operator's own scope."""
    if isinstance(db, UnitOfWork):
        return _count(db, partner_id, requester_id)
    with UnitOfWork(db, readonly=True) as uow:
        return _count(uow, partner_id, requester_id)


def _counting(of_partner: ColumnElement[bool]) -> Select[int, int]:
    """Both counts in one pass over the partial index of holds in flight."""
    mine = case((col(Reservation.requester_id) == bindparam("requester"), 1))
    # The predicate of the partial index, word for word, so both databases read it.
    return sa_select(func.count(), func.count(mine)).where(of_partner, text(HOLDING_PREDICATE))


_OF_PARTNER = _counting(col(Reservation.partner_id) == bindparam("partner"))
_OF_OPERATOR = _counting(col(Reservation.partner_id).is_(None))


def _count(uow: UnitOfWork, partner_id: str | None, requester_id: str) -> HoldCounts:
    if partner_id is None:
        row = uow.session.execute(_OF_OPERATOR, {"requester": requester_id}).one()
    else:
        row = uow.session.execute(
            _OF_PARTNER, {"partner": partner_id, "requester": requester_id}
        ).one()
    partner_count, requester_count = row
    return HoldCounts(requester=int(requester_count), partner=int(partner_count))


def ensure_hold_allowed(
    db: Database | UnitOfWork,
    *,
    partner_id: str | None,
    requester_id: str,
    max_active_per_requester: int,
    max_active_per_partner: int,
) -> None:
    """Refuse a new hold (409 `hold_limit_reached`) when either cap is already reached.
    The partner cap does not apply to the operator scope (`partner_id=None`)."""
    counts = count_active_holds(db, partner_id=partner_id, requester_id=requester_id)
    if counts.requester >= max_active_per_requester:
        raise HoldLimitReached(
            f"requester {requester_id!r} already has {counts.requester} holds in flight "
            f"(limit {max_active_per_requester}); finish or cancel one first",
            details={
                "scope": "requester",
                "requesterId": requester_id,
                "active": counts.requester,
                "limit": max_active_per_requester,
            },
        )
    if partner_id is not None and counts.partner >= max_active_per_partner:
        raise HoldLimitReached(
            f"partner {partner_id!r} already has {counts.partner} holds in flight "
            f"(limit {max_active_per_partner}); finish or cancel some first",
            details={
                "scope": "partner",
                "partnerId": partner_id,
                "active": counts.partner,
                "limit": max_active_per_partner,
            },
        )


@dataclass(frozen=True)
class HoldCaps:
    """The two caps as configured (`api.max_active_holds_per_requester`/`_per_partner`)."""

    max_active_per_requester: int = 5
    max_active_per_partner: int = 1000

    def ensure(
        self, db: Database | UnitOfWork, *, partner_id: str | None, requester_id: str
    ) -> None:
        ensure_hold_allowed(
            db,
            partner_id=partner_id,
            requester_id=requester_id,
            max_active_per_requester=self.max_active_per_requester,
            max_active_per_partner=self.max_active_per_partner,
        )
