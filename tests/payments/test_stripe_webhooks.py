"""Stripe webhooks move a reservation on once their signature verifies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bookiji.integrations.stripe_gateway import InvalidWebhook, parse_webhook
from bookiji.services.documents import load_reservation_document
from bookiji.store.database import Database
from tests.fakes.stripe_server import StripeServer
from tests.payments.harness import Workflow, build_workflow
from tests.payments.stripe_harness import stripe_gateway_and_faults

StripeFlow = tuple[Workflow, StripeServer]


@pytest.fixture
def stripe_workflow(db: Database) -> Iterator[StripeFlow]:
    with stripe_gateway_and_faults() as (gateway, faults, server):
        yield build_workflow(db, gateway, faults), server


def test_authentication_finished_later_arrives_as_a_signed_webhook(
    stripe_workflow: tuple[Workflow, StripeServer],
) -> None:
    w, server = stripe_workflow
    rid = w.vendor_authorized(10)
    pending = w.payments.authorize(
        rid, "requester", payment_method="pm_card_authenticationRequired", actor="partner"
    )
    assert pending.money == "pending" and pending.intent_id
    server.complete_authentication(pending.intent_id, succeed=True)
    [event] = server.events_of("payment_intent.amount_capturable_updated", pending.intent_id)
    payload, signature = server.signed_event(event)

    kind, intent = parse_webhook(payload, signature, server.webhook_secret)
    assert kind == "payment_intent.amount_capturable_updated" and intent is not None
    assert (intent.reservation_id, intent.party, intent.status) == (
        rid,
        "requester",
        "requires_capture",
    )
    w.payments.apply_intent(intent, actor="stripe:webhook")
    w.payments.apply_intent(intent, actor="stripe:webhook")  # Stripe delivers at least once
    assert load_reservation_document(w.db, rid)["state"] == "COMMITTED"


def test_a_failed_authentication_fails_the_requester_authorization(
    stripe_workflow: tuple[Workflow, StripeServer],
) -> None:
    w, server = stripe_workflow
    rid = w.vendor_authorized(10)
    pending = w.payments.authorize(
        rid, "requester", payment_method="pm_card_authenticationRequired", actor="partner"
    )
    assert pending.intent_id
    server.complete_authentication(pending.intent_id, succeed=False)
    [event] = server.events_of("payment_intent.payment_failed", pending.intent_id)
    _, intent = parse_webhook(*server.signed_event(event), server.webhook_secret)
    assert intent is not None
    w.payments.apply_intent(intent, actor="stripe:webhook")
    document = load_reservation_document(w.db, rid)
    assert document["state"] == "FAILED_REQUESTER_AUTH"
    assert document["payment"]["vendorDeposit"]["state"] == "released"


def test_unsigned_or_stale_webhooks_are_refused(
    stripe_workflow: tuple[Workflow, StripeServer],
) -> None:
    _, server = stripe_workflow
    event = {"id": "evt_1", "object": "event", "type": "payment_intent.succeeded",
             "data": {"object": {"id": "pi_1", "object": "payment_intent"}}}  # fmt: skip
    payload, signature = server.signed_event(event)
    with pytest.raises(InvalidWebhook):
        parse_webhook(payload, signature, "whsec_wrong")
    with pytest.raises(InvalidWebhook):
        parse_webhook(payload + b" ", signature, server.webhook_secret)
    old, old_signature = server.signed_event(event, timestamp=1_000_000_000)
    with pytest.raises(InvalidWebhook):
        parse_webhook(old, old_signature, server.webhook_secret)
    kind, intent = parse_webhook(*server.signed_event({**event, "type": "charge.captured"}),
                                 server.webhook_secret)  # fmt: skip
    assert (kind, intent) == ("charge.captured", None)


def test_refunding_a_destination_charge_takes_the_money_back_from_the_vendor(
    stripe_workflow: tuple[Workflow, StripeServer],
) -> None:
    """The requester pays the vendor's connected account (a destination charge, less the
    platform's fee): a refund reverses that transfer and the fee, or the platform would pay
    the whole refund from its own balance while the vendor kept the money."""
    from dataclasses import replace

    from bookiji.store.models import Vendor
    from bookiji.store.uow import UnitOfWork

    w, server = stripe_workflow
    with UnitOfWork(w.db) as uow:
        vendor = uow.session.get(Vendor, "shop")
        assert vendor is not None
        vendor.payment_account_ref = "acct_shop"
        uow.commit()
    w.payments.settings = replace(w.payments.settings, application_fee_bps=1000)
    rid = w.authorized_both(10)
    assert w.payments.commit(rid, actor="t") == "COMMITTED"
    w.payments.force_compensate(rid, refund=True, actor="op")
    doc = load_reservation_document(w.db, rid)
    paid = doc["payment"]["requesterPayment"]["paymentIntentId"]
    deposit = doc["payment"]["vendorDeposit"]["paymentIntentId"]
    [refund] = server.refunds_of(paid)
    assert refund["amount"] == 5000 and refund["transfer_reversal"] is not None
    [plain] = server.refunds_of(deposit)  # the vendor's own deposit: no transfer to reverse
    assert plain["amount"] == 1000 and plain["transfer_reversal"] is None
