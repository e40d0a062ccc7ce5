"""Authorization, commit and every row of the failure & compensation matrix, on every
gateway and both databases. Each test ends with a clean audit."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bookiji.domain.errors import (
    AuthorizationPending,
    DeadlinePassed,
    InvalidTransition,
    Unavailable,
    ValidationFailed,
)
from bookiji.services.audit import audit
from bookiji.services.documents import load_reservation_document
from tests.payments.harness import Workflow


def doc(w: Workflow, rid: str) -> dict:  # type: ignore[type-arg]
    return load_reservation_document(w.db, rid)


def money(w: Workflow, rid: str) -> tuple[str, str]:
    payment = doc(w, rid)["payment"]
    return payment["vendorDeposit"]["state"], payment["requesterPayment"]["state"]


def intent(w: Workflow, rid: str, party: str) -> str:
    key = "vendorDeposit" if party == "vendor" else "requesterPayment"
    ref = doc(w, rid)["payment"][key]["paymentIntentId"]
    assert ref
    return str(ref)


def assert_clean(w: Workflow) -> None:
    breaches = audit(w.db, w.gateway)
    assert breaches == [], breaches


def test_happy_path_captures_both_and_books(workflow: Workflow) -> None:
    w = workflow
    rid = w.confirmed(10)
    vendor = w.payments.authorize(rid, "vendor", payment_method="pm_card_visa", actor="t")
    assert (vendor.state, vendor.money) == ("AWAITING_REQUESTER_AUTH", "authorized")
    outcome = w.payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="t")
    assert outcome.state == "COMMITTED" and outcome.money == "captured"
    document = doc(w, rid)
    assert [h["to"] for h in document["stateHistory"]][-7:] == [
        "CONFIRMED_BY_VENDOR",
        "AWAITING_VENDOR_AUTH",
        "VENDOR_AUTHORIZED",
        "AWAITING_REQUESTER_AUTH",
        "AUTHORIZED_BOTH",
        "COMMIT_IN_PROGRESS",
        "COMMITTED",
    ]
    assert money(w, rid) == ("captured", "captured")
    for party in ("vendor", "requester"):
        seen = w.gateway.retrieve(intent(w, rid, party))
        assert seen.status == "succeeded"
        assert w.faults.captures(seen.id) == 1
    assert w.gateway.retrieve(intent(w, rid, "vendor")).amount_received == 1000
    assert w.gateway.retrieve(intent(w, rid, "requester")).amount_received == 5000
    # Repeating is harmless: no second capture, no second booking.
    assert w.payments.commit(rid, actor="t") == "COMMITTED"
    again = w.payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="t")
    assert again.state == "COMMITTED"
    assert w.faults.captures(intent(w, rid, "requester")) == 1
    assert_clean(w)


def test_requester_order_is_enforced(workflow: Workflow) -> None:
    rid = workflow.confirmed(10)
    with pytest.raises(InvalidTransition, match="after the vendor deposit"):
        workflow.payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="t")
    with pytest.raises(ValidationFailed):
        workflow.payments.authorize(rid, "banker", actor="t")


def test_vendor_auth_declined_releases_the_hold(workflow: Workflow) -> None:
    w = workflow
    rid = w.confirmed(10)
    outcome = w.payments.authorize(
        rid, "vendor", payment_method="pm_card_chargeDeclined", actor="t"
    )
    assert (outcome.state, outcome.money) == ("FAILED_VENDOR_AUTH", "failed")
    assert doc(w, rid)["stateHistory"][-1]["details"]["declineCode"] == "generic_decline"
    assert w.hold(10)  # the slot is free again
    assert_clean(w)


@pytest.mark.parametrize(
    ("card", "decline"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ],
)
def test_requester_auth_declined_releases_the_vendor_authorization(
    workflow: Workflow, card: str, decline: str
) -> None:
    w = workflow
    rid = w.vendor_authorized(10)
    outcome = w.payments.authorize(rid, "requester", payment_method=card, actor="t")
    assert outcome.state == "FAILED_REQUESTER_AUTH"
    assert money(w, rid) == ("released", "failed")
    assert w.gateway.retrieve(intent(w, rid, "vendor")).status == "canceled"
    [action] = doc(w, rid)["compensationActions"]
    assert (action["party"], action["action"], action["status"]) == (
        "vendor",
        "cancel_authorization",
        "done",
    )
    assert doc(w, rid)["stateHistory"][-1]["details"]["declineCode"] == decline
    assert_clean(w)


def test_three_d_secure_then_authenticated_commits(workflow: Workflow) -> None:
    w = workflow
    rid = w.vendor_authorized(10)
    outcome = w.payments.authorize(
        rid, "requester", payment_method="pm_card_authenticationRequired", actor="t"
    )
    assert outcome.state == "AWAITING_REQUESTER_AUTH" and outcome.money == "pending"
    assert outcome.client_secret and outcome.client_secret.startswith(outcome.intent_id or "?")
    assert outcome.intent_id is not None
    w.faults.complete_authentication(outcome.intent_id, True)
    # The webhook (or the reconcile poll, its fallback) moves the reservation on.
    [report] = [r for r in w.reconciler.run_once() if r.name == "pending_authentications"]
    assert report.processed == 1
    assert doc(w, rid)["state"] == "COMMITTED"
    assert_clean(w)


def test_another_card_while_three_d_secure_waits_is_refused_and_the_hold_lives_on(
    workflow: Workflow,
) -> None:
    """A requester who leaves the 3-D Secure challenge and offers another card: the partner
    is told to finish the first (it can still be completed), and nothing fails."""
    w = workflow
    rid = w.vendor_authorized(10)
    first = w.payments.authorize(
        rid, "requester", payment_method="pm_card_authenticationRequired", actor="t"
    )
    assert first.money == "pending" and first.intent_id and first.client_secret
    again = w.payments.authorize(
        rid, "requester", payment_method="pm_card_authenticationRequired", actor="t"
    )
    refreshed = w.payments.authorize(rid, "requester", actor="t")  # no card: the secret again
    for answer in (again, refreshed):
        assert (answer.state, answer.money) == ("AWAITING_REQUESTER_AUTH", "pending")
        assert (answer.intent_id, answer.client_secret) == (first.intent_id, first.client_secret)

    with pytest.raises(AuthorizationPending) as refused:
        w.payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="t")
    assert refused.value.http_status == 409
    assert refused.value.details["paymentIntentId"] == first.intent_id
    assert doc(w, rid)["state"] == "AWAITING_REQUESTER_AUTH"
    assert money(w, rid) == ("authorized", "pending")
    assert w.gateway.retrieve(first.intent_id).status == "requires_action"

    # The card holder finishes; asking again (no card) adopts the news at once.
    w.faults.complete_authentication(first.intent_id, True)
    done = w.payments.authorize(rid, "requester", actor="t")
    assert (done.state, done.money) == ("COMMITTED", "captured")
    assert_clean(w)


def test_availability_changed_before_commit_releases_both(workflow: Workflow) -> None:
    w = workflow
    rid = w.authorized_both(10)
    # The vendor closes that day after the hold: revalidation must catch it.
    from bookiji.store.uow import UnitOfWork

    with UnitOfWork(w.db) as uow:
        vendor = uow.vendors.get("shop")
        assert vendor is not None
        vendor.overrides = [{"date": "2026-12-02", "hours": []}]
        uow.touch_schedule("shop")
        uow.commit()
    assert w.payments.commit(rid, actor="t") == "FAILED_AVAILABILITY_CHANGED"
    assert money(w, rid) == ("released", "released")
    assert "closed on Wednesday" in doc(w, rid)["stateHistory"][-1]["reason"]
    assert_clean(w)


def test_vendor_capture_fails_releases_both(workflow: Workflow) -> None:
    w = workflow
    rid = w.authorized_both(10)
    w.faults.capture_declined()
    assert w.payments.commit(rid, actor="t") == "FAILED_COMMIT"
    assert money(w, rid) == ("released", "released")
    assert sorted((a["party"], a["action"]) for a in doc(w, rid)["compensationActions"]) == [
        ("requester", "cancel_authorization"),
        ("vendor", "cancel_authorization"),
    ]
    assert_clean(w)


def test_requester_capture_fails_refunds_the_vendor(workflow: Workflow) -> None:
    w = workflow
    rid = w.authorized_both(10)
    # Let the vendor capture through, then decline the requester's.
    from bookiji.services import payments as payments_module

    original = payments_module.PaymentService._capture

    def capture(self, reservation_id, party):  # type: ignore[no-untyped-def]
        if party.value == "requester":
            w.faults.capture_declined()
        return original(self, reservation_id, party)

    payments_module.PaymentService._capture = capture  # type: ignore[method-assign]
    try:
        assert w.payments.commit(rid, actor="t") == "FAILED_COMMIT"
    finally:
        payments_module.PaymentService._capture = original  # type: ignore[method-assign]
    assert money(w, rid) == ("refunded", "released")
    vendor = w.gateway.retrieve(intent(w, rid, "vendor"))
    assert vendor.amount_refunded == vendor.amount_received == 1000
    # Found by search, the refund shows too: Stripe's search without the charge expanded
    # made the money sweep report this refunded deposit as captured (a false alert).
    [found] = [i for i in w.gateway.find_by_reservation(rid) if i.id == vendor.id]
    assert found.amount_refunded == 1000
    [sweep] = [r for r in w.reconciler.run_once() if r.name == "money_sweep"]
    assert (sweep.items, sweep.errors) == ([], [])
    assert_clean(w)


def test_a_provider_outage_during_commit_is_resumed_without_a_second_capture(
    workflow: Workflow,
) -> None:
    w = workflow
    rid = w.authorized_both(10)
    w.faults.capture_outage(1, True)  # applied, but the answer is lost
    with pytest.raises(Unavailable):
        w.payments.commit(rid, actor="t")
    assert doc(w, rid)["state"] == "COMMIT_IN_PROGRESS"
    w.clock.advance(timedelta(minutes=3))  # past the commit lease
    [report] = [r for r in w.reconciler.run_once() if r.name == "stuck_commits"]
    assert report.items == [{"reservationId": rid, "state": "COMMITTED"}]
    for party in ("vendor", "requester"):
        assert w.faults.captures(intent(w, rid, party)) == 1
    assert_clean(w)


def test_a_commit_after_its_deadline_expires_and_captures_nothing(workflow: Workflow) -> None:
    """It captured both and booked when it ran before the expiry job, and expired when it
    ran after: a deadline must not depend on which of the two came first."""
    w = workflow
    rid = w.authorized_both(10)
    w.clock.advance(timedelta(minutes=16))  # AUTHORIZED_BOTH lasts 15
    with pytest.raises(DeadlinePassed) as late:
        w.payments.commit(rid, actor="t")
    assert late.value.details["state"] == "EXPIRED" and doc(w, rid)["state"] == "EXPIRED"
    assert money(w, rid) == ("released", "released")
    for party in ("vendor", "requester"):
        assert w.faults.captures(intent(w, rid, party)) == 0
    assert_clean(w)


def test_both_authorized_but_never_committed_is_committed_by_reconcile(
    workflow: Workflow,
) -> None:
    """A crash between the second authorization and its automatic commit left the
    reservation waiting in AUTHORIZED_BOTH until its deadline released the money."""
    w = workflow
    rid = w.authorized_both(10)
    [report] = [r for r in w.reconciler.run_once() if r.name == "stuck_commits"]
    assert report.items == [] and doc(w, rid)["state"] == "AUTHORIZED_BOTH"  # just now: live
    w.clock.advance(timedelta(minutes=2))
    [report] = [r for r in w.reconciler.run_once() if r.name == "stuck_commits"]
    assert report.items == [{"reservationId": rid, "state": "COMMITTED"}]
    for party in ("vendor", "requester"):
        assert w.faults.captures(intent(w, rid, party)) == 1
    assert_clean(w)


def test_expiry_after_vendor_authorization_releases_it(workflow: Workflow) -> None:
    w = workflow
    rid = w.vendor_authorized(10)
    w.clock.advance(timedelta(minutes=31))
    w.reconciler.run_once()
    assert doc(w, rid)["state"] == "EXPIRED"
    assert money(w, rid) == ("released", "not_started")
    assert w.gateway.retrieve(intent(w, rid, "vendor")).status == "canceled"
    assert_clean(w)


def test_cancel_after_both_authorized_releases_both(workflow: Workflow) -> None:
    w = workflow
    rid = w.authorized_both(10)
    w.reservations.cancel(rid, actor="partner", note="changed plans")
    assert money(w, rid) == ("released", "released")
    assert_clean(w)


def test_forced_compensation_of_a_stuck_commit_and_of_a_committed_booking(
    workflow: Workflow,
) -> None:
    w = workflow
    stuck = w.authorized_both(10)
    w.faults.capture_outage(1, False)
    with pytest.raises(Unavailable):
        w.payments.commit(stuck, actor="t")
    w.payments.force_compensate(stuck, refund=False, actor="op")
    w.payments.force_compensate(stuck, refund=False, actor="op")  # safe twice
    assert doc(w, stuck)["state"] == "FAILED_COMMIT"
    assert money(w, stuck) == ("released", "released")

    done = w.authorized_both(12)
    assert w.payments.commit(done, actor="t") == "COMMITTED"
    with pytest.raises(InvalidTransition, match="--refund"):
        w.payments.force_compensate(done, refund=False, actor="op")
    w.payments.force_compensate(done, refund=True, actor="op")
    assert money(w, done) == ("refunded", "refunded")
    assert_clean(w)


def test_forced_compensation_releases_what_the_provider_holds_and_the_row_does_not_say(
    workflow: Workflow,
) -> None:
    """An authorization the workflow lost track of (the row says `failed`, the provider still
    waits on 3-D Secure, as a retried authorization under the first one's key once left it):
    the audit flags it, and forcing compensation releases it instead of saying there is
    nothing to do."""
    from bookiji.domain.compensation import Failure, Money, Party
    from bookiji.domain.states import ReservationState
    from bookiji.services.compensation import set_money
    from bookiji.store.uow import UnitOfWork

    w = workflow
    rid = w.vendor_authorized(10)
    outcome = w.payments.authorize(
        rid, "requester", payment_method="pm_card_authenticationRequired", actor="t"
    )
    assert outcome.intent_id is not None
    with UnitOfWork(w.db) as uow:
        row = uow.reservations.get(rid, for_update=True)
        assert row is not None
        set_money(row, Party.REQUESTER, Money.FAILED, outcome.intent_id)
        uow.commit()
    w.payments.fail(
        rid,
        Failure.REQUESTER_AUTH_FAILED,
        target=ReservationState.FAILED_REQUESTER_AUTH,
        actor="t",
        reason="requester authorization failed",
    )
    assert money(w, rid) == ("released", "failed")
    assert [b.invariant for b in audit(w.db, w.gateway)] == ["no_live_authorization"]

    plan = w.payments.compensation_preview(rid, refund=False)
    assert [(s["party"], s["action"]) for s in plan] == [("requester", "cancel_authorization")]
    w.payments.force_compensate(rid, refund=False, actor="op")
    assert w.gateway.retrieve(outcome.intent_id).status == "canceled"
    assert money(w, rid) == ("released", "released")
    assert w.payments.compensation_preview(rid, refund=False) == []  # nothing left
    assert_clean(w)


def test_a_commit_interrupted_between_its_captures_is_in_flight_not_a_breach(
    workflow: Workflow,
) -> None:
    """The vendor's capture went through but its answer was lost: until the commit is
    resumed (or unwound), one party is captured and the other not, by design."""
    w = workflow
    rid = w.authorized_both(10)
    w.faults.capture_outage(1, True)
    with pytest.raises(Unavailable):
        w.payments.commit(rid, actor="t")
    assert doc(w, rid)["state"] == "COMMIT_IN_PROGRESS"
    vendor = intent(w, rid, "vendor")
    assert w.gateway.retrieve(vendor).status == "succeeded"
    assert_clean(w)
    assert w.payments.commit(rid, actor="t") == "COMMITTED"
    assert w.faults.captures(vendor) == 1  # resumed: asked, not captured twice
    assert_clean(w)


def test_both_captures_failing_past_the_deadline_releases_both(workflow: Workflow) -> None:
    """The provider stays down: past the commit deadline reconciliation unwinds instead."""
    w = workflow
    rid = w.authorized_both(10)
    w.faults.capture_outage(1, False)
    with pytest.raises(Unavailable):
        w.payments.commit(rid, actor="t")
    w.clock.advance(timedelta(minutes=16))  # past the 15-minute commit stage
    w.faults.capture_outage(1, False)
    [report] = [r for r in w.reconciler.run_once() if r.name == "stuck_commits"]
    assert report.items == [{"reservationId": rid, "state": "FAILED_COMMIT"}]
    assert money(w, rid) == ("released", "released")
    assert "could not finish before its deadline" in doc(w, rid)["stateHistory"][-1]["reason"]
    assert_clean(w)


def test_an_unknown_payment_method_is_a_bad_request_and_fails_nothing(workflow: Workflow) -> None:
    """A mistyped payment method is refused (400) with nothing charged and nothing failed;
    the same request with a good one then goes through."""
    w = workflow
    rid = w.vendor_authorized(10)
    with pytest.raises(ValidationFailed) as refused:
        w.payments.authorize(rid, "requester", payment_method="pm_card_vsia", actor="t")
    assert refused.value.http_status == 400
    assert doc(w, rid)["state"] == "AWAITING_REQUESTER_AUTH"
    assert money(w, rid) == ("authorized", "not_started")
    done = w.payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="t")
    assert (done.state, done.money) == ("COMMITTED", "captured")
    assert_clean(w)


def test_a_partner_cannot_pay_the_vendor_deposit_with_a_card_of_its_own(
    workflow: Workflow,
) -> None:
    w = workflow
    rid = w.confirmed(10)
    with pytest.raises(ValidationFailed) as refused:
        w.payments.authorize(
            rid, "vendor", payment_method="pm_card_amex", actor="partner:p", partner_id="p"
        )
    assert "saved payment method" in refused.value.message
    assert money(w, rid) == ("not_started", "not_started")
    assert_clean(w)


def test_a_calendar_that_cannot_be_read_at_commit_is_judged_on_its_last_good_data(
    workflow: Workflow, tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    """A calendar outage does not stop bookings, and the operator is told which ones were
    revalidated on old data."""
    from pathlib import Path

    from bookiji.config import Settings
    from bookiji.integrations.calendar_sources import source_builder
    from bookiji.services.calendars import CalendarService

    w = workflow
    calendars = CalendarService(w.db, w.clock, source_builder(Settings(database_url="sqlite://")))
    connection = calendars.connect("shop", "ics", str(Path(str(tmp_path)) / "gone.ics"))
    w.payments.calendars = calendars
    rid = w.authorized_both(10)
    with caplog.at_level("WARNING", logger="bookiji.services.payments"):
        assert w.payments.commit(rid, actor="t") == "COMMITTED"
    [warning] = [r.getMessage() for r in caplog.records if "last good data" in r.getMessage()]
    assert rid in warning and connection.id in warning
    assert_clean(w)
