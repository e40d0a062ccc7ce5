"""RFC 3339 at the edges, timezone-aware UTC inside."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from bookiji.domain.errors import ValidationFailed

#: The instants an edge accepts, both included. Any booking falls inside; past the ends the
#: schedule's date arithmetic (a day's hours, buffers, a window's margins) would leave
#: datetime's years 1-9999 and crash instead of answering.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)

#: RFC 3339's date-time: 'T' and 'Z' in either case, seconds required, offset `±HH:MM`.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?",
    re.ASCII,
)


def parse_instant(text: str, *, field: str, strict: bool = True) -> datetime:
    """Parse an RFC 3339 timestamp with an explicit offset; naive input is refused, and so
    is an instant outside EARLIEST..LATEST. `strict=False` also takes the other ISO 8601
    forms `datetime.fromisoformat` reads (a space for 'T', no seconds, `+0100`): for an
    operator typing a time, not for the API."""
    raw = text if strict else text.strip()
    if strict:
        shape = _RFC3339.fullmatch(raw)
        if shape is None:
            raise _not_rfc3339(text, field)
        if shape["offset"] is None:
            raise _naive(text, field)
    fraction = _FRACTION.search(raw)
    if fraction is not None and fraction[1][6:].strip("0"):
        # datetime keeps microseconds and would drop the rest without a word.
        raise ValidationFailed(
            f"{field}: {text!r} is finer than a microsecond; times carry at most six "
            "fractional digits",
            details={"field": field},
        )
    if raw.endswith(("z", "Z")):
        raw = raw[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise _not_rfc3339(text, field) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise _naive(text, field)
    if not EARLIEST <= value <= LATEST:  # compared before conversion, which could overflow
        raise ValidationFailed(
            f"{field}: {text!r} is out of range; times must lie between "
            f"{format_instant(EARLIEST)} and {format_instant(LATEST)}",
            details={"field": field},
        )
    return value.astimezone(UTC)


_FRACTION = re.compile(r"[.,](\d+)", re.ASCII)


def _not_rfc3339(text: str, field: str) -> ValidationFailed:
    return ValidationFailed(
        f"{field}: {text!r} is not an RFC 3339 timestamp (e.g. 2026-12-01T10:00:00Z)",
        details={"field": field},
    )


def _naive(text: str, field: str) -> ValidationFailed:
    return ValidationFailed(
        f"{field}: {text!r} has no UTC offset; add 'Z' or '+01:00'",
        details={"field": field},
    )


def format_instant(value: datetime | None) -> str | None:
    """`2026-12-01T10:00:00Z`: UTC, second precision unless sub-second data exists."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    text = value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z")
