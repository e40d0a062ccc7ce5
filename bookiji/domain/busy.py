"""What a calendar tells us: busy periods in UTC, some of them only tentative."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, order=True)
class BusyPeriod:
    """A half-open UTC interval [start, end) during which the vendor is not free.

    Tentative periods still block a slot (the vendor may well be busy) but lower the
    confidence of slots next to them.
    """

    start: datetime
    end: datetime
    tentative: bool = False
    summary: str | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("BusyPeriod needs timezone-aware datetimes")
        if not self.start < self.end:
            raise ValueError(f"BusyPeriod must end after it starts: {self.start} .. {self.end}")
