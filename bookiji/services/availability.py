"""Availability answers for partners and operators, and the same rules for hold creation.

Answers are cached in memory per (vendor, window, slot parameters) for a TTL and keyed by
the vendor's schedule version, which every hold, booking, sync and rule change bumps in the
transaction that makes the change; so a cached answer is never older than the last commit
that could change it. Hold creation never reads this cache.
"""

from __future__ import annotations

import json
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import bindparam, text, union_all
from sqlalchemy import select as sa_select
from sqlalchemy.orm import defer
from sqlmodel import col, select

from bookiji.domain.availability import (
    EXPLAIN,
    OPERATOR,
    Audience,
    Blocker,
    CalendarHealth,
    Explanation,
    Rules,
    compute_slots,
    explain,
)
from bookiji.domain.errors import NotFound, SlotUnavailable, ValidationFailed
from bookiji.domain.timeutil import format_instant
from bookiji.services.clock import Clock
from bookiji.services.vendors import spec_of
from bookiji.store.database import Database
from bookiji.store.models import (
    ACTIVE_PREDICATE,
    BusyInterval,
    CalendarConnection,
    Reservation,
    Vendor,
)
from bookiji.store.repositories import VERSION_AND_NOTICE
from bookiji.store.uow import UnitOfWork

MIN_SLOT_MINUTES, MAX_SLOT_MINUTES = 5, 1440


def calendar_label(connection: CalendarConnection) -> str:
    if connection.name:
        return f"{connection.provider}:{connection.name}"
    return f"{connection.provider}:{connection.id}"


@dataclass(frozen=True)
class VendorSchedule:
    """Everything availability needs about one vendor, read in one transaction."""

    vendor: Vendor
    rules: Rules
    blockers: list[Blocker]
    calendars: list[CalendarConnection]
    version: int


# Built once: a hold runs these on every create, and building the expressions cost more
# than running them.
# The sealed source and credentials are not needed here: left unread, so a hold or an
# answer decrypts nothing (and touching them on these rows raises instead of loading).
_CALENDARS = (
    select(CalendarConnection)
    .options(
        defer(CalendarConnection.source, raiseload=True),  # type: ignore[arg-type]
        defer(CalendarConnection.credentials_ref, raiseload=True),  # type: ignore[arg-type]
    )
    .where(col(CalendarConnection.vendor_id) == bindparam("vendor"))
    .order_by(col(CalendarConnection.created_at), col(CalendarConnection.id))
)
_BUSY = sa_select(
    col(BusyInterval.start_at),
    col(BusyInterval.end_at),
    col(BusyInterval.connection_id),
    col(BusyInterval.summary),
    col(BusyInterval.tentative),
).where(
    col(BusyInterval.vendor_id) == bindparam("vendor"),
    col(BusyInterval.start_at) < bindparam("hi"),
    col(BusyInterval.end_at) > bindparam("lo"),
)
# A vendor's active blocks never overlap, so those touching [lo, hi) are the ones starting in
# it plus at most the last one starting before `lo`: one range and one step back on the
# partial index of active blocks, not a walk over every block the vendor ever had.
_HOLD_COLUMNS = (
    col(Reservation.block_start),
    col(Reservation.block_end),
    col(Reservation.id),
    col(Reservation.state),
    col(Reservation.slot_start),
    col(Reservation.slot_end),
    col(Reservation.partner_id),
)
_HOLDS_FROM = sa_select(*_HOLD_COLUMNS).where(
    col(Reservation.vendor_id) == bindparam("vendor"),
    text(ACTIVE_PREDICATE),
    col(Reservation.block_start) >= bindparam("lo"),
    col(Reservation.block_start) < bindparam("hi"),
)
_HOLD_BEFORE = (
    sa_select(*_HOLD_COLUMNS)
    .where(
        col(Reservation.vendor_id) == bindparam("vendor"),
        text(ACTIVE_PREDICATE),
        col(Reservation.block_start) < bindparam("lo"),
    )
    .order_by(col(Reservation.block_start).desc())
    .limit(1)
    .subquery("before")
)
# Both halves in one statement: one round trip per hold on Postgres, not two.
_HOLDS = union_all(
    sa_select(_HOLD_BEFORE).where(_HOLD_BEFORE.c.block_end > bindparam("lo")), _HOLDS_FROM
)


def load_schedule(
    uow: UnitOfWork,
    vendor: Vendor,
    start: datetime,
    end: datetime,
    *,
    slot_minutes: int | None = None,
    exclude_reservation: str | None = None,
    margin: timedelta = timedelta(days=1),
) -> VendorSchedule:
    """Vendor rules plus every busy period and active hold that can touch [start, end)
    (except `exclude_reservation`: a commit revalidates its own slot).

    `margin` widens the reach for a window of slots; checking one slot needs none, which
    keeps a hold's check to the few rows around it however busy the vendor's calendar is."""
    rules = Rules.from_spec(spec_of(vendor), slot_minutes=slot_minutes)
    buffers = max(rules.buffer_before, rules.buffer_after)
    reach_lo = start - buffers - rules.slot - margin
    reach_hi = end + buffers + margin
    calendars = list(uow.session.exec(_CALENDARS, params={"vendor": vendor.id}).all())
    labels = {c.id: calendar_label(c) for c in calendars}
    blockers: list[Blocker] = []
    # Busy periods belong to a connection (disconnecting deletes them): none without one.
    busy_rows = (
        []
        if not calendars
        else uow.session.execute(_BUSY, {"vendor": vendor.id, "lo": reach_lo, "hi": reach_hi}).all()
    )
    for start_at, end_at, connection_id, summary, tentative in busy_rows:
        label = labels.get(connection_id, connection_id)
        blockers.append(Blocker(start_at, end_at, "calendar", label, tentative, title=summary))
    hold_rows = uow.session.execute(
        _HOLDS, {"vendor": vendor.id, "lo": reach_lo, "hi": reach_hi}
    ).all()
    for block_start, block_end, reservation_id, state, slot_start, slot_end, owner in hold_rows:
        if reservation_id == exclude_reservation:
            continue
        label = f"{reservation_id} ({state}, slot {slot_start:%H:%M}-{slot_end:%H:%M}Z)"
        blockers.append(Blocker(block_start, block_end, "hold", label, owner=owner))
    return VendorSchedule(vendor, rules, blockers, calendars, vendor.schedule_version)


def health(connections: Sequence[CalendarConnection]) -> list[CalendarHealth]:
    return [CalendarHealth(calendar_label(c), c.status, c.last_synced_at) for c in connections]


def check_bookable(
    schedule: VendorSchedule, start: datetime, *, now: datetime, audience: Audience = OPERATOR
) -> Explanation:
    """The hold-time check: the very rules availability lists slots by, on fresh data."""
    return explain(schedule.rules, start, now=now, blockers=schedule.blockers, audience=audience)


def refuse_unless_bookable(verdict: Explanation, vendor_id: str) -> None:
    if verdict.bookable:
        return
    first = verdict.findings[0]
    more = len(verdict.findings) - 1
    suffix = f" (and {more} more reason{'s' if more > 1 else ''})" if more else ""
    raise SlotUnavailable(
        f"slot not available: {first.message}{suffix}",
        details={
            "vendorId": vendor_id,
            "rule": first.rule,
            "reasons": [{"rule": f.rule, "message": f.message} for f in verdict.findings],
        },
    )


class _Query(NamedTuple):
    """One availability question; also its answer's key in the cache."""

    vendor_id: str
    start: datetime
    end: datetime
    slot_minutes: int | None
    include_confidence: bool


@dataclass
class _Entry:
    version: int
    expires: datetime
    document: dict[str, Any]
    starts: list[datetime] = field(default_factory=list)  # of the slots, in order
    #: The answer as JSON, per number of slots the passing of time has cut from the front.
    encoded: dict[int, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.starts = [datetime.fromisoformat(s["startTime"]) for s in self.document["slots"]]

    def cut(self, earliest: datetime) -> int:
        """How many leading slots start before `earliest` (the slots are in time order)."""
        return bisect_left(self.starts, earliest)

    def answer(self, cut: int) -> dict[str, Any]:
        return {**self.document, "slots": self.document["slots"][cut:], "cached": True}

    def answer_json(self, cut: int) -> bytes:
        body = self.encoded.get(cut)
        if body is None:
            body = self.encoded[cut] = to_json(self.answer(cut))
        return body


def to_json(document: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as the API serves every document."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class AnswerCache:
    """A small LRU of availability documents, safe to share between threads."""

    def __init__(self, ttl: timedelta, max_entries: int = 2048) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], version: int, now: datetime) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.version != version or entry.expires <= now:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[Any, ...], version: int, now: datetime, doc: dict[str, Any]) -> None:
        if self.ttl <= timedelta(0):
            return
        entry = _Entry(version, now + self.ttl, doc)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class AvailabilityService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        cache_ttl: timedelta = timedelta(minutes=5),
        freshness_ttl: timedelta = timedelta(minutes=5),
        max_window: timedelta = timedelta(days=93),
    ) -> None:
        self.db = db
        self.clock = clock
        self.freshness_ttl = freshness_ttl
        self.max_window = max_window
        self.cache = AnswerCache(cache_ttl)

    def _validate(self, start: datetime, end: datetime, slot_minutes: int | None) -> None:
        problems = []
        if end <= start:
            problems.append("endTime must be after startTime")
        elif end - start > self.max_window:
            problems.append(f"the window may span at most {self.max_window.days} days")
        if slot_minutes is not None and not MIN_SLOT_MINUTES <= slot_minutes <= MAX_SLOT_MINUTES:
            problems.append(f"slotDuration must be {MIN_SLOT_MINUTES}-{MAX_SLOT_MINUTES} minutes")
        if problems:
            raise ValidationFailed("; ".join(problems), details={"problems": problems})

    @staticmethod
    def _vendor(uow: UnitOfWork, vendor_id: str) -> Vendor:
        vendor = uow.vendors.get(vendor_id)
        if vendor is None:
            raise NotFound(f"unknown vendor {vendor_id!r}", details={"vendorId": vendor_id})
        return vendor

    def availability(
        self,
        vendor_id: str,
        start: datetime,
        end: datetime,
        *,
        slot_minutes: int | None = None,
        include_confidence: bool = True,
    ) -> dict[str, Any]:
        """The availability document (`GET /v1/vendors/{id}/availability`)."""
        query = _Query(vendor_id, start, end, slot_minutes, include_confidence)
        found = self._cached(query)
        if found is not None:
            entry, cut = found
            return entry.answer(cut)
        return self._compute(query)

    def availability_json(
        self,
        vendor_id: str,
        start: datetime,
        end: datetime,
        *,
        slot_minutes: int | None = None,
        include_confidence: bool = True,
    ) -> bytes:
        """`availability` as the API sends it. A cached answer is encoded once per cut, so a
        hot vendor costs one small read per request."""
        query = _Query(vendor_id, start, end, slot_minutes, include_confidence)
        found = self._cached(query)
        if found is not None:
            entry, cut = found
            return entry.answer_json(cut)
        return to_json(self._compute(query))

    def cached_json(
        self,
        vendor_id: str,
        start: datetime,
        end: datetime,
        *,
        slot_minutes: int | None = None,
        include_confidence: bool = True,
    ) -> bytes | None:
        """`availability_json` when a cached answer is still valid (one small read), else
        None: computing the answer is work for a thread, not for the API's event loop."""
        query = _Query(vendor_id, start, end, slot_minutes, include_confidence)
        found = self._cached(query)
        return None if found is None else found[0].answer_json(found[1])

    def _cached(self, query: _Query) -> tuple[_Entry, int] | None:
        """A cached answer still valid for the vendor's schedule version, and how many of its
        slots the passing of time has ruled out since (the vendor's minimum notice)."""
        self._validate(query.start, query.end, query.slot_minutes)
        now = self.clock.now()
        current = self.db.read_first(VERSION_AND_NOTICE, {"vendor": query.vendor_id})
        if current is None:
            raise NotFound(
                f"unknown vendor {query.vendor_id!r}", details={"vendorId": query.vendor_id}
            )
        version, notice_minutes = current.schedule_version, current.min_notice_minutes
        entry = self.cache.get(query, version, now)
        if entry is None:
            return None
        return entry, entry.cut(now + timedelta(minutes=notice_minutes))

    def _compute(self, query: _Query) -> dict[str, Any]:
        vendor_id, start, end, slot_minutes, include_confidence = query
        now = self.clock.now()
        with UnitOfWork(self.db, readonly=True) as uow:
            vendor = self._vendor(uow, vendor_id)
            schedule = load_schedule(uow, vendor, start, end, slot_minutes=slot_minutes)
        slots = compute_slots(
            schedule.rules,
            window_start=start,
            window_end=end,
            now=now,
            blockers=schedule.blockers,
            calendars=health(schedule.calendars),
            freshness_ttl=self.freshness_ttl,
        )
        document = {
            "vendorId": vendor.id,
            "timezone": vendor.timezone,
            "startTime": format_instant(start),
            "endTime": format_instant(end),
            "slotDuration": int(schedule.rules.slot.total_seconds() // 60),
            "slots": [
                {
                    "startTime": format_instant(s.start),
                    "endTime": format_instant(s.end),
                    **(
                        {"confidence": s.confidence, "reasons": list(s.reasons)}
                        if include_confidence
                        else {}
                    ),
                }
                for s in slots
            ],
            "sources": [
                {
                    "calendar": calendar_label(c),
                    "provider": c.provider,
                    "fetchedAt": format_instant(c.last_synced_at),
                    "status": c.status,
                }
                for c in schedule.calendars
            ],
            "cached": False,
            "computedAt": format_instant(now),
        }
        self.cache.put(query, schedule.version, now, document)
        return document

    def explain(
        self, vendor_id: str, at: datetime, *, slot_minutes: int | None = None
    ) -> dict[str, Any]:
        """Why a slot starting at `at` is or is not bookable, rule by rule."""
        self._validate(at, at + timedelta(minutes=1), slot_minutes)
        now = self.clock.now()
        with UnitOfWork(self.db, readonly=True) as uow:
            vendor = self._vendor(uow, vendor_id)
            schedule = load_schedule(
                uow, vendor, at, at + timedelta(days=1), slot_minutes=slot_minutes
            )
        verdict = check_bookable(schedule, at, now=now, audience=EXPLAIN)
        return {
            "vendorId": vendor.id,
            "timezone": vendor.timezone,
            "startTime": format_instant(verdict.start),
            "endTime": format_instant(verdict.end),
            "bookable": verdict.bookable,
            "reasons": [{"rule": f.rule, "message": f.message} for f in verdict.findings],
            "computedAt": format_instant(now),
        }
