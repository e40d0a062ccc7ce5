"""How the dashboard writes times, durations and slots. Pure functions of their arguments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo


def duration(delta: timedelta) -> str:
    """`2d 03h`, `1h 02m 03s`, `3m 00s`, `45s` (whole seconds, never negative)."""
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def countdown(deadline: datetime | None, now: datetime) -> tuple[str, bool]:
    """(`in 3m 00s` | `overdue by 1m 10s` | `no deadline`, overdue?)."""
    if deadline is None:
        return "no deadline", False
    if deadline <= now:
        return f"overdue by {duration(now - deadline)}", True
    return f"in {duration(deadline - now)}", False


def clock_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%H:%M:%S")


def short_instant(value: datetime | None) -> str:
    """`2026-12-02 09:00` UTC, or `-`."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def parse(value: str | None) -> datetime | None:
    """A document's RFC 3339 `...Z` instant back to a datetime."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def slot_in(start: datetime, end: datetime, zone: ZoneInfo | None) -> tuple[str, str]:
    """The slot in the vendor's timezone and in UTC, e.g.
    (`Wed 2 Dec 2026 09:00-10:00 America/New_York (UTC-05:00)`, `14:00-15:00 UTC`)."""
    utc = f"{start.astimezone(UTC):%a %d %b %Y %H:%M}-{end.astimezone(UTC):%H:%M} UTC"
    if zone is None:
        return utc, utc
    local_start, local_end = start.astimezone(zone), end.astimezone(zone)
    offset = local_start.strftime("%z")
    offset = f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"
    local = (
        f"{local_start:%a %d %b %Y %H:%M}-{local_end:%H:%M} {zone.key} ({offset})"
        if local_start.date() == local_end.date()
        else f"{local_start:%a %d %b %Y %H:%M} - {local_end:%a %d %b %H:%M} {zone.key} ({offset})"
    )
    return local, utc
