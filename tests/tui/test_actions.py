"""The dashboard's actions on real money (the embedded payment gateway), on both databases:
the plan a dialog shows is what the service then does."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bookiji.bootstrap import Container
from bookiji.domain.errors import InvalidTransition
from bookiji.services.reservations import HoldRequest
from bookiji.tui.actions import SupportActions
from bookiji.tui.queries import DashboardQueries
from tests.factories import add_vendor
from tests.tui.seed import IDS, NOW, Seeded


def committed(container: Container) -> str:
    add_vendor(container.db, "v1")
    start = NOW + timedelta(days=1)
    rid = container.reservations.create_hold(
        HoldRequest("v1", start, start + timedelta(hours=1), "ann"), actor="partner:test"
    ).reservation_id
    container.reservations.confirm(rid, actor="vendor:test")
    payments = container.payments
    payments.authorize(rid, "vendor", payment_method="pm_card_visa", actor="test")
    payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="test")
    return rid


def test_forcing_compensation_of_a_booking_says_both_are_refunded_and_refunds_both(
    container: Container,
) -> None:
    rid = committed(container)
    queries = DashboardQueries(container.db, container.clock)
    detail = queries.detail(rid)
    assert detail.state == "COMMITTED"
    payment = detail.document["payment"]
    vendor_ref = payment["vendorDeposit"]["paymentIntentId"]
    requester_ref = payment["requesterPayment"]["paymentIntentId"]

    plan = SupportActions(container).compensation_plan(detail)
    assert plan.refund and plan.title == f"Refund committed {rid}?"
    assert plan.lines[:2] == [
        "This reservation is COMMITTED: both parties are refunded.",
        f"{rid} stays COMMITTED (a final state).",
    ]
    assert sorted(plan.lines[2:4]) == sorted(
        [
            f"Then: refund the vendor deposit: 10.00 GBP ({vendor_ref}).",
            f"Then: refund the requester payment: 50.00 GBP ({requester_ref}).",
        ]
    )

    outcome = SupportActions(container).force_compensate(rid, refund=plan.refund)
    assert outcome.severity == "information"
    after = queries.detail(rid).document
    assert after["state"] == "COMMITTED"
    assert (
        after["payment"]["vendorDeposit"]["state"],
        after["payment"]["requesterPayment"]["state"],
    ) == (
        "refunded",
        "refunded",
    )
    assert {(a["party"], a["action"], a["status"]) for a in after["compensationActions"]} == {
        ("vendor", "refund_capture", "done"),
        ("requester", "refund_capture", "done"),
    }
    assert after["stateHistory"][-1]["to"] == "COMMITTED"  # no state change, money only


def test_a_commit_in_flight_cannot_be_cancelled_and_the_refusal_says_what_to_do(
    container: Container, seeded: Seeded
) -> None:
    detail = DashboardQueries(container.db, container.clock).detail(IDS.stuck_commit)
    with pytest.raises(InvalidTransition, match="use force compensation"):
        SupportActions(container).cancel_plan(detail)
    with pytest.raises(InvalidTransition, match="it is final"):
        SupportActions(container).cancel_plan(
            DashboardQueries(container.db, container.clock).detail(IDS.committed)
        )
