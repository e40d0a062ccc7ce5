"""One workflow harness over every PaymentGateway: the same tests run on LocalGateway and on
StripeGateway (the real `stripe` SDK against the Stripe test server in tests/fakes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bookiji.domain.errors import PaymentDeclined, PaymentProviderError
from bookiji.domain.states import StageTTLs
from bookiji.integrations.local_gateway import LocalGateway
from bookiji.services.clock import ManualClock
from bookiji.services.payments import PaymentService, PaymentSettings
from bookiji.services.ports import PaymentGateway
from bookiji.services.reconcile import Reconciler
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.store.database import Database
from tests.factories import add_vendor

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
DAY = datetime(2026, 12, 2, tzinfo=UTC)


@dataclass
class Faults:
    """Make the provider's next answers fail, the same way on every gateway."""

    capture_declined: Callable[[], None]
    # (calls, after_apply): the next `calls` capture calls fail as an outage would, each
    # after every retry the gateway makes; with after_apply the first was applied anyway.
    capture_outage: Callable[[int, bool], None]
    captures: Callable[[str], int]  # capture operations the provider applied to an intent
    complete_authentication: Callable[[str, bool], object]  # the card holder's 3-D Secure
    # The next authorization is made at the provider, but every answer to it is lost.
    authorize_answer_lost: Callable[[], None]


def local_faults(gateway: LocalGateway) -> Faults:
    def declined() -> None:
        gateway.faults.fail_next(
            "capture",
            PaymentDeclined("the card was declined (card_declined)",
                            details={"declineCode": "card_declined"}),
        )  # fmt: skip

    def outage(count: int, after_apply: bool) -> None:
        for index in range(count):
            gateway.faults.fail_next(
                "capture",
                PaymentProviderError("connection reset", retryable=True),
                after_apply=after_apply and index == 0,
            )

    def captures(intent_id: str) -> int:
        from bookiji.store.models import LocalPaymentIntent
        from bookiji.store.uow import UnitOfWork

        with UnitOfWork(gateway.db, readonly=True) as uow:
            row = uow.session.get(LocalPaymentIntent, intent_id)
            return row.captures if row else 0

    def authenticate(intent_id: str, succeed: bool) -> object:
        return gateway.complete_authentication(intent_id, succeed=succeed)

    def answer_lost() -> None:
        gateway.faults.fail_next(
            "authorize", PaymentProviderError("connection reset", retryable=True), after_apply=True
        )

    return Faults(declined, outage, captures, authenticate, answer_lost)


@dataclass
class Workflow:
    db: Database
    clock: ManualClock
    gateway: PaymentGateway
    faults: Faults
    reservations: ReservationService
    payments: PaymentService
    reconciler: Reconciler

    def hold(self, hour: float, *, vendor: str = "shop", minutes: int = 60) -> str:
        start = DAY + timedelta(hours=hour)
        return self.reservations.create_hold(
            HoldRequest(vendor, start, start + timedelta(minutes=minutes), "req-1"),
            actor="test",
        ).reservation_id

    def confirmed(self, hour: float) -> str:
        rid = self.hold(hour)
        self.reservations.confirm(rid, actor="vendor")
        return rid

    def vendor_authorized(self, hour: float) -> str:
        rid = self.confirmed(hour)
        self.payments.authorize(rid, "vendor", payment_method="pm_card_visa", actor="test")
        return rid

    def authorized_both(self, hour: float) -> str:
        """Both authorized, commit not yet run."""
        rid = self.vendor_authorized(hour)
        self.payments.authorize(
            rid, "requester", payment_method="pm_card_visa", actor="test", auto_commit=False
        )
        return rid


def build_workflow(db: Database, gateway: PaymentGateway, faults: Faults) -> Workflow:
    clock = ManualClock(NOW)
    if isinstance(gateway, LocalGateway):
        gateway.clock = clock
    add_vendor(
        db,
        "shop",
        hours={d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")},
        slot_minutes=60,
        slot_interval_minutes=60,
        price=5000,
        deposit=1000,
    )
    ttls = StageTTLs()
    payments = PaymentService(db, clock, ttls, gateway, None, PaymentSettings())
    reservations = ReservationService(
        db, clock, ttls, run_compensations=lambda ids: payments.compensations.run(ids=ids)
    )
    reconciler = Reconciler(db, clock, reservations, payments)
    return Workflow(db, clock, gateway, faults, reservations, payments, reconciler)
