"""Times at the edges: strict RFC 3339 for the API, lenient ISO 8601 for an operator, and a
range both refuse outside (it used to overflow into a 500 or a traceback)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bookiji.domain.errors import ValidationFailed
from bookiji.domain.timeutil import EARLIEST, LATEST, parse_instant

RANGE = "times must lie between 1970-01-01T00:00:00Z and 9000-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T10:00:00Z", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01t10:00:00z", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T11:00:00+01:00", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T09:30:00-00:30", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T10:00:00.25Z", datetime(2026, 12, 1, 10, 0, 0, 250000, tzinfo=UTC)),
        ("1970-01-01T00:00:00Z", EARLIEST),
        ("9000-01-01T00:00:00Z", LATEST),
    ],
)
def test_rfc_3339_date_times_are_read_as_utc(text: str, expected: datetime) -> None:
    assert parse_instant(text, field="t") == expected
    assert parse_instant(text, field="t", strict=False) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-01 10:00:00Z",  # a space for 'T'
        "20261201T100000Z",  # basic format
        "2026-W49-2T10:00:00Z",  # week date
        "2026-12-01T10:00Z",  # no seconds
        "2026-12-01T10:00:00+0100",  # offset without a colon
    ],
)
def test_other_iso_8601_forms_are_for_operators_only(text: str) -> None:
    with pytest.raises(ValidationFailed, match="is not an RFC 3339 timestamp"):
        parse_instant(text, field="startTime")
    assert parse_instant(text, field="--start", strict=False).tzinfo is UTC


@pytest.mark.parametrize("strict", [True, False])
def test_a_time_without_offset_is_refused(strict: bool) -> None:
    with pytest.raises(ValidationFailed, match="has no UTC offset"):
        parse_instant("2026-12-01T10:00:00", field="t", strict=strict)


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00+01:00",  # converting it to UTC overflowed
        "9999-12-31T23:00:00Z",  # the schedule's date arithmetic overflowed
        "1969-12-31T23:59:59Z",
        "1970-01-01T00:30:00+01:00",  # 1969 in UTC
        "9000-01-01T00:00:01Z",
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_instants_out_of_range_are_refused_naming_the_range(text: str, strict: bool) -> None:
    with pytest.raises(ValidationFailed) as refused:
        parse_instant(text, field="slotStartTime", strict=strict)
    assert refused.value.message == f"slotStartTime: {text!r} is out of range; {RANGE}"
    assert refused.value.details == {"field": "slotStartTime"}


@pytest.mark.parametrize("strict", [True, False])
def test_fractions_finer_than_a_microsecond_are_refused_not_dropped(strict: bool) -> None:
    exact = parse_instant("2026-12-01T10:00:00.123456000Z", field="t", strict=strict)
    assert exact == datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    with pytest.raises(ValidationFailed) as refused:
        parse_instant("2026-12-01T10:00:00.0000001Z", field="slotStartTime", strict=strict)
    assert "finer than a microsecond" in refused.value.message
    assert refused.value.details == {"field": "slotStartTime"}
