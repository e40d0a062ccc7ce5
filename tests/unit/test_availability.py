"""Availability by example: DST edges, midnight, overrides, buffers, explanations, confidence."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from bookiji.domain.availability import (
    EXPLAIN,
    OPERATOR,
    Audience,
    Blocker,
    CalendarHealth,
    Rules,
    compute_slots,
    describe,
    explain,
)
from bookiji.domain.vendors import WEEKDAYS, TimeRange

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def hm(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def rules(
    zone: str,
    hours: str = "09:00-17:00",
    *,
    slot: int = 60,
    interval: int | None = None,
    overrides: dict[date, str] | None = None,
    **extra: timedelta,
) -> Rules:
    def ranges(text: str) -> tuple[TimeRange, ...]:
        return tuple(
            TimeRange(hm(part.split("-")[0]), hm(part.split("-")[1]))
            for part in text.split(",")
            if part
        )

    return Rules(
        timezone=zone,
        weekly={day: ranges(hours) for day in WEEKDAYS},
        overrides={d: ranges(h) for d, h in (overrides or {}).items()},
        slot=timedelta(minutes=slot),
        interval=timedelta(minutes=interval or slot),
        max_advance=extra.pop("max_advance", timedelta(days=3650)),
        **extra,
    )


def z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def starts(r: Rules, start: str, end: str, **kwargs: object) -> list[str]:
    slots = compute_slots(r, window_start=z(start), window_end=z(end), now=NOW, **kwargs)  # type: ignore[arg-type]
    return [s.start.strftime("%m-%d %H:%M") for s in slots]


# -- DST -----------------------------------------------------------------------------------


def test_new_york_spring_forward_day_is_an_hour_short() -> None:
    r = rules("America/New_York", "01:00-03:00", slot=30)
    # 01:00 EST = 06:00Z; 03:00 EDT = 07:00Z: one real hour.
    assert starts(r, "2026-03-08T00:00Z", "2026-03-08T12:00Z") == ["03-08 06:00", "03-08 06:30"]


def test_new_york_fall_back_day_is_an_hour_long() -> None:
    r = rules("America/New_York", "01:00-03:00", slot=60)
    # 01:00 EDT = 05:00Z; 03:00 EST = 08:00Z: three real hours.
    assert starts(r, "2026-11-01T00:00Z", "2026-11-01T12:00Z") == [
        "11-01 05:00",
        "11-01 06:00",
        "11-01 07:00",
    ]


def test_a_range_inside_the_repeated_hour_happens_twice() -> None:
    r = rules("America/New_York", "01:15-01:45", slot=15)
    assert starts(r, "2026-11-01T00:00Z", "2026-11-01T12:00Z") == [
        "11-01 05:15",
        "11-01 05:30",
        "11-01 06:15",
        "11-01 06:30",
    ]


def test_london_spring_forward_and_fall_back() -> None:
    r = rules("Europe/London", "00:30-02:30", slot=30)
    # 29 March: 01:00 GMT jumps to 02:00 BST; 00:30 GMT = 00:30Z, 02:30 BST = 01:30Z.
    assert starts(r, "2026-03-29T00:00Z", "2026-03-29T12:00Z") == ["03-29 00:30", "03-29 01:00"]
    # 25 October: 02:00 BST falls back to 01:00 GMT; 00:30 BST = 23:30Z, 02:30 GMT = 02:30Z.
    assert len(starts(r, "2026-10-24T22:00Z", "2026-10-25T12:00Z")) == 6


def test_lord_howe_shifts_by_thirty_minutes() -> None:
    r = rules("Australia/Lord_Howe", "01:00-03:00", slot=30)
    # 4 October 2026: 02:00 +10:30 becomes 02:30 +11:00: the range lasts 90 minutes.
    slots = starts(r, "2026-10-03T12:00Z", "2026-10-03T18:00Z")
    assert len(slots) == 3


def test_kolkata_half_hour_offset() -> None:
    r = rules("Asia/Kolkata", "09:00-10:00", slot=60)
    assert starts(r, "2026-06-15T00:00Z", "2026-06-15T12:00Z") == ["06-15 03:30"]


# -- hours, overrides, window ---------------------------------------------------------------


def test_a_range_ending_at_midnight_allows_a_slot_ending_at_midnight_but_not_past_it() -> None:
    r = rules("Europe/London", "22:00-24:00", slot=60, interval=30)
    assert starts(r, "2026-06-15T00:00Z", "2026-06-16T06:00Z") == [
        "06-15 21:00",  # 22:00 BST
        "06-15 21:30",
        "06-15 22:00",  # 23:00-24:00 BST, the last one
    ]


def test_overrides_replace_the_weekly_hours_for_their_date() -> None:
    r = rules(
        "UTC",
        "09:00-12:00",
        overrides={date(2026, 12, 24): "10:00-11:00", date(2026, 12, 25): ""},
    )
    assert starts(r, "2026-12-24T00:00Z", "2026-12-27T00:00Z") == [
        "12-24 10:00",
        "12-26 09:00",
        "12-26 10:00",
        "12-26 11:00",
    ]


def test_slots_must_lie_inside_the_window_and_respect_notice_and_horizon() -> None:
    r = rules(
        "UTC",
        "09:00-17:00",
        min_notice=timedelta(hours=2),
        max_advance=timedelta(days=1),
    )
    now = datetime(2026, 6, 15, 8, 30, tzinfo=UTC)
    got = compute_slots(
        r, window_start=z("2026-06-15T11:30Z"), window_end=z("2026-06-16T10:00Z"), now=now
    )
    assert (
        [s.start.strftime("%d %H:%M") for s in got]
        == [
            "15 12:00",
            "15 13:00",
            "15 14:00",
            "15 15:00",
            "15 16:00",
            "16 09:00",  # 16 09:00 < now + 1 day (16 08:30)? no: 09:00 > 08:30 -> excluded
        ][:-1]
    )


def test_buffers_apply_to_calendar_events_and_holds() -> None:
    r = rules(
        "UTC",
        "09:00-13:00",
        buffer_before=timedelta(minutes=15),
        buffer_after=timedelta(minutes=15),
    )
    busy = [Blocker(z("2026-06-15T10:50Z"), z("2026-06-15T11:00Z"), "calendar", "work: call")]
    # 10:00-11:00 overlaps the call; 09:00-10:00's after-buffer ends 10:15; 11:00's before-buffer
    # starts 10:45 and touches the call.
    assert starts(r, "2026-06-15T00:00Z", "2026-06-16T00:00Z", blockers=busy) == [
        "06-15 09:00",
        "06-15 12:00",
    ]


# -- explanations ---------------------------------------------------------------------------


def findings(r: Rules, at: str, **kwargs: object) -> dict[str, str]:
    verdict = explain(r, z(at), now=NOW, **kwargs)  # type: ignore[arg-type]
    return {f.rule: f.message for f in verdict.findings}


def test_explain_names_closed_days_and_hours() -> None:
    r = Rules(
        timezone="Europe/London",
        weekly={"mon": (TimeRange(hm("09:00"), hm("17:00")),)},
        overrides={date(2026, 12, 28): ()},
        slot=timedelta(minutes=60),
        interval=timedelta(minutes=60),
        max_advance=timedelta(days=3650),
    )
    assert (
        "closed on Sunday 2026-12-27 (weekly hours)" in findings(r, "2026-12-27T10:00Z")["closed"]
    )
    assert "date override" in findings(r, "2026-12-28T10:00Z")["closed"]
    outside = findings(r, "2026-12-21T16:30Z")["outside_hours"]
    assert "09:00-17:00" in outside and "Monday 2026-12-21" in outside
    assert "every 60 min from 09:00" in findings(r, "2026-12-21T10:30Z")["off_grid"]
    assert explain(r, z("2026-12-21T10:00Z"), now=NOW).bookable


def test_explain_names_events_holds_and_buffers() -> None:
    r = rules("UTC", "09:00-17:00", buffer_before=timedelta(minutes=30))
    blockers = [
        Blocker(
            z("2026-06-15T09:40Z"), z("2026-06-15T09:50Z"), "calendar", "google:work 'Dentist'"
        ),
        Blocker(z("2026-06-15T10:30Z"), z("2026-06-15T11:30Z"), "hold", "res_1 (HELD)"),
    ]
    got = findings(r, "2026-06-15T10:00Z", blockers=blockers)
    assert (
        "'Dentist'" in got["calendar_buffer"] and "30-min buffer before" in got["calendar_buffer"]
    )
    assert "res_1 (HELD)" in got["hold"] and "overlaps the slot" in got["hold"]


def test_explain_names_notice_and_horizon() -> None:
    r = rules("UTC", "00:00-24:00", min_notice=timedelta(hours=1), max_advance=timedelta(days=2))
    assert "minimum notice of 60 min" in findings(r, "2026-01-01T00:00Z")["min_notice"]
    assert "horizon of 2 days" in findings(r, "2026-01-03T00:00Z")["max_advance"]


# -- confidence -----------------------------------------------------------------------------

FRESH = timedelta(minutes=5)
DAY_RULES = rules("UTC", "09:00-10:00")


def one_slot(**kwargs: object) -> tuple[float, tuple[str, ...]]:
    slot = compute_slots(
        DAY_RULES,
        window_start=z("2026-01-02T00:00Z"),
        window_end=z("2026-01-03T00:00Z"),
        now=NOW,
        freshness_ttl=FRESH,
        **kwargs,  # type: ignore[arg-type]
    )[0]
    return slot.confidence, slot.reasons


@pytest.mark.parametrize(
    ("calendar", "expected", "fragment"),
    [
        (CalendarHealth("ics:a", "ok", NOW - timedelta(minutes=1)), 1.0, "fresh"),
        (CalendarHealth("ics:a", "never_synced", None), 0.5, "never synced"),
        (CalendarHealth("ics:a", "degraded", NOW - timedelta(minutes=1)), 0.8, "last sync failed"),
        (CalendarHealth("ics:a", "ok", NOW - timedelta(minutes=10)), 0.9, "last synced 10 min ago"),
        (CalendarHealth("ics:a", "ok", NOW - timedelta(minutes=30)), 0.75, "last synced 30 min"),
    ],
)
def test_calendar_freshness_factors(
    calendar: CalendarHealth, expected: float, fragment: str
) -> None:
    confidence, reasons = one_slot(calendars=[calendar])
    assert confidence == expected
    assert any(fragment in r for r in reasons)


def test_no_calendar_is_full_confidence_with_a_reason() -> None:
    assert one_slot() == (1.0, ("no calendar connected: opening hours and holds only",))


def test_tentative_event_nearby_lowers_confidence() -> None:
    nearby = Blocker(z("2026-01-02T10:20Z"), z("2026-01-02T10:40Z"), "calendar", "ics:work",
                     True, title="Maybe: Jane")  # fmt: skip
    far = Blocker(z("2026-01-02T12:00Z"), z("2026-01-02T13:00Z"), "calendar", "ics:work", True)
    assert one_slot(blockers=[far])[0] == 1.0
    confidence, reasons = one_slot(blockers=[nearby])
    assert confidence == 0.9
    assert "tentative event nearby in ics:work at 2026-01-02 10:20Z" in reasons[0]
    assert "Jane" not in " ".join(reasons)  # the event's title is the vendor's private data


def test_a_long_tentative_event_nearby_counts_beside_a_later_shorter_one() -> None:
    """Sorted by start, the ends of tentative events are not sorted: a long one ending just
    before the slot must not be hidden by a short one that starts after it."""
    long = Blocker(z("2026-01-01T12:00Z"), z("2026-01-02T08:45Z"), "calendar", "ics:work", True)
    short = Blocker(z("2026-01-01T13:00Z"), z("2026-01-01T13:30Z"), "calendar", "ics:work", True)
    assert one_slot(blockers=[long])[0] == 0.9
    confidence, reasons = one_slot(blockers=[long, short])
    assert confidence == 0.9
    assert "tentative event nearby in ics:work at 2026-01-01 12:00Z" in reasons[0]


def test_each_audience_reads_only_what_it_may_of_a_blocker() -> None:
    event = Blocker(z("2026-01-02T10:00Z"), z("2026-01-02T11:00Z"), "calendar", "ics:work",
                    title="Therapy - Jane")  # fmt: skip
    held = Blocker(z("2026-01-02T12:00Z"), z("2026-01-02T13:00Z"), "hold",
                   "res_1 (HELD, slot 12:00-13:00Z)", owner="acme")  # fmt: skip
    acme, globex = Audience(partner_id="acme"), Audience(partner_id="globex")
    assert describe(event, EXPLAIN) == "calendar event ics:work 'Therapy - Jane'"
    assert describe(event, OPERATOR) == "calendar event ics:work"
    assert describe(event, acme) == "a busy time in the vendor's calendar"
    assert (
        describe(held, OPERATOR)
        == describe(held, acme)
        == "hold/booking res_1 (HELD, slot 12:00-13:00Z)"
    )
    assert describe(held, globex) == "another hold or booking"
    verdict = explain(rules("UTC", "09:00-17:00"), z("2026-01-02T10:00Z"),
                      now=z("2026-01-01T00:00Z"), blockers=[event], audience=acme)  # fmt: skip
    assert [f.message for f in verdict.findings] == [
        "a busy time in the vendor's calendar, 2026-01-02 10:00Z to 2026-01-02 11:00Z, "
        "overlaps the slot"
    ]


def test_distance_into_the_future_and_factors_multiply() -> None:
    far_rules = rules("UTC", "09:00-10:00")
    week = compute_slots(
        far_rules, window_start=z("2026-01-12T00:00Z"), window_end=z("2026-01-13T00:00Z"), now=NOW
    )[0]
    month = compute_slots(
        far_rules,
        window_start=z("2026-02-12T00:00Z"),
        window_end=z("2026-02-13T00:00Z"),
        now=NOW,
        calendars=[CalendarHealth("g", "degraded", NOW)],
    )[0]
    assert week.confidence == 0.95 and week.reasons == ("more than a week ahead",)
    assert month.confidence == round(0.8 * 0.9, 3)
    assert len(month.reasons) == 2
