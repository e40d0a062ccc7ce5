"""The calendar scenario every CalendarSource adapter must read the same way.

Each adapter's support module provides a pytest fixture `<provider>_source_factory`: a
callable taking a list of EventSpec and returning a CalendarSource whose calendar (a file, or
a local test server speaking the provider's wire format) contains exactly those events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bookiji.services.ports import CalendarSource


@dataclass(frozen=True)
class EventSpec:
    start: datetime  # timezone-aware UTC
    end: datetime
    summary: str
    status: str = "confirmed"  # confirmed | tentative | cancelled
    transparent: bool = False  # "show as free"


SourceFactory = Callable[[list[EventSpec]], CalendarSource]

BASE = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)  # a Monday


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return BASE + timedelta(days=day, hours=hour, minutes=minute)


STANDARD_EVENTS = [
    EventSpec(at(0, 9), at(0, 10), "Standup"),
    EventSpec(at(0, 13), at(0, 14, 30), "Lunch with supplier", status="tentative"),
    EventSpec(at(0, 15), at(0, 16), "Cancelled call", status="cancelled"),
    EventSpec(at(0, 17), at(0, 18), "Gym (free)", transparent=True),
    EventSpec(at(1, 8), at(1, 12), "Workshop"),
    EventSpec(at(2, 23), at(3, 1), "Night shift"),  # crosses midnight
    EventSpec(at(10, 9), at(10, 10), "Far away"),  # outside the standard window
]

WINDOW = (at(0, 0), at(3, 0, 30))
EXPECTED = [  # (start, end, tentative) inside WINDOW, clipped, sorted
    (at(0, 9), at(0, 10), False),
    (at(0, 13), at(0, 14, 30), True),
    (at(1, 8), at(1, 12), False),
    (at(2, 23), at(3, 0, 30), False),
]
