"""The one place that wires settings, database, clock and services together."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from bookiji.config import ConfigError, Settings
from bookiji.domain.states import StageTTLs
from bookiji.integrations.calendar_sources import source_builder
from bookiji.services.availability import AvailabilityService
from bookiji.services.calendars import CalendarService
from bookiji.services.clock import Clock, SystemClock
from bookiji.services.payments import PaymentService
from bookiji.services.payments import PaymentSettings as PaymentPolicy
from bookiji.services.ports import PaymentGateway
from bookiji.services.reconcile import Reconciler
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
    gateway: PaymentGateway = field(init=False)
    payments: PaymentService = field(init=False)
    reconciler: Reconciler = field(init=False)

    def __post_init__(self) -> None:
        ttls = stage_ttls(self.settings)
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
        self.gateway = build_gateway(self.settings, self.db, self.clock)
        payment = self.settings.payments
        self.payments = PaymentService(
            self.db,
            self.clock,
            ttls,
            self.gateway,
            self.calendars,
            PaymentPolicy(
                application_fee_bps=payment.application_fee_bps,
                commit_lease=timedelta(seconds=payment.commit_lease_seconds),
                auto_vendor_authorization=payment.auto_vendor_authorization,
            ),
        )
        self.reservations = ReservationService(
            self.db,
            self.clock,
            ttls,
            run_compensations=lambda ids: self.payments.compensations.run(ids=ids),
        )
        self.reconciler = Reconciler(
            self.db,
            self.clock,
            self.reservations,
            self.payments,
            batch_size=self.settings.reconcile.batch_size,
        )

    def close(self) -> None:
        self.db.dispose()


def build_gateway(settings: Settings, db: Database, clock: Clock) -> PaymentGateway:
    payment = settings.payments
    if payment.gateway == "stripe":
        from bookiji.integrations.stripe_gateway import StripeGateway

        if not payment.stripe_api_key:
            raise ConfigError(
                "payments.gateway is stripe but no key is set (BOOKIJI_PAYMENTS__STRIPE_API_KEY)"
            )
        return StripeGateway(payment.stripe_api_key, base_url=payment.stripe_base_url)
    from bookiji.integrations.local_gateway import LocalGateway

    return LocalGateway(db, clock)


def build(settings: Settings, *, clock: Clock | None = None) -> Container:
    return Container(
        settings=settings, db=Database(settings.database_url), clock=clock or SystemClock()
    )
