"""compute_slots and explain against the brute-force, minute-by-minute oracle."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bookiji.domain.availability import Blocker, Rules, compute_slots, explain
from bookiji.domain.vendors import WEEKDAYS, TimeRange
from tests.availability_oracle import MINUTE, oracle

ZONES = ["America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
# Days with a DST change in at least one of the zones, and two quiet ones.
BASE_DAYS = [
    date(2026, 3, 8),  # New York springs forward
    date(2026, 3, 29),  # London springs forward
    date(2026, 4, 5),  # Lord Howe falls back 30 minutes
    date(2026, 10, 4),  # Lord Howe springs forward 30 minutes
    date(2026, 10, 25),  # London falls back
    date(2026, 11, 1),  # New York falls back
    date(2026, 6, 15),
    date(2026, 12, 24),
]


@st.composite
def day_ranges(draw: st.DrawFn) -> tuple[TimeRange, ...]:
    cuts = draw(
        st.lists(st.integers(0, 288).map(lambda x: x * 5), min_size=0, max_size=4, unique=True)
    )
    cuts.sort()
    return tuple(TimeRange(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if a < b)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, object]:
    zone = draw(st.sampled_from(ZONES))
    base = draw(st.sampled_from(BASE_DAYS))
    weekly = {day: draw(day_ranges()) for day in WEEKDAYS}
    if draw(st.booleans()):  # often include the classic late-evening-to-midnight range
        weekly[WEEKDAYS[base.weekday()]] = (TimeRange(22 * 60, 24 * 60),)
    overrides = {
        base + timedelta(days=draw(st.integers(-1, 2))): draw(day_ranges())
        for _ in range(draw(st.integers(0, 2)))
    }
    rules = Rules(
        timezone=zone,
        weekly={k: v for k, v in weekly.items() if v},
        overrides=overrides,
        slot=timedelta(minutes=draw(st.integers(1, 36).map(lambda x: x * 5))),
        interval=timedelta(minutes=draw(st.integers(1, 24).map(lambda x: x * 5))),
        buffer_before=timedelta(minutes=draw(st.sampled_from([0, 5, 10, 15, 30, 45]))),
        buffer_after=timedelta(minutes=draw(st.sampled_from([0, 5, 10, 15, 30, 45]))),
        min_notice=timedelta(minutes=draw(st.integers(0, 720))),
        max_advance=timedelta(days=draw(st.integers(1, 5))),
    )
    midnight = datetime(base.year, base.month, base.day, tzinfo=UTC)
    window_start = midnight + timedelta(minutes=draw(st.integers(-1440, 1440)))
    window_end = window_start + timedelta(minutes=draw(st.integers(30, 2 * 1440)))
    now = window_start - timedelta(minutes=draw(st.integers(-600, 2 * 1440)))

    def interval() -> tuple[datetime, datetime]:
        start = window_start + timedelta(minutes=draw(st.integers(-600, 2 * 1440)))
        return start, start + timedelta(minutes=draw(st.integers(1, 300)))

    busy = [interval() for _ in range(draw(st.integers(0, 6)))]
    tentative = [draw(st.booleans()) for _ in busy]
    holds = [interval() for _ in range(draw(st.integers(0, 4)))]
    blockers = [
        Blocker(s, e, "calendar", f"event {i}", t)
        for i, ((s, e), t) in enumerate(zip(busy, tentative, strict=True))
    ] + [Blocker(s, e, "hold", f"res_{i} (HELD)") for i, (s, e) in enumerate(holds)]
    return {
        "rules": rules,
        "window": (window_start, window_end),
        "now": now,
        "blockers": blockers,
        "extra": interval(),
    }


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(scenarios())
def test_slots_match_the_minute_by_minute_oracle(scenario: dict[str, object]) -> None:
    rules: Rules = scenario["rules"]  # type: ignore[assignment]
    window_start, window_end = scenario["window"]  # type: ignore[misc]
    now: datetime = scenario["now"]  # type: ignore[assignment]
    blockers: list[Blocker] = scenario["blockers"]  # type: ignore[assignment]
    got = compute_slots(
        rules, window_start=window_start, window_end=window_end, now=now, blockers=blockers
    )
    expected = oracle(rules, window_start, window_end, now, [(b.start, b.end) for b in blockers])
    assert [s.start for s in got] == expected
    assert all(s.end - s.start == rules.slot for s in got)
    assert all(0 <= s.confidence <= 1 and s.reasons for s in got)


@SETTINGS
@given(scenarios(), st.data())
def test_explain_agrees_with_the_slot_list(
    scenario: dict[str, object], data: st.DataObject
) -> None:
    rules: Rules = scenario["rules"]  # type: ignore[assignment]
    window_start, window_end = scenario["window"]  # type: ignore[misc]
    now: datetime = scenario["now"]  # type: ignore[assignment]
    blockers: list[Blocker] = scenario["blockers"]  # type: ignore[assignment]
    starts = {
        s.start
        for s in compute_slots(
            rules, window_start=window_start, window_end=window_end, now=now, blockers=blockers
        )
    }
    span = int((window_end - window_start - rules.slot) / MINUTE)
    if span < 0:
        return
    probes = list(starts)[:3] + [
        window_start + timedelta(minutes=data.draw(st.integers(0, span))) for _ in range(5)
    ]
    for at in probes:
        verdict = explain(rules, at, now=now, blockers=blockers)
        assert verdict.bookable == (at in starts), (at, verdict.findings)
        assert verdict.bookable or verdict.findings


@SETTINGS
@given(scenarios())
def test_adding_a_busy_interval_never_adds_a_slot(scenario: dict[str, object]) -> None:
    rules: Rules = scenario["rules"]  # type: ignore[assignment]
    window_start, window_end = scenario["window"]  # type: ignore[misc]
    now: datetime = scenario["now"]  # type: ignore[assignment]
    blockers: list[Blocker] = scenario["blockers"]  # type: ignore[assignment]
    extra_start, extra_end = scenario["extra"]  # type: ignore[misc]
    before = {
        s.start
        for s in compute_slots(
            rules, window_start=window_start, window_end=window_end, now=now, blockers=blockers
        )
    }
    after = {
        s.start
        for s in compute_slots(
            rules,
            window_start=window_start,
            window_end=window_end,
            now=now,
            blockers=[*blockers, Blocker(extra_start, extra_end, "calendar", "extra")],
        )
    }
    assert after <= before
