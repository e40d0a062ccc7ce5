"""A brute-force availability oracle, written from the rules in DESIGN.md, not from the
implementation: it walks every minute, asks zoneinfo for that minute's local date and
wall-clock time, and builds each opening interval as the set of minutes whose local time
is in one range of one date. Slow on purpose; used by the property tests and the bench."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from bookiji.domain.availability import Rules
from bookiji.domain.vendors import WEEKDAYS

MINUTE = timedelta(minutes=1)


def oracle(
    rules: Rules,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    blockers: list[tuple[datetime, datetime]],
) -> list[datetime]:
    zone = ZoneInfo(rules.timezone)
    sets: dict[tuple[date, int], list[datetime]] = {}
    minute = window_start - timedelta(days=2)
    while minute < window_end + timedelta(days=2):
        local = minute.astimezone(zone)
        day = local.date()
        ranges = (
            rules.overrides[day]
            if day in rules.overrides
            else rules.weekly.get(WEEKDAYS[day.weekday()], ())
        )
        of_day = local.hour * 60 + local.minute
        for index, hours in enumerate(ranges):
            if hours.start <= of_day < hours.end:
                sets.setdefault((day, index), []).append(minute)
        minute += MINUTE
    busy = set()
    for start, end in blockers:
        m = start
        while m < end:
            busy.add(m)
            m += MINUTE
    slot_minutes = int(rules.slot / MINUTE)
    starts = []
    for minutes in sets.values():
        members = set(minutes)
        anchor = minutes[0]
        s = anchor
        while s <= minutes[-1]:
            inside = all(s + i * MINUTE in members for i in range(slot_minutes))
            block_start, block_end = s - rules.buffer_before, s + rules.slot + rules.buffer_after
            free = not any(
                block_start + i * MINUTE in busy
                for i in range(int((block_end - block_start) / MINUTE))
            )
            if (
                inside
                and free
                and s >= now + rules.min_notice
                and s < now + rules.max_advance
                and s >= window_start
                and s + rules.slot <= window_end
            ):
                starts.append(s)
            s += rules.interval
    return sorted(set(starts))
