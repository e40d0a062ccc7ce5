"""RFC 3339 at the edges, timezone-aware UTC inside."""

from __future__ import annotations

from datetime import UTC, datetime

from bookiji.domain.errors import ValidationFailed


def parse_instant(text: str, *, field: str) -> datetime:
    """Parse an RFC 3339 timestamp with an explicit offset; naive input is refused."""
    raw = text.strip()
    if raw.endswith(("z", "Z")):
        raw = raw[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed(
            f"{field}: {text!r} is not an RFC 3339 timestamp (e.g. 2026-12-01T10:00:00Z)",
            details={"field": field},
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationFailed(
            f"{field}: {text!r} has no UTC offset; add 'Z' or '+01:00'",
            details={"field": field},
        )
    return value.astimezone(UTC)


def format_instant(value: datetime | None) -> str | None:
    """`2026-12-01T10:00:00Z`: UTC, second precision unless sub-second data exists."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    text = value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z")
