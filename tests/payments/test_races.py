"""Authorizations the provider makes while the reservation ends, or whose answer is lost:
money is never left held for a reservation that is gone, and a retry never fails a payment
that went through. Every gateway, both databases; each test ends with a clean audit."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import col, select

from bookiji.domain.errors import DeadlinePassed, Unavailable
from bookiji.services.audit import audit
from bookiji.services.payments import PaymentService
from bookiji.store.models import PaymentOperation
from bookiji.store.uow import UnitOfWork
from tests.payments.harness import Workflow
from tests.payments.test_workflow import assert_clean, doc, intent, money


def _meanwhile(w: Workflow, monkeypatch: pytest.MonkeyPatch, party: str, act: Any) -> None:
    """Run `act` while `party`'s authorization call is out at the provider (another request
    thread, or the expiry job, gets there first)."""
    real = w.gateway.authorize

    def authorize(request: Any, *, idempotency_key: str) -> Any:
        if request.party == party:
            act()
        return real(request, idempotency_key=idempotency_key)

    monkeypatch.setattr(w.gateway, "authorize", authorize)


def test_a_payment_authorized_while_the_partner_cancels_is_released(
    workflow: Workflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = workflow
    rid = w.vendor_authorized(10)

    def cancel() -> None:
        w.reservations.cancel(rid, actor="partner", note="changed plans")

    _meanwhile(w, monkeypatch, "requester", cancel)
    outcome = w.payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="p")
    assert (outcome.state, outcome.money) == ("CANCELLED", "released")
    assert outcome.intent_id is not None
    assert w.gateway.retrieve(outcome.intent_id).status == "canceled"
    assert money(w, rid) == ("released", "released")
    assert_clean(w)


def test_a_deposit_authorized_while_the_stage_expires_is_released(
    workflow: Workflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = workflow
    rid = w.confirmed(10)

    def expire() -> None:
        w.clock.advance(timedelta(days=1))
        w.reconciler.expire()

    _meanwhile(w, monkeypatch, "vendor", expire)
    outcome = w.payments.authorize(rid, "vendor", payment_method="pm_card_visa", actor="t")
    assert (outcome.state, outcome.money) == ("EXPIRED", "released")
    assert w.gateway.retrieve(intent(w, rid, "vendor")).status == "canceled"
    assert_clean(w)


def test_the_provider_news_of_an_authorization_for_an_ended_reservation_releases_it(
    workflow: Workflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its webhook (or a poll) brings the news: answered, not refused (a refusal would have
    Stripe resend it for days), and the money released."""
    w = workflow
    rid = w.vendor_authorized(10)
    seen: list[Any] = []
    real = w.gateway.authorize

    def authorize_then_die(request: Any, *, idempotency_key: str) -> Any:
        seen.append(real(request, idempotency_key=idempotency_key))
        w.reservations.cancel(rid, actor="partner", note="changed plans")
        raise Killed  # the process dies before it hears back

    monkeypatch.setattr(w.gateway, "authorize", authorize_then_die)
    with pytest.raises(Killed):
        w.payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="p")
    monkeypatch.undo()
    assert doc(w, rid)["state"] == "CANCELLED"
    assert [b.invariant for b in audit(w.db, w.gateway)] == ["no_live_authorization"]
    news = w.payments.apply_intent(w.gateway.retrieve(seen[0].id), actor="stripe:webhook")
    assert (news.state, news.money) == ("CANCELLED", "released")
    assert w.gateway.retrieve(seen[0].id).status == "canceled"
    assert_clean(w)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler catches it."""


def test_a_crash_after_the_provider_authorized_is_found_and_released(
    workflow: Workflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between the provider's answer and recording it: the stage expires with the
    row knowing nothing; the audit sees the payment from the operation log, and the
    stale-authorization job finds and releases it."""
    w = workflow
    rid = w.vendor_authorized(10)
    real = PaymentService.apply_intent

    def die(self: PaymentService, news: Any, **kw: Any) -> Any:
        if news.party == "requester":
            raise Killed
        return real(self, news, **kw)

    monkeypatch.setattr(PaymentService, "apply_intent", die)
    with pytest.raises(Killed):
        w.payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="p")
    monkeypatch.undo()
    w.clock.advance(timedelta(days=1))
    w.reconciler.expire()
    assert (doc(w, rid)["state"], money(w, rid)) == ("EXPIRED", ("released", "not_started"))
    assert [b.invariant for b in audit(w.db, w.gateway)] == ["no_live_authorization"]

    found = w.reconciler.stale_authorizations()
    assert [item["actions"] for item in found.items] == [["requester:cancel_authorization"]]
    w.reconciler.compensations()
    assert money(w, rid) == ("released", "released")
    assert w.gateway.retrieve(intent(w, rid, "requester")).status == "canceled"
    assert w.reconciler.stale_authorizations().items == []  # asked once, not every run
    assert_clean(w)


def test_a_retry_with_another_card_after_a_lost_answer_adopts_the_first_payment(
    workflow: Workflow,
) -> None:
    """The first authorization went through but its answer was lost (503: retry). The retry
    offers another card, which the provider refuses under the same key: the first payment
    decides, and the booking goes through on it instead of failing with money held."""
    w = workflow
    rid = w.vendor_authorized(10)
    w.faults.authorize_answer_lost()
    with pytest.raises(Unavailable):
        w.payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="p")
    retry = w.payments.authorize(rid, "requester", payment_method="pm_card_mastercard", actor="p")
    assert (retry.state, retry.money) == ("COMMITTED", "captured")
    assert w.gateway.retrieve(intent(w, rid, "requester")).status == "succeeded"
    with UnitOfWork(w.db, readonly=True) as uow:
        ops = uow.session.exec(
            select(PaymentOperation.party, PaymentOperation.kind, PaymentOperation.status)
            .where(col(PaymentOperation.reservation_id) == rid)
            .order_by(col(PaymentOperation.started_at), col(PaymentOperation.id))
        ).all()
    assert ("requester", "authorize", "succeeded") in ops
    assert_clean(w)


def test_a_failed_three_d_secure_payment_is_voided_at_the_provider(workflow: Workflow) -> None:
    """Left open, the partner's client secret could still confirm it and hold money for a
    reservation that has failed."""
    w = workflow
    rid = w.vendor_authorized(10)
    first = w.payments.authorize(
        rid, "requester", payment_method="pm_card_authenticationRequired", actor="p"
    )
    assert first.intent_id is not None
    w.faults.complete_authentication(first.intent_id, False)
    failed = w.payments.apply_intent(w.gateway.retrieve(first.intent_id), actor="stripe:webhook")
    assert (failed.state, failed.money) == ("FAILED_REQUESTER_AUTH", "failed")
    assert w.gateway.retrieve(first.intent_id).status == "canceled"
    # Stripe's news of the cancellation changes nothing.
    again = w.payments.apply_intent(w.gateway.retrieve(first.intent_id), actor="stripe:webhook")
    assert (again.state, again.money) == ("FAILED_REQUESTER_AUTH", "failed")
    assert_clean(w)


def test_each_capture_is_recorded_with_its_own_amount(workflow: Workflow) -> None:
    w = workflow
    rid = w.authorized_both(10)
    assert w.payments.commit(rid, actor="t") == "COMMITTED"
    with UnitOfWork(w.db, readonly=True) as uow:
        captured = dict(
            uow.session.exec(
                select(PaymentOperation.party, PaymentOperation.amount).where(
                    col(PaymentOperation.reservation_id) == rid,
                    col(PaymentOperation.kind) == "capture",
                )
            ).all()
        )
    assert captured == {"vendor": 1000, "requester": 5000}  # the deposit, the price


# -- a request after its stage's deadline: expired on the spot, whether or not the job ran --


def test_a_vendor_confirmation_after_the_deadline_is_refused_and_the_hold_times_out(
    workflow: Workflow,
) -> None:
    w = workflow
    rid = w.hold(10)
    w.clock.advance(timedelta(minutes=11))  # the hold's 10 minutes are up; no job has run
    with pytest.raises(DeadlinePassed) as late:
        w.reservations.confirm(rid, actor="vendor")
    assert late.value.http_status == 409 and late.value.details["state"] == "FAILED_VENDOR_TIMEOUT"
    assert doc(w, rid)["state"] == "FAILED_VENDOR_TIMEOUT"
    assert w.reconciler.expire().items == []  # nothing left for the job
    assert_clean(w)


def test_a_payment_after_the_deadline_is_refused_before_any_charge(workflow: Workflow) -> None:
    w = workflow
    rid = w.vendor_authorized(10)
    w.clock.advance(timedelta(minutes=31))
    with pytest.raises(DeadlinePassed):
        w.payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="p")
    assert doc(w, rid)["state"] == "EXPIRED"
    assert money(w, rid) == ("released", "not_started")  # the deposit let go, nothing charged
    assert doc(w, rid)["payment"]["requesterPayment"]["paymentIntentId"] is None
    assert_clean(w)


def test_three_d_secure_finished_after_the_deadline_expires_and_releases(
    workflow: Workflow,
) -> None:
    w = workflow
    rid = w.vendor_authorized(10)
    pending = w.payments.authorize(
        rid, "requester", payment_method="pm_card_authenticationRequired", actor="p"
    )
    assert pending.intent_id is not None
    w.clock.advance(timedelta(minutes=31))
    w.faults.complete_authentication(pending.intent_id, True)
    news = w.payments.apply_intent(w.gateway.retrieve(pending.intent_id), actor="stripe:webhook")
    assert (news.state, news.money) == ("EXPIRED", "released")
    assert w.gateway.retrieve(pending.intent_id).status == "canceled"
    assert_clean(w)
