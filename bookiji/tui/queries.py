"""What the support dashboard reads: the transition feed, the overview, the reservations
table and one reservation in full. Read-only, short read transactions (a deferred BEGIN on
SQLite), every query on an index:

* the feed walks `reservation_transitions` by primary key (`WHERE id > :last ORDER BY id
  LIMIT n`), joining each row's reservation by primary key;
* counts of live work use `ix_reservations_state_deadline`; "today" counts use
  `ix_reservation_transitions_to_state_at`; stuck compensations and dead letters use the
  `(status, next_attempt_at)` indexes of their tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, or_
from sqlmodel import col, select

from bookiji.domain.states import EXPIRY_TARGET, TERMINAL_FAILURES, ReservationState
from bookiji.services.clock import Clock
from bookiji.services.documents import load_reservation_document
from bookiji.services.webhooks import DeliveryView, delivery_view
from bookiji.store.database import Database
from bookiji.store.models import (
    CompensationAction,
    OutboxEvent,
    Partner,
    Reservation,
    ReservationTransition,
    Vendor,
    WebhookDelivery,
)
from bookiji.store.uow import UnitOfWork

S = ReservationState

#: The overview's groups of live states, in the order they are shown.
HOLDS = (S.INTENT_CREATED, S.HELD)
AWAITING_VENDOR = (S.AWAITING_VENDOR_CONFIRMATION,)
AWAITING_PAYMENT = (
    S.CONFIRMED_BY_VENDOR,
    S.AWAITING_VENDOR_AUTH,
    S.VENDOR_AUTHORIZED,
    S.AWAITING_REQUESTER_AUTH,
    S.AUTHORIZED_BOTH,
)
COMMITTING = (S.COMMIT_IN_PROGRESS,)
LIVE_STATES = (*HOLDS, *AWAITING_VENDOR, *AWAITING_PAYMENT, *COMMITTING)
_LIVE = [s.value for s in LIVE_STATES]
_EXPIRABLE = sorted(s.value for s in EXPIRY_TARGET)
_FAILURES = sorted(s.value for s in TERMINAL_FAILURES)

#: The state filter value that selects stuck reservations instead of one state.
STUCK = "@stuck"


class Outcome(StrEnum):
    """How the feed colours a transition."""

    PROGRESS = "progress"
    COMMITTED = "committed"
    FAILURE = "failure"
    COMPENSATION = "compensation"


def outcome_of(from_state: str | None, to_state: str, reason: str) -> Outcome:
    """COMMITTED is committed; a failed commit or a forced unwind is compensation (money is
    being released or refunded); any other end without a booking (failed, expired,
    cancelled) is a failure; everything else is progress."""
    if to_state == S.COMMITTED.value:
        return Outcome.COMMITTED
    failed = to_state in _FAILURES
    if failed and (from_state == S.COMMIT_IN_PROGRESS.value or "compensat" in reason.lower()):
        return Outcome.COMPENSATION
    return Outcome.FAILURE if failed else Outcome.PROGRESS


@dataclass(frozen=True)
class FeedRow:
    id: int
    at: datetime
    reservation_id: str
    vendor_id: str
    from_state: str | None
    to_state: str
    reason: str
    actor: str

    @property
    def outcome(self) -> Outcome:
        return outcome_of(self.from_state, self.to_state, self.reason)


@dataclass(frozen=True)
class Overview:
    now: datetime
    by_state: dict[str, int]
    committed_today: int
    failures_today: int
    past_deadline: int
    commit_too_long: int
    compensation_failing: int
    dead_letters: int

    def count(self, states: Iterable[ReservationState]) -> int:
        return sum(self.by_state.get(s.value, 0) for s in states)

    @property
    def stuck(self) -> int:
        return (
            self.past_deadline
            + self.commit_too_long
            + self.compensation_failing
            + self.dead_letters
        )


@dataclass(frozen=True)
class ReservationFilter:
    """Empty fields do not filter. `state` is a state name or STUCK."""

    state: str | None = None
    vendor_id: str | None = None
    partner_id: str | None = None
    text: str = ""


@dataclass(frozen=True)
class ReservationRow:
    id: str
    state: str
    vendor_id: str
    partner_id: str | None
    requester_id: str
    slot_start: datetime
    slot_end: datetime
    state_deadline: datetime | None
    created_at: datetime
    overdue: bool


@dataclass(frozen=True)
class ReservationDetail:
    """One reservation as the detail screen shows it: the document the CLI and the API
    show (`reservations show --json`), its vendor's timezone and its webhook deliveries."""

    document: dict[str, Any]
    vendor_name: str
    vendor_timezone: str
    deliveries: list[DeliveryView] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.document["reservationId"])

    @property
    def state(self) -> str:
        return str(self.document["state"])

    @property
    def zone(self) -> ZoneInfo | None:
        try:
            return ZoneInfo(self.vendor_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            return None


@dataclass(frozen=True)
class FilterChoices:
    vendors: list[tuple[str, str]]  # (id, name)
    partners: list[tuple[str, str]]


def start_of_day(now: datetime) -> datetime:
    """Midnight UTC of `now`'s day: the dashboard's "today"."""
    return datetime.combine(now.date(), time(0), tzinfo=now.tzinfo)


def _feed_rows(rows: Iterable[tuple[ReservationTransition, str]]) -> list[FeedRow]:
    return [
        FeedRow(
            id=int(t.id or 0),
            at=t.at,
            reservation_id=t.reservation_id,
            vendor_id=vendor_id,
            from_state=t.from_state,
            to_state=t.to_state,
            reason=t.reason,
            actor=t.actor,
        )
        for t, vendor_id in rows
    ]


class DashboardQueries:
    def __init__(
        self, db: Database, clock: Clock, *, commit_stuck_after: timedelta = timedelta(minutes=2)
    ) -> None:
        self.db = db
        self.clock = clock
        self.commit_stuck_after = commit_stuck_after

    # -- feed ------------------------------------------------------------------------------

    def _feed_select(self) -> Any:
        return select(ReservationTransition, Reservation.vendor_id).join(
            Reservation, col(Reservation.id) == col(ReservationTransition.reservation_id)
        )

    def feed_after(self, last_id: int, *, limit: int = 200) -> list[FeedRow]:
        """Transitions committed after `last_id`, oldest first (the next page of the feed)."""
        stmt = (
            self._feed_select()
            .where(col(ReservationTransition.id) > last_id)
            .order_by(col(ReservationTransition.id))
            .limit(limit)
        )
        with UnitOfWork(self.db, readonly=True) as uow:
            return _feed_rows(uow.session.exec(stmt).all())

    def feed_latest(self, *, limit: int = 200) -> list[FeedRow]:
        """The newest transitions (up to `limit`; fewer where ids have gaps), oldest first:
        what the feed starts with. A primary-key range, like every later page."""
        with UnitOfWork(self.db, readonly=True) as uow:
            newest = uow.session.exec(select(func.max(ReservationTransition.id))).one()
            if newest is None:
                return []
            stmt = (
                self._feed_select()
                .where(col(ReservationTransition.id) > int(newest) - limit)
                .order_by(col(ReservationTransition.id))
            )
            return _feed_rows(uow.session.exec(stmt).all())

    # -- overview --------------------------------------------------------------------------

    def overview(self) -> Overview:
        now = self.clock.now()
        today = start_of_day(now)
        with UnitOfWork(self.db, readonly=True) as uow:
            session = uow.session
            by_state = {
                state: int(n)
                for state, n in session.exec(
                    select(Reservation.state, func.count())
                    .where(col(Reservation.state).in_(_LIVE))
                    .group_by(col(Reservation.state))
                ).all()
            }

            def arrivals(states: Sequence[str]) -> int:
                return int(
                    session.exec(
                        select(func.count()).where(
                            col(ReservationTransition.to_state).in_(states),
                            col(ReservationTransition.at) >= today,
                        )
                    ).one()
                )

            past_deadline = session.exec(
                select(func.count()).where(
                    col(Reservation.state).in_(_EXPIRABLE),
                    col(Reservation.state_deadline) <= now,
                )
            ).one()
            commit_too_long = session.exec(
                select(func.count()).where(
                    col(Reservation.state) == S.COMMIT_IN_PROGRESS.value,
                    or_(
                        col(Reservation.state_deadline) <= now,
                        col(Reservation.updated_at) <= now - self.commit_stuck_after,
                    ),
                )
            ).one()
            compensation_failing = session.exec(
                select(func.count()).where(
                    or_(
                        col(CompensationAction.status) == "failed",
                        (col(CompensationAction.status) == "pending")
                        & col(CompensationAction.last_error).is_not(None),
                    )
                )
            ).one()
            dead_letters = session.exec(
                select(func.count()).where(col(WebhookDelivery.status) == "dead")
            ).one()
            return Overview(
                now=now,
                by_state=by_state,
                committed_today=arrivals([S.COMMITTED.value]),
                failures_today=arrivals(_FAILURES),
                past_deadline=int(past_deadline),
                commit_too_long=int(commit_too_long),
                compensation_failing=int(compensation_failing),
                dead_letters=int(dead_letters),
            )

    # -- reservations ----------------------------------------------------------------------

    def _overdue(self, reservation: Reservation, now: datetime) -> bool:
        deadline = reservation.state_deadline
        return (
            deadline is not None
            and deadline <= now
            and (reservation.state in _EXPIRABLE or reservation.state == S.COMMIT_IN_PROGRESS)
        )

    def reservations(self, where: ReservationFilter, *, limit: int = 200) -> list[ReservationRow]:
        """Newest first. `text` matches any part of the reservation or requester id, case
        insensitively."""
        now = self.clock.now()
        stmt = select(Reservation)
        if where.state == STUCK:
            stmt = stmt.where(
                col(Reservation.state).in_([*_EXPIRABLE, S.COMMIT_IN_PROGRESS.value]),
                col(Reservation.state_deadline) <= now,
            )
        elif where.state:
            stmt = stmt.where(col(Reservation.state) == where.state)
        if where.vendor_id:
            stmt = stmt.where(col(Reservation.vendor_id) == where.vendor_id)
        if where.partner_id:
            stmt = stmt.where(col(Reservation.partner_id) == where.partner_id)
        text = where.text.strip().lower()
        if text:
            stmt = stmt.where(
                or_(
                    func.lower(col(Reservation.id)).contains(text, autoescape=True),
                    func.lower(col(Reservation.requester_id)).contains(text, autoescape=True),
                )
            )
        stmt = stmt.order_by(col(Reservation.created_at).desc(), col(Reservation.id)).limit(limit)
        with UnitOfWork(self.db, readonly=True) as uow:
            return [
                ReservationRow(
                    id=r.id,
                    state=r.state,
                    vendor_id=r.vendor_id,
                    partner_id=r.partner_id,
                    requester_id=r.requester_id,
                    slot_start=r.slot_start,
                    slot_end=r.slot_end,
                    state_deadline=r.state_deadline,
                    created_at=r.created_at,
                    overdue=self._overdue(r, now),
                )
                for r in uow.session.exec(stmt).all()
            ]

    def filter_choices(self) -> FilterChoices:
        with UnitOfWork(self.db, readonly=True) as uow:
            vendors = uow.session.exec(select(Vendor.id, Vendor.name).order_by(col(Vendor.id)))
            partners = uow.session.exec(select(Partner.id, Partner.name).order_by(col(Partner.id)))
            return FilterChoices(
                vendors=[(v, n) for v, n in vendors.all()],
                partners=[(p, n) for p, n in partners.all()],
            )

    # -- one reservation -------------------------------------------------------------------

    def detail(self, reservation_id: str) -> ReservationDetail:
        """Raises NotFound for an unknown id."""
        document = load_reservation_document(self.db, reservation_id)
        with UnitOfWork(self.db, readonly=True) as uow:
            vendor = uow.session.get(Vendor, document["vendorId"])
            rows = uow.session.exec(
                select(WebhookDelivery, OutboxEvent.type)
                .outerjoin(OutboxEvent, col(OutboxEvent.event_id) == col(WebhookDelivery.event_id))
                .where(col(WebhookDelivery.reservation_id) == reservation_id)
                .order_by(col(WebhookDelivery.event_seq), col(WebhookDelivery.partner_id))
            ).all()
            deliveries = [delivery_view(d, event_type) for d, event_type in rows]
        return ReservationDetail(
            document=document,
            vendor_name=vendor.name if vendor is not None else document["vendorId"],
            vendor_timezone=vendor.timezone if vendor is not None else "UTC",
            deliveries=deliveries,
        )
