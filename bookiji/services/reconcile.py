"""Reconciliation: the jobs that finish or unwind whatever a crash, an outage or a silent
party left half-done. `bookiji reconcile --once` runs them all once; the daemon on a timer.

Each job is idempotent and reports what it did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlmodel import and_, col, or_, select

from bookiji.domain.compensation import LIVE, Failure, Money, Party
from bookiji.domain.errors import (
    BookijiError,
    DeadlinePassed,
    PaymentProviderError,
    Unavailable,
)
from bookiji.domain.states import FINAL_STATES, ReservationState
from bookiji.domain.timeutil import format_instant
from bookiji.services.clock import Clock
from bookiji.services.compensation import money_of, party_money, party_ref, plan_into, set_money
from bookiji.services.confirmation import ConfirmationService
from bookiji.services.payments import PaymentService
from bookiji.services.reservations import ReservationService
from bookiji.store.database import Database
from bookiji.store.models import JobLease, PaymentOperation, Reservation
from bookiji.store.uow import UnitOfWork

S = ReservationState
_FAILED_FINAL = sorted(s.value for s in FINAL_STATES if s is not S.COMMITTED)
ACTOR = "system:reconcile"
#: How long AUTHORIZED_BOTH may sit before reconcile commits it: the automatic commit
#: follows the second authorization within a request, so a row this old lost its process.
#: (Racing a live commit is safe anyway: the commit's lease lets one worker through.)
ORPHANED_AFTER = timedelta(minutes=1)


@dataclass
class JobReport:
    name: str
    processed: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, **item: Any) -> None:
        self.processed += 1
        self.items.append(item)

    def document(self) -> dict[str, Any]:
        return {"processed": self.processed, "items": self.items, "errors": self.errors}


class Reconciler:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        reservations: ReservationService,
        payments: PaymentService,
        confirmation: ConfirmationService | None = None,
        *,
        batch_size: int = 500,
        sweep_window: timedelta = timedelta(days=7),
    ) -> None:
        self.db = db
        self.clock = clock
        self.reservations = reservations
        self.payments = payments
        self.confirmation = confirmation
        self.batch_size = batch_size
        self.sweep_window = sweep_window

    def jobs(self) -> dict[str, Callable[[], JobReport]]:
        """Every reconciliation job by name, in the order one round runs them."""
        return {
            "expiry": self.expire,
            "vendor_notifications": self.notifications,
            "vendor_authorizations": self.vendor_authorizations,
            "pending_authentications": self.pending_authentications,
            "stuck_commits": self.stuck_commits,
            "stale_authorizations": self.stale_authorizations,
            "compensations": self.compensations,
            "money_sweep": self.money_sweep,
        }

    def run_once(self) -> list[JobReport]:
        return [job() for job in self.jobs().values()]

    # -- jobs ----------------------------------------------------------------------------------

    def expire(self) -> JobReport:
        """Passed deadlines (vendor timeouts included), releasing any authorization; and
        idempotency records past their lifetime."""
        report = JobReport("expiry")
        purged = self.reservations.purge_idempotency()
        if purged:
            report.add(idempotencyKeysPurged=purged)
        for item in self.reservations.expire_due(batch_size=self.batch_size):
            report.add(
                reservationId=item.reservation_id,
                **{"from": item.from_state, "to": item.to_state},
                deadline=format_instant(item.deadline),
            )
        return report

    def notifications(self) -> JobReport:
        """Holds whose vendor was not asked yet, and deliveries due for another attempt."""
        report = JobReport("vendor_notifications")
        if self.confirmation is None:
            return report
        for reservation_id in self._ids(col(Reservation.state) == S.HELD.value):
            for delivery in self.confirmation.request(reservation_id, actor=ACTOR):
                report.add(reservationId=reservation_id, channel=delivery.channel,
                           status=delivery.status)  # fmt: skip
        for delivery in self.confirmation.deliver_due(limit=self.batch_size):
            report.add(reservationId=delivery.reservation_id, channel=delivery.channel,
                       status=delivery.status, error=delivery.error)  # fmt: skip
        return report

    def _ids(self, *conditions: Any, limit: int | None = None) -> list[str]:
        with UnitOfWork(self.db, readonly=True) as uow:
            stmt = select(Reservation.id).where(*conditions).order_by(col(Reservation.updated_at))
            return list(uow.session.exec(stmt.limit(limit or self.batch_size)).all())

    def vendor_authorizations(self) -> JobReport:
        """Confirmed reservations whose automatic deposit authorization has not happened."""
        report = JobReport("vendor_authorizations")
        ids = self._ids(
            col(Reservation.state).in_([S.CONFIRMED_BY_VENDOR.value, S.AWAITING_VENDOR_AUTH.value]),
            col(Reservation.vendor_payment_state) == Money.NOT_STARTED.value,
        )
        for reservation_id in ids:
            try:
                outcome = self.payments.after_confirmation(reservation_id, actor=ACTOR)
            except BookijiError as exc:
                report.errors.append(f"{reservation_id}: {exc.message}")
                continue
            if outcome is not None:
                report.add(reservationId=reservation_id, state=outcome.state)
        return report

    def pending_authentications(self) -> JobReport:
        """Authorizations waiting on 3-D Secure: poll the provider (the webhook's fallback)."""
        report = JobReport("pending_authentications")
        ids = self._ids(
            col(Reservation.state) == S.AWAITING_REQUESTER_AUTH.value,
            col(Reservation.requester_payment_state) == Money.PENDING.value,
        )
        for reservation_id in ids:
            with UnitOfWork(self.db, readonly=True) as uow:
                reservation = uow.reservations.get(reservation_id)
            assert reservation is not None
            ref = reservation.requester_payment_ref
            if ref is None:
                continue
            try:
                intent = self.payments.gateway.retrieve(ref)
                if intent.status != "requires_action":
                    outcome = self.payments.apply_intent(intent, actor=ACTOR)
                    report.add(reservationId=reservation_id, state=outcome.state)
            except BookijiError as exc:
                report.errors.append(f"{reservation_id}: {exc.message}")
        return report

    def stuck_commits(self) -> JobReport:
        """COMMIT_IN_PROGRESS with no live worker: resume from the operation log, or unwind
        once its deadline has passed and the provider still cannot finish it. And
        AUTHORIZED_BOTH left by a crash between the second authorization and its automatic
        commit: committed here, instead of waiting for its deadline to release the money."""
        report = JobReport("stuck_commits")
        now = self.clock.now()
        orphans = self._ids(
            col(Reservation.state) == S.AUTHORIZED_BOTH.value,
            col(Reservation.updated_at) < now - ORPHANED_AFTER,
        )
        for reservation_id in orphans:
            try:
                report.add(
                    reservationId=reservation_id,
                    state=self.payments.commit(reservation_id, actor=ACTOR),
                )
            except DeadlinePassed as exc:  # expired on the spot, its money released
                report.add(reservationId=reservation_id, state=exc.details["state"])
            except BookijiError as exc:
                report.errors.append(f"{reservation_id}: {exc.message}")
        for reservation_id in self._ids(col(Reservation.state) == S.COMMIT_IN_PROGRESS.value):
            with UnitOfWork(self.db, readonly=True) as uow:
                lease = uow.session.get(JobLease, f"commit:{reservation_id}")
                reservation = uow.reservations.get(reservation_id)
            assert reservation is not None
            if lease is not None and lease.expires_at > now:
                continue  # a live worker holds it
            try:
                state = self.payments.commit(reservation_id, actor=ACTOR)
                report.add(reservationId=reservation_id, state=state)
            except Unavailable as exc:
                deadline = reservation.state_deadline
                if deadline is None or now < deadline:
                    report.errors.append(f"{reservation_id}: {exc.message}")
                    continue
                vendor_captured = party_money(reservation, Party.VENDOR) is Money.CAPTURED
                failure = (
                    Failure.REQUESTER_CAPTURE_FAILED
                    if vendor_captured
                    else Failure.BOTH_CAPTURES_FAILED
                )
                self.payments.fail(
                    reservation_id,
                    failure,
                    target=S.FAILED_COMMIT,
                    actor=ACTOR,
                    reason=f"commit could not finish before its deadline: {exc.message}",
                )
                report.add(reservationId=reservation_id, state=S.FAILED_COMMIT.value)
        return report

    def stale_authorizations(self) -> JobReport:
        """Terminal, uncommitted reservations whose money may still be bound: ask the provider
        (by known id, and by reservation metadata for a call whose answer a crash lost),
        adopt what it says, and plan the release or refund."""
        report = JobReport("stale_authorizations")
        since = self.clock.now() - self.sweep_window
        live = sorted(m.value for m in LIVE)
        with UnitOfWork(self.db, readonly=True) as uow:
            unknown = select(PaymentOperation.reservation_id).where(
                col(PaymentOperation.status) == "started"
            )
            # An authorization the provider made whose id the row never recorded (a crash
            # between the two, or the reservation ending while the call was out).
            op, row = PaymentOperation, Reservation
            unrecorded = (
                select(op.reservation_id)
                .join(row, col(row.id) == col(op.reservation_id))
                .where(
                    col(op.kind) == "authorize",
                    col(op.intent_id).is_not(None),
                    or_(
                        and_(
                            col(op.party) == Party.VENDOR.value,
                            or_(
                                col(row.vendor_payment_ref).is_(None),
                                col(row.vendor_payment_ref) != col(op.intent_id),
                            ),
                        ),
                        and_(
                            col(op.party) == Party.REQUESTER.value,
                            or_(
                                col(row.requester_payment_ref).is_(None),
                                col(row.requester_payment_ref) != col(op.intent_id),
                            ),
                        ),
                    ),
                )
            )
            ids = uow.session.exec(
                select(Reservation.id)
                .where(
                    col(Reservation.state).in_(_FAILED_FINAL),
                    or_(
                        col(Reservation.vendor_payment_state).in_(live),
                        col(Reservation.requester_payment_state).in_(live),
                        and_(
                            col(Reservation.updated_at) >= since,
                            or_(
                                col(Reservation.id).in_(unknown),
                                col(Reservation.id).in_(unrecorded),
                            ),
                        ),
                    ),
                )
                .limit(self.batch_size)
            ).all()
        for reservation_id in ids:
            try:
                seen, truth = self._provider_money(reservation_id)
            except PaymentProviderError as exc:
                report.errors.append(f"{reservation_id}: {exc.message}")
                continue
            now = self.clock.now()
            with UnitOfWork(self.db) as uow:
                reservation = uow.reservations.get(reservation_id, for_update=True)
                assert reservation is not None
                for party, (money, intent_id) in truth.items():
                    # Only over what we saw before asking: a compensation that released the
                    # money meanwhile is newer news than the provider's answer we hold.
                    if money in LIVE and party_money(reservation, party) is seen[party]:
                        set_money(reservation, party, money, intent_id)
                created = plan_into(uow, reservation, Failure.OPERATOR_FORCED, now)
                uow.commit()
            if created:
                report.add(
                    reservationId=reservation_id,
                    actions=[f"{a.party}:{a.kind}" for a in created],
                )
        return report

    def _provider_money(
        self, reservation_id: str
    ) -> tuple[dict[Party, Money], dict[Party, tuple[Money, str]]]:
        """What the database said before asking, and what the provider says."""
        with UnitOfWork(self.db, readonly=True) as uow:
            reservation = uow.reservations.get(reservation_id)
        assert reservation is not None
        seen = {party: party_money(reservation, party) for party in Party}
        intents = {
            ref: self.payments.gateway.retrieve(ref)
            for ref in (party_ref(reservation, p) for p in Party)
            if ref is not None
        }
        for intent in self.payments.gateway.find_by_reservation(reservation_id):
            intents.setdefault(intent.id, intent)
        truth: dict[Party, tuple[Money, str]] = {}
        for intent in intents.values():
            if intent.party not in ("vendor", "requester"):
                continue
            money = money_of(intent)
            if money in LIVE:
                truth[Party(intent.party)] = (money, intent.id)
        return seen, truth

    def compensations(self) -> JobReport:
        """Pending compensation actions whose next attempt is due."""
        report = JobReport("compensations")
        for result in self.payments.compensations.run(limit=self.batch_size):
            report.add(
                actionId=result.action_id,
                reservationId=result.reservation_id,
                action=f"{result.party}:{result.kind}",
                status=result.status,
                error=result.error,
            )
        return report

    def money_sweep(self) -> JobReport:
        """Ask the provider about every recently touched reservation and flag any money
        state the database does not explain. Flags only; the other jobs fix."""
        report = JobReport("money_sweep")
        since = self.clock.now() - self.sweep_window
        with UnitOfWork(self.db, readonly=True) as uow:
            rows = uow.session.exec(
                select(Reservation).where(
                    col(Reservation.updated_at) >= since,
                    or_(
                        col(Reservation.vendor_payment_ref).is_not(None),
                        col(Reservation.requester_payment_ref).is_not(None),
                    ),
                )
            ).all()
        for reservation in rows:
            try:
                for problem in unexplained_money(self.payments, reservation):
                    report.add(reservationId=reservation.id, problem=problem)
            except PaymentProviderError as exc:
                report.errors.append(f"{reservation.id}: {exc.message}")
        return report


def unexplained_money(payments: PaymentService, reservation: Reservation) -> list[str]:
    """What the provider holds for this reservation that its state does not allow."""
    problems = []
    state = S(reservation.state)
    known = {party_ref(reservation, p) for p in Party} - {None}
    terminal_uncommitted = state in FINAL_STATES and state is not S.COMMITTED
    for intent in payments.gateway.find_by_reservation(reservation.id):
        if intent.id not in known:
            problems.append(f"unknown payment {intent.id} ({intent.status})")
        captured = intent.status == "succeeded" and intent.amount_refunded < intent.amount_received
        if captured and state is not S.COMMITTED:
            problems.append(f"payment {intent.id} captured but the reservation is {state}")
        if intent.status in ("requires_capture", "requires_action") and terminal_uncommitted:
            problems.append(f"payment {intent.id} still authorized but the reservation is {state}")
    return problems
