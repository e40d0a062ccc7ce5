"""Which slots of a vendor are bookable, how sure we are, and why an instant is not.

A slot [s, s + d) is bookable iff (DESIGN.md, "Availability"):
1. it lies inside one opening interval: for a local date, the real instants whose local
   wall-clock time is in one of that date's ranges (a date override replaces the weekly
   hours), so DST days are shorter or longer; starts step from the interval's first instant
   by the slot interval in elapsed time;
2. now + min_notice <= s < now + max_advance;
3. its block [s - buffer_before, s + d + buffer_after) overlaps no blocker (calendar busy
   period, tentative or not, and no active hold or booking);
4. it lies inside the query window.
`compute_slots` answers for a window; `explain` answers for one instant and names every rule
that blocks it. A property test checks both against a minute-by-minute oracle.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import accumulate
from zoneinfo import ZoneInfo

from bookiji.domain.intervals import merge
from bookiji.domain.vendors import WEEKDAYS, TimeRange, VendorSpec

WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_SAMPLE = timedelta(hours=6)  # no zone changes its UTC offset twice within six hours
_ZONE_MARGIN = timedelta(hours=15)  # every UTC offset lies within +/- 15 hours

# Confidence factors (README, "Confidence"): each applies at most once per slot.
NEVER_SYNCED = 0.5
SYNC_FAILED = 0.8
STALE = 0.9
VERY_STALE = 0.75
TENTATIVE_NEARBY = 0.9
TENTATIVE_WINDOW = timedelta(minutes=30)
WEEK_AHEAD = 0.95
MONTH_AHEAD = 0.9


@dataclass(frozen=True)
class Rules:
    """A vendor's booking rules, resolved for one query (slot length and step may differ
    from the vendor's defaults)."""

    timezone: str
    weekly: Mapping[str, tuple[TimeRange, ...]]
    overrides: Mapping[date, tuple[TimeRange, ...]]
    slot: timedelta
    interval: timedelta
    buffer_before: timedelta = timedelta(0)
    buffer_after: timedelta = timedelta(0)
    min_notice: timedelta = timedelta(0)
    max_advance: timedelta = timedelta(days=60)

    @classmethod
    def from_spec(cls, spec: VendorSpec, *, slot_minutes: int | None = None) -> Rules:
        """The vendor's rules, for slots of its own length or of `slot_minutes`. Starts
        always step by the vendor's interval: a hold is judged on that grid."""
        return cls(
            timezone=spec.timezone,
            weekly=spec.hours,
            overrides={o.date: o.hours for o in spec.overrides},
            slot=timedelta(minutes=slot_minutes or spec.slot_minutes),
            interval=timedelta(minutes=spec.slot_interval_minutes),
            buffer_before=timedelta(minutes=spec.buffer_before_minutes),
            buffer_after=timedelta(minutes=spec.buffer_after_minutes),
            min_notice=timedelta(minutes=spec.min_notice_minutes),
            max_advance=timedelta(days=spec.max_advance_days),
        )

    def hours_on(self, day: date) -> tuple[tuple[TimeRange, ...], str]:
        """The ranges open on a local date and where they come from."""
        if day in self.overrides:
            return self.overrides[day], "date override"
        return self.weekly.get(WEEKDAYS[day.weekday()], ()), "weekly hours"


@dataclass(frozen=True)
class Blocker:
    """Something that occupies time: a calendar busy period or an active hold/booking.

    `label` is what the operator knows it by: the calendar's label, or a hold's id, state
    and slot. `title` is a calendar event's own title, the vendor's private data (often a
    client's name), and `owner` the partner a hold belongs to; `Audience` decides who may
    read which."""

    start: datetime
    end: datetime
    kind: str  # "calendar" | "hold"
    label: str
    tentative: bool = False
    title: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class Audience:
    """Who reads an explanation, and so how much of each blocker it may name.

    Only the operator's own question (`--explain`) shows calendar event titles. Error
    messages and transition reasons, which are kept for good and shown to partners, name a
    calendar but never its events. A partner sees its own holds by id and anyone else's as
    'another hold or booking'. `partner_id` None is the operator."""

    partner_id: str | None = None
    event_titles: bool = False


EXPLAIN = Audience(event_titles=True)
OPERATOR = Audience()


def describe(blocker: Blocker, audience: Audience) -> str:
    tentative = " (tentative)" if blocker.tentative else ""
    if blocker.kind == "calendar":
        if audience.partner_id is not None:
            return f"a busy time in the vendor's calendar{tentative}"
        title = f" '{blocker.title}'" if audience.event_titles and blocker.title else ""
        return f"calendar event {blocker.label}{title}{tentative}"
    if audience.partner_id is None or blocker.owner == audience.partner_id:
        return f"hold/booking {blocker.label}"
    return "another hold or booking"


@dataclass(frozen=True)
class CalendarHealth:
    name: str
    status: str  # "ok" | "degraded" | "never_synced"
    fetched_at: datetime | None


@dataclass(frozen=True)
class Slot:
    start: datetime
    end: datetime
    confidence: float
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class OpeningInterval:
    """One range of one local date, as real instants. Usually one piece; two when a
    fall-back hour repeats part of the range."""

    day: date
    hours: TimeRange
    source: str
    pieces: tuple[tuple[datetime, datetime], ...]

    @property
    def anchor(self) -> datetime:
        return self.pieces[0][0]


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str


@dataclass(frozen=True)
class Explanation:
    start: datetime
    end: datetime
    bookable: bool
    findings: tuple[Finding, ...] = field(default_factory=tuple)


# -- opening intervals -------------------------------------------------------------------


def _offset(zone: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


@lru_cache(maxsize=256)
def _offset_pieces(
    zone_name: str, lo: datetime, hi: datetime
) -> tuple[tuple[datetime, datetime, timedelta], ...]:
    """[lo, hi) cut where the zone's UTC offset changes, each piece with its offset."""
    zone = ZoneInfo(zone_name)
    pieces: list[tuple[datetime, datetime, timedelta]] = []
    piece_start, current = lo, _offset(zone, lo)
    cursor = lo
    while cursor < hi:
        probe = min(cursor + _SAMPLE, hi)
        if _offset(zone, probe) == current:
            cursor = probe
            continue
        low, high = 0, int((probe - cursor).total_seconds())  # offset changes in (low, high]
        while high - low > 1:
            mid = (low + high) // 2
            if _offset(zone, cursor + timedelta(seconds=mid)) == current:
                low = mid
            else:
                high = mid
        change = cursor + timedelta(seconds=high)
        pieces.append((piece_start, change, current))
        piece_start, current, cursor = change, _offset(zone, change), change
    pieces.append((piece_start, hi, current))
    return tuple(pieces)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def opening_intervals(rules: Rules, start: datetime, end: datetime) -> list[OpeningInterval]:
    """Every opening interval with an instant in [start, end), in time order."""
    zone = ZoneInfo(rules.timezone)
    first = (start - timedelta(days=1)).astimezone(zone).date()
    last = (end + timedelta(days=1)).astimezone(zone).date()
    pieces = _offset_pieces(
        rules.timezone,
        _midnight(first) - _ZONE_MARGIN,
        _midnight(last) + timedelta(days=1) + _ZONE_MARGIN,
    )
    result: list[OpeningInterval] = []
    day = first
    while day <= last:
        ranges, source = rules.hours_on(day)
        midnight = _midnight(day)
        for hours in ranges:
            local_open = midnight + timedelta(minutes=hours.start)
            local_close = midnight + timedelta(minutes=hours.end)
            parts = []
            for piece_start, piece_end, offset in pieces:
                lo = max(piece_start, local_open - offset)
                hi = min(piece_end, local_close - offset)
                if lo < hi:
                    parts.append((lo, hi))
            merged = merge(parts)
            if merged and merged[0][0] < end and start < merged[-1][1]:
                result.append(OpeningInterval(day, hours, source, tuple(merged)))
        day += timedelta(days=1)
    result.sort(key=lambda oi: oi.anchor)
    return result


# -- slots -------------------------------------------------------------------------------


def _ceil_div(numerator: timedelta, step: timedelta) -> int:
    return -((-numerator) // step)


def _calendar_factors(
    calendars: Sequence[CalendarHealth], now: datetime, freshness_ttl: timedelta
) -> tuple[float, tuple[str, ...]]:
    confidence, reasons = 1.0, []
    for calendar in calendars:
        if calendar.status == "never_synced" or calendar.fetched_at is None:
            confidence *= NEVER_SYNCED
            reasons.append(f"calendar {calendar.name} never synced: its busy times are unknown")
            continue
        if calendar.status == "degraded":
            confidence *= SYNC_FAILED
            reasons.append(
                f"calendar {calendar.name}: last sync failed, using data from "
                f"{calendar.fetched_at:%Y-%m-%d %H:%M}Z"
            )
        age = now - calendar.fetched_at
        if age > 4 * freshness_ttl:
            confidence *= VERY_STALE
            reasons.append(f"calendar {calendar.name} last synced {_minutes(age)} ago")
        elif age > freshness_ttl:
            confidence *= STALE
            reasons.append(f"calendar {calendar.name} last synced {_minutes(age)} ago")
    return confidence, tuple(reasons)


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // 1440} days"


def compute_slots(
    rules: Rules,
    *,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    blockers: Sequence[Blocker] = (),
    calendars: Sequence[CalendarHealth] = (),
    freshness_ttl: timedelta = timedelta(minutes=5),
) -> list[Slot]:
    """Bookable slots inside [window_start, window_end], sorted by start."""
    slot, step = rules.slot, rules.interval
    earliest = max(window_start, now + rules.min_notice)
    horizon = now + rules.max_advance  # starts must be strictly before it
    # A start s is blocked iff x - slot - buffer_after < s < y + buffer_before for a blocker.
    blocked = merge((b.start, b.end) for b in blockers)
    forbidden = [(x - slot - rules.buffer_after, y + rules.buffer_before) for x, y in blocked]
    forbidden_ends = [f[1] for f in forbidden]
    tentative = sorted((b.start, b.end, b.label) for b in blockers if b.tentative)
    # Sorted by start, ends are not: bisect the furthest end reached so far. The first
    # event whose end passes a point is then the earliest-starting one that does.
    tentative_reach = list(accumulate((t[1] for t in tentative), max))

    base, calendar_reasons = _calendar_factors(calendars, now, freshness_ttl)
    all_fine: tuple[str, ...] = (
        ("all connected calendars are fresh",)
        if calendars
        else ("no calendar connected: opening hours and holds only",)
    )
    default_reasons = calendar_reasons or all_fine
    week, month = now + timedelta(days=7), now + timedelta(days=30)
    shared: dict[tuple[str, ...], tuple[str, ...]] = {}

    slots: list[Slot] = []
    for opening in opening_intervals(rules, window_start, window_end):
        anchor = opening.anchor
        for part_start, part_end in opening.pieces:
            lo = max(part_start, earliest)
            hi = min(part_end, window_end) - slot  # last possible start
            if hi < lo:
                continue
            k_lo = _ceil_div(lo - anchor, step)
            k_hi = (hi - anchor) // step
            k_hi = min(k_hi, _ceil_div(horizon - anchor, step) - 1)
            if k_hi < k_lo:
                continue
            allowed = [(k_lo, k_hi)]
            index = bisect_right(forbidden_ends, anchor + k_lo * step)
            while index < len(forbidden) and forbidden[index][0] < anchor + k_hi * step:
                fx, fy = forbidden[index]
                first_blocked = (fx - anchor) // step + 1
                last_blocked = _ceil_div(fy - anchor, step) - 1
                allowed = [
                    piece
                    for a, b in allowed
                    for piece in ((a, min(b, first_blocked - 1)), (max(a, last_blocked + 1), b))
                    if piece[0] <= piece[1]
                ]
                index += 1
            for k_first, k_last in allowed:
                for k in range(k_first, k_last + 1):
                    start = anchor + k * step
                    confidence, extra = base, []
                    if start > month:
                        confidence *= MONTH_AHEAD
                        extra.append("more than 30 days ahead: calendars may still change")
                    elif start > week:
                        confidence *= WEEK_AHEAD
                        extra.append("more than a week ahead")
                    if tentative:
                        near_lo = start - rules.buffer_before - TENTATIVE_WINDOW
                        near_hi = start + slot + rules.buffer_after + TENTATIVE_WINDOW
                        t = bisect_right(tentative_reach, near_lo)
                        if t < len(tentative) and tentative[t][0] < near_hi:
                            confidence *= TENTATIVE_NEARBY
                            extra.append(
                                f"tentative event nearby in {tentative[t][2]} at "
                                f"{tentative[t][0]:%Y-%m-%d %H:%M}Z"
                            )
                    if extra:
                        key = tuple(extra)
                        if key not in shared:  # share one tuple among equal slots
                            shared[key] = calendar_reasons + key
                        reasons = shared[key]
                    else:
                        reasons = default_reasons
                    slots.append(Slot(start, start + slot, round(confidence, 3), reasons))
    slots.sort(key=lambda s: s.start)
    return slots


# -- explanations ------------------------------------------------------------------------


def _hhmm(instant: datetime, zone: ZoneInfo) -> str:
    return instant.astimezone(zone).strftime("%H:%M")


def _utc(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def explain(
    rules: Rules,
    start: datetime,
    *,
    now: datetime,
    blockers: Sequence[Blocker] = (),
    audience: Audience = OPERATOR,
) -> Explanation:
    """Whether a slot starting at `start` is bookable and, if not, every rule against it,
    in words `audience` may read."""
    zone = ZoneInfo(rules.timezone)
    end = start + rules.slot
    findings: list[Finding] = []

    containing = None
    for opening in opening_intervals(rules, start - rules.slot, end + rules.slot):
        if any(a <= start and end <= b for a, b in opening.pieces):
            containing = opening
            break
    local = start.astimezone(zone)
    if containing is None:
        ranges, source = rules.hours_on(local.date())
        day_name = f"{WEEKDAY_NAMES[local.weekday()]} {local.date().isoformat()}"
        if not ranges:
            findings.append(Finding("closed", f"closed on {day_name} ({source})"))
        else:
            opened = ", ".join(str(r) for r in ranges)
            findings.append(
                Finding(
                    "outside_hours",
                    f"{_hhmm(start, zone)}-{_hhmm(end, zone)} local is not within the "
                    f"opening hours {opened} on {day_name} ({source})",
                )
            )
    elif (start - containing.anchor) % rules.interval:
        before = containing.anchor + ((start - containing.anchor) // rules.interval) * (
            rules.interval
        )
        minutes = int(rules.interval.total_seconds() // 60)
        findings.append(
            Finding(
                "off_grid",
                f"not a slot start: slots begin every {minutes} min from "
                f"{_hhmm(containing.anchor, zone)} local; nearest earlier start "
                f"{_hhmm(before, zone)}",
            )
        )

    earliest = now + rules.min_notice
    if start < earliest:
        minutes = int(rules.min_notice.total_seconds() // 60)
        findings.append(
            Finding(
                "min_notice",
                f"starts before the minimum notice of {minutes} min (earliest {_utc(earliest)})",
            )
        )
    horizon = now + rules.max_advance
    if start >= horizon:
        findings.append(
            Finding(
                "max_advance",
                f"beyond the booking horizon of {rules.max_advance.days} days "
                f"(starts must be before {_utc(horizon)})",
            )
        )

    block = (start - rules.buffer_before, end + rules.buffer_after)
    for blocker in sorted(blockers, key=lambda b: (b.start, b.end, b.label)):
        if not (blocker.start < block[1] and block[0] < blocker.end):
            continue
        what = describe(blocker, audience)
        span = f"{_utc(blocker.start)} to {_utc(blocker.end)}"
        if blocker.kind == "hold":
            span += " with its buffers"
        if blocker.start < end and start < blocker.end:
            findings.append(Finding(blocker.kind, f"{what}, {span}, overlaps the slot"))
        elif blocker.end <= start:
            minutes = int(rules.buffer_before.total_seconds() // 60)
            findings.append(
                Finding(
                    f"{blocker.kind}_buffer",
                    f"{what}, {span}, falls in the {minutes}-min buffer before the slot",
                )
            )
        else:
            minutes = int(rules.buffer_after.total_seconds() // 60)
            findings.append(
                Finding(
                    f"{blocker.kind}_buffer",
                    f"{what}, {span}, falls in the {minutes}-min buffer after the slot",
                )
            )
    return Explanation(start, end, not findings, tuple(findings))
