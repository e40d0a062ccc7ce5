"""The one place that wires settings, database, clock and services together."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from bookiji.config import Settings
from bookiji.domain.states import StageTTLs
from bookiji.integrations.calendar_sources import source_builder
from bookiji.services.availability import AvailabilityService
from bookiji.services.calendars import CalendarService
from bookiji.services.clock import Clock, SystemClock
from bookiji.services.reservations import ReservationService
from bookiji.services.vendors import VendorService
from bookiji.store.database import Database


def stage_ttls(settings: Settings) -> StageTTLs:
    return StageTTLs(
        hold=timedelta(minutes=settings.ttl.hold_minutes),
        authorization=timedelta(minutes=settings.ttl.authorization_minutes),
        commit=timedelta(minutes=settings.ttl.commit_minutes),
    )


@dataclass
class Container:
    settings: Settings
    db: Database
    clock: Clock
    reservations: ReservationService = field(init=False)
    vendors: VendorService = field(init=False)
    availability: AvailabilityService = field(init=False)
    calendars: CalendarService = field(init=False)

    def __post_init__(self) -> None:
        ttls = stage_ttls(self.settings)
        self.reservations = ReservationService(self.db, self.clock, ttls)
        self.vendors = VendorService(self.db, self.clock)
        limits = self.settings.availability
        self.availability = AvailabilityService(
            self.db,
            self.clock,
            cache_ttl=timedelta(seconds=limits.cache_ttl_seconds),
            freshness_ttl=timedelta(seconds=limits.freshness_ttl_seconds),
            max_window=timedelta(days=limits.max_window_days),
        )
        self.calendars = CalendarService(self.db, self.clock, source_builder(self.settings))

    def close(self) -> None:
        self.db.dispose()


def build(settings: Settings, *, clock: Clock | None = None) -> Container:
    return Container(
        settings=settings, db=Database(settings.database_url), clock=clock or SystemClock()
    )
