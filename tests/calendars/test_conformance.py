"""One behaviour, every calendar adapter: the same events read the same way."""

from __future__ import annotations

import pytest

from tests.calendars.conformance import (
    EXPECTED,
    STANDARD_EVENTS,
    WINDOW,
    EventSpec,
    SourceFactory,
    at,
)

PROVIDERS = ["ics", "google", "outlook"]


@pytest.fixture(params=PROVIDERS)
def source_factory(request: pytest.FixtureRequest) -> SourceFactory:
    factory: SourceFactory = request.getfixturevalue(f"{request.param}_source_factory")
    return factory


def test_busy_periods_are_clipped_sorted_and_flag_tentative(source_factory: SourceFactory) -> None:
    source = source_factory(STANDARD_EVENTS)
    periods = source.busy(*WINDOW)
    assert [(p.start, p.end, p.tentative) for p in periods] == EXPECTED
    assert all(p.start.tzinfo is not None for p in periods)


def test_cancelled_and_free_events_do_not_block(source_factory: SourceFactory) -> None:
    source = source_factory(
        [
            EventSpec(at(0, 15), at(0, 16), "Cancelled", status="cancelled"),
            EventSpec(at(0, 17), at(0, 18), "Free", transparent=True),
        ]
    )
    assert source.busy(at(0, 0), at(1, 0)) == []


def test_an_empty_calendar_is_free(source_factory: SourceFactory) -> None:
    assert source_factory([]).busy(at(0, 0), at(7, 0)) == []


def test_events_outside_the_range_are_left_out(source_factory: SourceFactory) -> None:
    source = source_factory(STANDARD_EVENTS)
    periods = source.busy(at(4, 0), at(9, 0))
    assert periods == []
