"""The outside world as seen by the services: small protocols, one adapter per provider."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from bookiji.domain.busy import BusyPeriod
from bookiji.domain.errors import BookijiError


class CalendarUnavailable(BookijiError):
    """A calendar could not be read (network, auth, quota, a malformed answer).

    Sync keeps the last good data and marks the connection degraded; `retryable` says
    whether trying again later may help (429, 5xx, timeouts) or an operator must act
    (401/403, a missing file, a calendar that does not exist).
    """

    code = "calendar_unavailable"
    http_status = 503

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message, details={"status": status} if status else {})
        self.retryable = retryable
        self.status = status


class CalendarSource(Protocol):
    """Busy periods of one connected calendar."""

    def busy(self, start: datetime, end: datetime) -> list[BusyPeriod]:
        """Every busy period overlapping [start, end), clipped to it, sorted by start.

        Cancelled and transparent (free) events are not busy. Raises CalendarUnavailable.
        """
        ...
