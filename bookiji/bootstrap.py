"""The one place that wires settings, database, clock and services together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from bookiji.config import ConfigError, Settings
from bookiji.domain.states import StageTTLs
from bookiji.integrations.calendar_sources import source_builder
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.availability import AvailabilityService
from bookiji.services.calendars import CalendarService
from bookiji.services.clock import Clock, SystemClock
from bookiji.services.confirmation import ConfirmationService, installation_key
from bookiji.services.payments import PaymentService
from bookiji.services.payments import PaymentSettings as PaymentPolicy
from bookiji.services.pii import PiiService
from bookiji.services.ports import Notifier, PaymentGateway
from bookiji.services.reconcile import Reconciler
from bookiji.services.reservations import ReservationService
from bookiji.services.tracing import traced, traced_factory
from bookiji.services.vendors import VendorService
from bookiji.services.webhooks import WebhookService
from bookiji.store import crypto
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
    confirmation: ConfirmationService = field(init=False)
    apikeys: ApiKeyService = field(init=False)
    webhooks: WebhookService = field(init=False)
    pii: PiiService = field(init=False)
    _key: bytes | None = field(default=None, init=False, repr=False)
    #: Where new holds' vendor notifications go once committed. None: sent inline (the CLI
    #: shows the outcome); the daemon hands them to a background sender instead, so a
    #: partner's create never waits on a vendor's mail server.
    notification_sink: Callable[[list[str]], object] | None = field(default=None, init=False)

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
        # Adapters reach outside the process: each call is a span (a no-op unless tracing).
        self.calendars = CalendarService(
            self.db, self.clock, traced_factory(source_builder(self.settings), "calendar")
        )
        self.gateway = traced(build_gateway(self.settings, self.db, self.clock), "payments")
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
        notes = self.settings.notifications
        secret = notes.token_secret
        self.confirmation = ConfirmationService(
            self.db,
            self.clock,
            ttls,
            {k: traced(v, "notify") for k, v in build_notifiers(self.settings).items()},
            (lambda: secret.encode()) if secret else self._installation_key,
            answer_url=notes.answer_url,
            on_confirmed=self._after_confirmation,
        )
        self.reservations = ReservationService(
            self.db,
            self.clock,
            ttls,
            run_compensations=lambda ids: self.payments.compensations.run(ids=ids),
            on_confirmed=self._after_confirmation,
            ask_vendor=self.confirmation.plan_ask,
            deliver=self._deliver_notifications,
        )
        self.apikeys = ApiKeyService(self.db, self.clock)
        self.pii = PiiService(self.db)
        from bookiji.integrations.webhook_sender import HttpWebhookSender

        hooks = self.settings.webhooks
        self._webhook_sender = HttpWebhookSender(timeout=hooks.timeout_seconds)
        self.webhooks = WebhookService(
            self.db,
            self.clock,
            traced(self._webhook_sender, "partner_webhook"),
            max_attempts=hooks.max_attempts,
            base_delay=timedelta(seconds=hooks.base_delay_seconds),
            max_delay=timedelta(seconds=hooks.max_delay_seconds),
            # A claimed row's lease: the HTTP timeout applies per phase (connect, send, read).
            send_timeout=timedelta(seconds=3 * hooks.timeout_seconds),
            concurrency=hooks.concurrency,
        )
        self.reconciler = Reconciler(
            self.db,
            self.clock,
            self.reservations,
            self.payments,
            self.confirmation,
            batch_size=self.settings.reconcile.batch_size,
        )

    def _deliver_notifications(self, ids: list[str]) -> None:
        if self.notification_sink is not None:
            self.notification_sink(ids)
            return
        self.confirmation.deliver_many(ids)

    def _after_confirmation(self, reservation_id: str) -> None:
        self.payments.after_confirmation(reservation_id, actor="system:payments")

    def _installation_key(self) -> bytes:
        if self._key is None:
            self._key = installation_key(self.db, self.clock)
        return self._key

    def close(self) -> None:
        self._webhook_sender.close()
        self.db.dispose()


def build_notifiers(settings: Settings) -> dict[str, Notifier]:
    """The channels this installation can use; a vendor gets those it has an address for."""
    from bookiji.integrations.notify import (
        ConsoleNotifier,
        SmtpNotifier,
        TwilioSmsNotifier,
        WebhookNotifier,
    )

    notes = settings.notifications
    notifiers: dict[str, Notifier] = {"console": ConsoleNotifier()}
    if notes.webhook_secret:
        notifiers["webhook"] = WebhookNotifier(notes.webhook_secret)
    if notes.smtp_host and notes.smtp_sender:
        notifiers["email"] = SmtpNotifier(
            notes.smtp_host,
            notes.smtp_port,
            sender=notes.smtp_sender,
            username=notes.smtp_username,
            password=notes.smtp_password,
            starttls=notes.smtp_starttls,
        )
    if notes.twilio_account_sid and notes.twilio_auth_token and notes.twilio_from:
        notifiers["sms"] = TwilioSmsNotifier(
            notes.twilio_account_sid,
            notes.twilio_auth_token,
            from_number=notes.twilio_from,
            base_url=notes.twilio_base_url,
        )
    return notifiers


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
    try:
        crypto.configure(crypto.keys_from(settings.pii_keys, settings.pii_keys_file))
    except crypto.PiiKeyError as exc:
        raise ConfigError(str(exc)) from None
    return Container(
        settings=settings, db=Database(settings.database_url), clock=clock or SystemClock()
    )
