"""The Stripe test server, driven through the real `stripe` SDK over loopback HTTP.

These tests prove wire compatibility: everything goes through `stripe.StripeClient` (form
encoding, headers, error mapping to exception classes, pagination helpers, webhook signature
verification), not through the server's Python API, except for assertions on its ledger.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
import stripe

from tests.fakes.stripe_server import API_VERSION, StripeServer
from tests.payments import stripe_support
from tests.payments.stripe_support import WebhookReceiver, stripe_client

pytestmark = pytest.mark.timeout(60)

stripe_server = stripe_support.stripe_server
webhook_receiver = stripe_support.webhook_receiver

VENDOR_ACCOUNT = "acct_1VendorBookiji01"


def authorize_params(
    payment_method: str = "pm_card_visa",
    *,
    amount: int = 12_000,
    reservation: str = "res_1",
    party: str = "vendor",
    **extra: Any,
) -> dict[str, Any]:
    """What our gateway sends: a manual-capture destination charge, confirmed at once."""
    return {
        "amount": amount,
        "currency": "eur",
        "capture_method": "manual",
        "confirm": True,
        "payment_method": payment_method,
        "allowed_payment_method_types": ["card"],
        "metadata": {"reservation_id": reservation, "party": party},
        "transfer_data": {"destination": VENDOR_ACCOUNT},
        "application_fee_amount": amount // 10,
        **extra,
    }


def authorize(
    client: stripe.StripeClient, payment_method: str = "pm_card_visa", **kw: Any
) -> stripe.PaymentIntent:
    key = f"bkj:{kw.get('reservation', 'res_1')}:{kw.get('party', 'vendor')}:authorize"
    return client.v1.payment_intents.create(
        params=authorize_params(payment_method, **kw), options={"idempotency_key": key}
    )


def header(obj: stripe.StripeObject, name: str) -> str | None:
    response = obj.last_response
    assert response is not None
    return response.headers.get(name)


@pytest.fixture
def client(stripe_server: StripeServer) -> stripe.StripeClient:
    return stripe_client(stripe_server)


# ---------------------------------------------------------------------------- test cards


@pytest.mark.parametrize("payment_method", ["pm_card_visa", "pm_card_mastercard"])
def test_successful_card_is_authorized_for_manual_capture(
    stripe_server: StripeServer, client: stripe.StripeClient, payment_method: str
) -> None:
    pi = authorize(client, payment_method)

    assert pi.object == "payment_intent"
    assert pi.id.startswith("pi_")
    assert pi.status == "requires_capture"
    assert (pi.amount, pi.amount_capturable, pi.amount_received) == (12_000, 12_000, 0)
    assert pi.currency == "eur"
    assert pi.capture_method == "manual"
    assert pi.client_secret.startswith(f"{pi.id}_secret_")
    assert pi.metadata.to_dict() == {"reservation_id": "res_1", "party": "vendor"}
    assert pi.transfer_data.destination == VENDOR_ACCOUNT
    assert pi.application_fee_amount == 1_200
    assert pi.latest_charge.startswith("ch_")
    assert pi.last_payment_error is None and pi.next_action is None
    # As at Stripe, the test token becomes a new PaymentMethod id.
    assert pi.payment_method.startswith("pm_") and pi.payment_method != payment_method
    assert pi.payment_method_types == ["card"]
    assert (header(pi, "Request-Id") or "").startswith("req_")
    assert header(pi, "Stripe-Version") == API_VERSION

    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert (charge.status, charge.captured, charge.amount_captured) == ("succeeded", False, 0)
    brand = "mastercard" if "mastercard" in payment_method else "visa"
    assert charge.payment_method_details.card.brand == brand
    assert [e["type"] for e in stripe_server.events_of(object_id=pi.id)] == [
        "payment_intent.created",
        "payment_intent.amount_capturable_updated",
    ]
    assert stripe_server.intent(pi.id)["status"] == "requires_capture"


@pytest.mark.parametrize(
    ("payment_method", "code", "decline_code"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_visa_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_visa_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
        ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc", "incorrect_cvc"),
        ("pm_card_chargeDeclinedProcessingError", "processing_error", "processing_error"),
    ],
)
def test_declining_card_raises_card_error_and_leaves_intent_requiring_payment_method(
    stripe_server: StripeServer,
    client: stripe.StripeClient,
    payment_method: str,
    code: str,
    decline_code: str,
) -> None:
    with pytest.raises(stripe.CardError) as caught:
        authorize(client, payment_method)

    err = caught.value
    assert err.http_status == 402
    assert err.code == code
    assert err.error.type == "card_error"
    assert err.error.decline_code == decline_code
    assert err.error.message
    assert err.request_id and err.request_id.startswith("req_")
    intent = err.error.payment_intent
    assert intent.status == "requires_payment_method"
    assert intent.payment_method is None  # detached after a failed attempt, as at Stripe
    assert intent.last_payment_error.code == code
    assert intent.last_payment_error.decline_code == decline_code
    assert intent.last_payment_error.charge == intent.latest_charge

    assert stripe_server.intent(intent.id)["status"] == "requires_payment_method"
    assert client.v1.charges.retrieve(intent.latest_charge).status == "failed"
    assert [e["type"] for e in stripe_server.events_of(object_id=intent.id)] == [
        "payment_intent.created",
        "payment_intent.payment_failed",
    ]
    assert stripe_server.captures(intent.id) == 0


@pytest.mark.parametrize(
    "payment_method", ["pm_card_authenticationRequired", "pm_card_threeDSecure2Required"]
)
def test_authentication_required_on_session_then_completed(
    stripe_server: StripeServer, client: stripe.StripeClient, payment_method: str
) -> None:
    pi = authorize(client, payment_method)

    assert pi.status == "requires_action"
    assert pi.next_action.type == "use_stripe_sdk"
    assert pi.amount_capturable == 0
    assert stripe_server.events_of("payment_intent.requires_action", pi.id)

    done = stripe_server.complete_authentication(pi.id)
    assert done["status"] == "requires_capture"

    pi = client.v1.payment_intents.retrieve(pi.id)
    assert (pi.status, pi.amount_capturable, pi.next_action) == ("requires_capture", 12_000, None)
    [event] = stripe_server.events_of("payment_intent.amount_capturable_updated", pi.id)
    assert event["data"]["object"]["status"] == "requires_capture"
    assert event["request"] == {"id": None, "idempotency_key": None}  # not caused by a request
    assert client.v1.payment_intents.capture(pi.id).status == "succeeded"


def test_authentication_failure_fails_the_payment(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = authorize(client, "pm_card_authenticationRequired")
    stripe_server.complete_authentication(pi.id, succeed=False)

    pi = client.v1.payment_intents.retrieve(pi.id)
    assert pi.status == "requires_payment_method"
    assert pi.last_payment_error.code == "payment_intent_authentication_failure"
    assert stripe_server.events_of("payment_intent.payment_failed", pi.id)


def test_card_declining_after_authentication(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = authorize(client, "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds")
    assert pi.status == "requires_action"
    intent = stripe_server.complete_authentication(pi.id)
    assert intent["status"] == "requires_payment_method"
    assert intent["last_payment_error"]["decline_code"] == "insufficient_funds"


def test_authentication_required_off_session_is_a_card_error(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    with pytest.raises(stripe.CardError) as caught:
        authorize(client, "pm_card_authenticationRequired", off_session=True)

    assert caught.value.code == "authentication_required"
    assert caught.value.error.decline_code == "authentication_required"
    assert caught.value.error.payment_intent.status == "requires_payment_method"


def test_redirect_next_action_when_a_return_url_is_given(client: stripe.StripeClient) -> None:
    pi = authorize(client, "pm_card_authenticationRequired", return_url="https://x.test/done")
    assert pi.next_action.type == "redirect_to_url"
    assert pi.next_action.redirect_to_url.return_url == "https://x.test/done"


def test_create_then_confirm_later(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    params = authorize_params()
    del params["confirm"]
    pi = client.v1.payment_intents.create(params=params)
    assert pi.status == "requires_confirmation"
    assert pi.latest_charge is None

    pi = client.v1.payment_intents.confirm(pi.id, options={"idempotency_key": "confirm-1"})
    assert pi.status == "requires_capture"

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.confirm(pi.id)
    assert caught.value.code == "payment_intent_unexpected_state"

    bare = client.v1.payment_intents.create(params={"amount": 500, "currency": "usd"})
    assert bare.status == "requires_payment_method"
    assert bare.automatic_payment_methods.enabled is True  # dynamic payment methods
    pi = client.v1.payment_intents.confirm(
        bare.id, params={"payment_method": "pm_card_visa", "capture_method": "manual"}
    )
    assert pi.status == "requires_capture"


def test_automatic_capture_succeeds_at_once(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = client.v1.payment_intents.create(
        params={
            "amount": 2_000,
            "currency": "usd",
            "confirm": True,
            "payment_method": "pm_card_visa",
        }
    )
    assert (pi.capture_method, pi.status, pi.amount_received) == (
        "automatic_async",
        "succeeded",
        2_000,
    )
    assert stripe_server.captures(pi.id) == 1


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "code", "param"),
    [
        ({"payment_method": "pm_card_doesNotExist"}, "resource_missing", "payment_method"),
        ({"colour": "blue"}, "parameter_unknown", "colour"),
        ({"transfer_data": {"destination": VENDOR_ACCOUNT, "x": "1"}}, "parameter_unknown",
         "transfer_data[x]"),
        ({"amount": None}, "parameter_missing", "amount"),
        ({"amount": "12.5"}, "parameter_invalid_integer", "amount"),
        ({"amount": -5}, "parameter_invalid_integer", "amount"),
        ({"amount": 10}, "amount_too_small", "amount"),
        ({"currency": "euro"}, None, "currency"),
        ({"currency": None}, "parameter_missing", "currency"),
        ({"capture_method": "later"}, None, "capture_method"),
        ({"payment_method_types": ["card"]}, "payment_method_types_no_longer_supported",
         "payment_method_types"),
        ({"automatic_payment_methods": {"enabled": True}}, None, "allowed_payment_method_types"),
        ({"transfer_data": {"destination": "bogus"}}, "resource_missing",
         "transfer_data[destination]"),
    ],
)  # fmt: skip
def test_invalid_requests_are_400s_like_stripe(
    stripe_server: StripeServer,
    client: stripe.StripeClient,
    change: dict[str, Any],
    code: str | None,
    param: str,
) -> None:
    params = {**authorize_params(), **change}
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.create(params=params)

    assert caught.value.http_status == 400
    assert caught.value.code == code
    assert caught.value.param == param
    assert caught.value.error.type == "invalid_request_error"
    assert stripe_server.intents == {}  # nothing was created


def test_payment_method_types_still_works_on_older_api_versions(
    stripe_server: StripeServer,
) -> None:
    old = stripe_client(stripe_server, stripe_version="2025-09-30.clover")
    pi = old.v1.payment_intents.create(
        params={"amount": 1_000, "currency": "usd", "payment_method_types": ["card"]}
    )
    assert pi.payment_method_types == ["card"]
    assert pi.automatic_payment_methods is None


# ---------------------------------------------------------------------------- capture etc.


def test_full_capture(stripe_server: StripeServer, client: stripe.StripeClient) -> None:
    pi = authorize(client)
    captured = client.v1.payment_intents.capture(
        pi.id, options={"idempotency_key": "bkj:res_1:vendor:capture"}
    )

    assert (captured.status, captured.amount_received, captured.amount_capturable) == (
        "succeeded",
        12_000,
        0,
    )
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert (charge.captured, charge.amount_captured) == (True, 12_000)
    assert charge.transfer.startswith("tr_")
    assert stripe_server.captures(pi.id) == 1
    assert stripe_server.events_of("payment_intent.succeeded", pi.id)


def test_partial_capture_releases_the_remainder(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = authorize(client)
    captured = client.v1.payment_intents.capture(pi.id, params={"amount_to_capture": 7_000})

    assert (captured.status, captured.amount_received, captured.amount_capturable) == (
        "succeeded",
        7_000,
        0,
    )
    assert stripe_server.charge_of(pi.id)["amount_captured"] == 7_000


def test_capture_more_than_capturable_is_refused(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = authorize(client)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.capture(pi.id, params={"amount_to_capture": 12_001})
    assert caught.value.param == "amount_to_capture"
    assert stripe_server.captures(pi.id) == 0


def test_capture_in_the_wrong_state_is_unexpected_state(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = authorize(client)
    client.v1.payment_intents.capture(pi.id)

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.capture(pi.id)

    assert caught.value.http_status == 400
    assert caught.value.code == "payment_intent_unexpected_state"
    assert caught.value.error.payment_intent.status == "succeeded"
    assert stripe_server.captures(pi.id) == 1

    declined = client.v1.payment_intents.create(params={**authorize_params(), "confirm": False})
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.capture(declined.id)
    assert caught.value.code == "payment_intent_unexpected_state"


def test_cancel_releases_an_authorization(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = authorize(client)
    canceled = client.v1.payment_intents.cancel(
        pi.id,
        params={"cancellation_reason": "abandoned"},
        options={"idempotency_key": "bkj:res_1:vendor:release"},
    )

    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "abandoned")
    assert canceled.amount_capturable == 0 and canceled.canceled_at
    assert stripe_server.events_of("payment_intent.canceled", pi.id)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.capture(pi.id)
    assert caught.value.code == "payment_intent_unexpected_state"


@pytest.mark.parametrize(
    "payment_method", ["pm_card_chargeDeclined", "pm_card_threeDSecure2Required"]
)
def test_cancel_from_other_cancelable_states(
    client: stripe.StripeClient, payment_method: str
) -> None:
    try:
        pi_id = authorize(client, payment_method).id
    except stripe.CardError as exc:
        pi_id = exc.error.payment_intent.id
    assert client.v1.payment_intents.cancel(pi_id).status == "canceled"


def test_cancel_after_capture_is_unexpected_state(client: stripe.StripeClient) -> None:
    pi = authorize(client)
    client.v1.payment_intents.capture(pi.id)

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.cancel(pi.id)

    assert caught.value.code == "payment_intent_unexpected_state"
    assert "status of succeeded" in str(caught.value.user_message)


def test_expired_authorization_is_canceled_automatically(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = authorize(client)
    stripe_server.expire_authorization(pi.id)
    pi = client.v1.payment_intents.retrieve(pi.id)
    assert (pi.status, pi.cancellation_reason) == ("canceled", "automatic")


# ---------------------------------------------------------------------------- refunds


def test_partial_then_full_refund(stripe_server: StripeServer, client: stripe.StripeClient) -> None:
    pi = authorize(client)
    client.v1.payment_intents.capture(pi.id)

    first = client.v1.refunds.create(
        params={"payment_intent": pi.id, "amount": 2_000},
        options={"idempotency_key": "bkj:res_1:vendor:refund"},
    )
    assert first.object == "refund"
    assert first.id.startswith("re_")
    assert (first.amount, first.status, first.payment_intent) == (2_000, "succeeded", pi.id)
    assert client.v1.charges.retrieve(pi.latest_charge).amount_refunded == 2_000

    rest = client.v1.refunds.create(params={"payment_intent": pi.id, "reverse_transfer": True})
    assert rest.amount == 10_000
    assert rest.transfer_reversal.startswith("trr_")
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (12_000, True)
    assert set(stripe_server.refunds) == {first.id, rest.id}
    assert [r["amount"] for r in stripe_server.refunds_of(pi.id)] == [2_000, 10_000]
    assert len(stripe_server.events_of("charge.refunded")) == 2

    listed = client.v1.refunds.list(params={"payment_intent": pi.id})
    assert [r.id for r in listed.data] == [rest.id, first.id]
    assert client.v1.refunds.retrieve(first.id).amount == 2_000

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 1})
    assert caught.value.code == "charge_already_refunded"


def test_refund_more_than_captured_is_refused(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = authorize(client)
    client.v1.payment_intents.capture(pi.id, params={"amount_to_capture": 5_000})

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 5_001})

    assert caught.value.http_status == 400
    assert caught.value.param == "amount"
    assert stripe_server.refunds == {}


def test_refund_of_an_uncaptured_intent_is_refused(client: stripe.StripeClient) -> None:
    pi = authorize(client)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.refunds.create(params={"payment_intent": pi.id})
    assert caught.value.code == "charge_not_refundable"


# ---------------------------------------------------------------------------- idempotency


def test_same_key_same_params_replays_the_first_response(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    first = authorize(client)
    again = authorize(client)

    assert again.id == first.id
    assert again.to_dict() == first.to_dict()
    assert header(first, "Idempotent-Replayed") is None
    assert header(again, "Idempotent-Replayed") == "true"
    assert header(again, "Original-Request") == header(first, "Request-Id")
    assert header(again, "Request-Id") != header(first, "Request-Id")
    assert header(again, "Idempotency-Key") == "bkj:res_1:vendor:authorize"
    assert list(stripe_server.intents) == [first.id]
    replays = [r for r in stripe_server.requests if r.replayed]
    assert [(r.method, r.path, r.idempotency_key) for r in replays] == [
        ("POST", "/v1/payment_intents", "bkj:res_1:vendor:authorize")
    ]


def test_errors_are_replayed_too(stripe_server: StripeServer, client: stripe.StripeClient) -> None:
    errors = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as caught:
            authorize(client, "pm_card_chargeDeclined")
        errors.append(caught.value)

    assert errors[0].error.payment_intent.id == errors[1].error.payment_intent.id
    assert errors[1].headers.get("Idempotent-Replayed") == "true"
    assert len(stripe_server.intents) == 1

    pi = authorize(client, reservation="res_2")
    client.v1.payment_intents.capture(pi.id, options={"idempotency_key": "cap"})
    for _ in range(2):  # a state error after execution began is saved as well
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.payment_intents.cancel(pi.id, options={"idempotency_key": "late-cancel"})
    assert stripe_server.requests[-1].replayed


def test_validation_errors_are_not_saved_under_the_key(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    options = {"idempotency_key": "k-validation"}
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.create(
            params={**authorize_params(), "colour": "x"}, options=options
        )

    pi = client.v1.payment_intents.create(params=authorize_params(), options=options)
    assert pi.status == "requires_capture"
    assert header(pi, "Idempotent-Replayed") is None


def test_same_key_with_other_params_is_an_idempotency_error(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    authorize(client, amount=12_000)

    with pytest.raises(stripe.IdempotencyError) as caught:
        authorize(client, amount=13_000)
    assert caught.value.http_status == 400
    assert caught.value.error.type == "idempotency_error"

    pi_id = next(iter(stripe_server.intents))
    with pytest.raises(stripe.IdempotencyError):  # same key, another endpoint
        client.v1.payment_intents.capture(
            pi_id, options={"idempotency_key": "bkj:res_1:vendor:authorize"}
        )
    assert len(stripe_server.intents) == 1
    assert stripe_server.captures(pi_id) == 0


def test_idempotency_keys_are_per_api_key(stripe_server: StripeServer) -> None:
    a = stripe_client(stripe_server)
    b = stripe_client(stripe_server, api_key="sk_test_anotherAccountKey123")
    assert authorize(a).id != authorize(b).id
    assert len(stripe_server.intents) == 2


def test_concurrent_request_with_an_in_flight_key_is_a_409(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    stripe_server.fail_next("POST", "/v1/payment_intents", status=None, delay=1.0)
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(authorize(client)))
    first.start()
    deadline = time.monotonic() + 5
    while not stripe_server.requests and time.monotonic() < deadline:
        time.sleep(0.01)

    with pytest.raises(stripe.APIError) as caught:
        authorize(client)
    first.join(timeout=10)

    assert caught.value.http_status == 409
    # v1 APIError/AuthenticationError/RateLimitError leave `.code` None: read `.error.code`.
    assert caught.value.code is None
    assert caught.value.error.code == "idempotency_key_in_use"
    assert caught.value.headers.get("Stripe-Should-Retry") == "true"
    assert [pi.status for pi in results] == ["requires_capture"]
    assert authorize(client).id == results[0].id  # afterwards: a replay


def test_concurrent_captures_with_different_keys_capture_once(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = authorize(client)
    outcomes: list[str] = []
    lock = threading.Lock()

    def capture(n: int) -> None:
        try:
            client.v1.payment_intents.capture(pi.id, options={"idempotency_key": f"cap-{n}"})
            result = "ok"
        except stripe.InvalidRequestError as exc:
            result = str(exc.code)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=capture, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert sorted(outcomes) == ["ok"] + ["payment_intent_unexpected_state"] * 7
    assert stripe_server.captures(pi.id) == 1


# ---------------------------------------------------------------------------- auth, 404


def test_wrong_api_key_is_a_401(stripe_server: StripeServer) -> None:
    bad = stripe_client(stripe_server, api_key="sk_live_notATestKey")
    with pytest.raises(stripe.AuthenticationError) as caught:
        bad.v1.payment_intents.list()
    assert caught.value.http_status == 401
    assert caught.value.error.type == "invalid_request_error"
    assert "Invalid API Key provided" in str(caught.value.user_message)
    assert "notATestKey" not in str(caught.value.user_message)  # masked

    stripe_server.revoke_api_key(stripe_server.api_key)
    with pytest.raises(stripe.AuthenticationError) as caught:
        stripe_client(stripe_server).v1.payment_intents.list()
    assert caught.value.error.code == "api_key_expired"


def test_missing_api_key_is_a_401_in_stripes_shape(stripe_server: StripeServer) -> None:
    response = httpx.post(
        f"{stripe_server.base_url}/v1/payment_intents",
        data={"amount": "100", "currency": "usd"},
        timeout=5,
    )
    assert response.status_code == 401
    assert response.headers["request-id"].startswith("req_")
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "You did not provide an API key" in error["message"]
    assert stripe_server.intents == {}


def test_unknown_ids_and_urls_are_404s(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.retrieve("pi_doesnotexist")
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    assert caught.value.param == "intent"
    assert "No such payment_intent: 'pi_doesnotexist'" in str(caught.value.user_message)

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.capture("pi_doesnotexist")
    assert caught.value.http_status == 404

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.raw_request("get", "/v1/teapots")
    assert caught.value.http_status == 404
    assert "Unrecognized request URL" in str(caught.value.user_message)


def test_connected_account_objects_are_scoped_by_stripe_account(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    direct = stripe_client(stripe_server, stripe_account=VENDOR_ACCOUNT)
    params = {**authorize_params(), "transfer_data": None}
    pi = direct.v1.payment_intents.create(params=params)  # fee allowed: a direct charge
    assert direct.v1.payment_intents.retrieve(pi.id).id == pi.id
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.retrieve(pi.id)


# ---------------------------------------------------------------------------- search, list


def test_search_by_metadata(stripe_server: StripeServer, client: stripe.StripeClient) -> None:
    vendor = authorize(client, reservation="res_1", party="vendor")
    requester = authorize(client, reservation="res_1", party="requester")
    authorize(client, reservation="res_2", party="vendor")

    found = client.v1.payment_intents.search(params={"query": "metadata['reservation_id']:'res_1'"})
    assert found.object == "search_result"
    assert found.url == "/v1/payment_intents/search"
    assert [pi.id for pi in found.data] == [requester.id, vendor.id]  # newest first
    assert found.has_more is False

    both = client.v1.payment_intents.search(
        params={"query": 'metadata["reservation_id"]:"res_1" AND metadata["party"]:"vendor"'}
    )
    assert [pi.id for pi in both.data] == [vendor.id]

    status = client.v1.payment_intents.search(
        params={"query": "status:'requires_capture' AND -metadata['reservation_id']:'res_1'"}
    )
    assert [pi.metadata["reservation_id"] for pi in status.data] == ["res_2"]

    either = client.v1.payment_intents.search(
        params={"query": "metadata['party']:'requester' OR amount>100000"}
    )
    assert [pi.id for pi in either.data] == [requester.id]

    paged = client.v1.payment_intents.search(params={"query": "currency:'eur'", "limit": 2})
    assert paged.has_more is True and paged.next_page
    assert len(list(paged.auto_paging_iter())) == 3

    assert [i["id"] for i in stripe_server.find_intents(reservation_id="res_1")] == [
        requester.id,
        vendor.id,
    ]

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.search(params={"query": "colour:'blue'"})
    assert caught.value.param == "query"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.search(params={"query": "amount>1 AND status:'x' OR amount<5"})


def test_search_lags_writes_when_configured(stripe_server: StripeServer) -> None:
    stripe_server.search_lag = 0.5
    client = stripe_client(stripe_server)
    pi = authorize(client)
    query = {"query": "metadata['reservation_id']:'res_1'"}

    assert client.v1.payment_intents.search(params=query).data == []
    assert client.v1.payment_intents.retrieve(pi.id).id == pi.id  # retrieve is consistent
    time.sleep(0.6)
    assert [p.id for p in client.v1.payment_intents.search(params=query).data] == [pi.id]


def test_list_with_starting_after_pagination(client: stripe.StripeClient) -> None:
    created = [authorize(client, reservation=f"res_{n}").id for n in range(5)]
    newest_first = created[::-1]

    page = client.v1.payment_intents.list(params={"limit": 2})
    assert page.object == "list"
    assert page.url == "/v1/payment_intents"
    assert [pi.id for pi in page.data] == newest_first[:2]
    assert page.has_more is True

    page2 = client.v1.payment_intents.list(params={"limit": 2, "starting_after": page.data[-1].id})
    assert [pi.id for pi in page2.data] == newest_first[2:4]

    last = client.v1.payment_intents.list(params={"limit": 2, "starting_after": newest_first[3]})
    assert [pi.id for pi in last.data] == newest_first[4:]
    assert last.has_more is False

    before = client.v1.payment_intents.list(params={"limit": 2, "ending_before": newest_first[3]})
    assert [pi.id for pi in before.data] == newest_first[1:3]

    everything = client.v1.payment_intents.list(params={"limit": 2})
    assert [pi.id for pi in everything.auto_paging_iter()] == newest_first

    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.list(params={"limit": 101})


def test_expand_latest_charge(client: stripe.StripeClient) -> None:
    pi = authorize(client)
    expanded = client.v1.payment_intents.retrieve(pi.id, params={"expand": ["latest_charge"]})
    assert expanded.latest_charge.object == "charge"
    assert expanded.latest_charge.payment_intent == pi.id


# ---------------------------------------------------------------------------- faults


def test_capture_applied_but_connection_dropped_then_retried_with_same_key(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = authorize(client)
    stripe_server.fail_next("POST", "/capture", after_apply=True, drop=True)
    options = {"idempotency_key": "bkj:res_1:vendor:capture"}

    with pytest.raises(stripe.APIConnectionError):
        client.v1.payment_intents.capture(pi.id, options=options)
    assert stripe_server.intent(pi.id)["status"] == "succeeded"  # it did happen
    assert stripe_server.requests[-1].fault == "after_apply"
    assert stripe_server.requests[-1].status == 0

    retried = client.v1.payment_intents.capture(pi.id, options=options)
    assert retried.status == "succeeded"
    assert header(retried, "Idempotent-Replayed") == "true"
    assert stripe_server.captures(pi.id) == 1


def test_capture_applied_but_500_then_sdk_retry_replays(stripe_server: StripeServer) -> None:
    client = stripe_client(stripe_server, max_network_retries=2)
    pi = authorize(client)
    stripe_server.fail_next("POST", "/capture", status=500, after_apply=True)

    captured = client.v1.payment_intents.capture(pi.id)  # the SDK reuses its generated key

    assert captured.status == "succeeded"
    assert header(captured, "Idempotent-Replayed") == "true"
    attempts = stripe_server.requests_to("/capture")
    assert [r.status for r in attempts] == [500, 200]
    assert attempts[0].idempotency_key == attempts[1].idempotency_key
    assert stripe_server.captures(pi.id) == 1


def test_after_apply_500_carries_stripe_should_retry(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = authorize(client)
    stripe_server.fail_next("POST", "/capture", status=500, after_apply=True)
    with pytest.raises(stripe.APIError) as caught:
        client.v1.payment_intents.capture(pi.id, options={"idempotency_key": "k"})
    assert caught.value.http_status == 500
    assert caught.value.headers.get("Stripe-Should-Retry") == "true"
    assert caught.value.error.type == "api_error"
    assert client.v1.payment_intents.capture(pi.id, options={"idempotency_key": "k"}).status == (
        "succeeded"
    )
    assert stripe_server.captures(pi.id) == 1


@pytest.mark.parametrize("status", [500, 503])
def test_fault_before_the_api_applies_nothing(
    stripe_server: StripeServer, client: stripe.StripeClient, status: int
) -> None:
    pi = authorize(client)
    stripe_server.fail_next("POST", f"/v1/payment_intents/{pi.id}/capture", status=status)
    options = {"idempotency_key": "bkj:res_1:vendor:capture"}

    with pytest.raises(stripe.APIError) as caught:
        client.v1.payment_intents.capture(pi.id, options=options)
    assert caught.value.http_status == status
    assert stripe_server.intent(pi.id)["status"] == "requires_capture"
    assert stripe_server.captures(pi.id) == 0

    retried = client.v1.payment_intents.capture(pi.id, options=options)  # really executes
    assert retried.status == "succeeded"
    assert header(retried, "Idempotent-Replayed") is None
    assert stripe_server.captures(pi.id) == 1


def test_dropped_connection_before_the_api_applies_nothing(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    pi = authorize(client)
    stripe_server.fail_next("POST", "/capture", drop=True)
    options = {"idempotency_key": "bkj:res_1:vendor:capture"}

    with pytest.raises(stripe.APIConnectionError):
        client.v1.payment_intents.capture(pi.id, options=options)
    assert stripe_server.requests[-1].fault == "before"
    assert stripe_server.captures(pi.id) == 0

    retried = client.v1.payment_intents.capture(pi.id, options=options)
    assert header(retried, "Idempotent-Replayed") is None
    assert stripe_server.captures(pi.id) == 1


def test_rate_limit_is_a_429_rate_limit_error(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    stripe_server.fail_next("*", "/v1/payment_intents", status=429, count=2)
    for _ in range(2):
        with pytest.raises(stripe.RateLimitError) as caught:
            authorize(client)
        assert caught.value.http_status == 429
        assert caught.value.headers.get("Stripe-Should-Retry") == "true"
    assert authorize(client).status == "requires_capture"


def test_custom_fault_body_and_headers(
    stripe_server: StripeServer, client: stripe.StripeClient
) -> None:
    stripe_server.fail_next(
        "GET",
        "/v1/payment_intents",
        status=503,
        body={"error": {"type": "api_error", "message": "down for tea"}},
        headers={"Stripe-Should-Retry": "false"},
    )
    with pytest.raises(stripe.APIError) as caught:
        client.v1.payment_intents.list()
    assert caught.value.user_message == "down for tea"
    assert caught.value.headers.get("Stripe-Should-Retry") == "false"


@pytest.mark.parametrize("transport", ["requests", "httpx"])
def test_slow_response_past_the_client_timeout_is_a_connection_error(
    stripe_server: StripeServer, transport: str
) -> None:
    http_client: stripe.HTTPClient = (
        stripe.RequestsClient(timeout=0.3)
        if transport == "requests"
        else stripe.HTTPXClient(timeout=0.3, allow_sync_methods=True)
    )
    client = stripe_client(stripe_server, http_client=http_client)
    stripe_server.fail_next("POST", "/v1/payment_intents", status=None, delay=1.0)

    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError):
        authorize(client)
    assert time.monotonic() - started < 0.9

    # Still executing on the server: a retry with the same key is told to wait ...
    with pytest.raises(stripe.APIError) as caught:
        authorize(client)
    assert caught.value.http_status == 409

    # ... and once it finished, the retry replays the result.
    deadline = time.monotonic() + 5
    while stripe_server.requests[0].status == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    replay = authorize(client)
    assert replay.status == "requires_capture"
    assert header(replay, "Idempotent-Replayed") == "true"
    assert len(stripe_server.intents) == 1


# ---------------------------------------------------------------------------- webhooks


def test_webhooks_are_signed_and_verifiable(
    stripe_server: StripeServer, client: stripe.StripeClient, webhook_receiver: WebhookReceiver
) -> None:
    stripe_server.webhook_url = webhook_receiver.url
    pi = authorize(client)
    client.v1.payment_intents.capture(pi.id, options={"idempotency_key": "cap-1"})

    received = webhook_receiver.wait_for(5)
    assert stripe_server.wait_for_webhooks(timeout=5)
    types = []
    for delivery in received:
        assert delivery.headers["content-type"].startswith("application/json")
        event = stripe.Webhook.construct_event(
            delivery.body, delivery.signature, stripe_server.webhook_secret
        )
        same = client.construct_event(
            delivery.body, delivery.signature, stripe_server.webhook_secret
        )
        assert same.id == event.id
        assert event.object == "event"
        assert event.api_version == API_VERSION
        assert event.livemode is False
        types.append(event.type)
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(delivery.body, delivery.signature, "whsec_wrong")
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(
                delivery.body.replace(b"eur", b"usd"),
                delivery.signature,
                stripe_server.webhook_secret,
            )
    assert types == [
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.amount_capturable_updated",
        "charge.captured",
        "payment_intent.succeeded",
    ]
    captured = json.loads(received[-1].body)
    assert captured["data"]["object"]["id"] == pi.id
    assert captured["request"]["idempotency_key"] == "cap-1"
    assert all(d.ok for d in stripe_server.webhook_deliveries)


def test_failed_webhook_deliveries_are_retried(
    stripe_server: StripeServer, client: stripe.StripeClient, webhook_receiver: WebhookReceiver
) -> None:
    stripe_server.webhook_retry_delay = 0.05
    stripe_server.webhook_url = webhook_receiver.url
    webhook_receiver.fail_next(500)
    client.v1.payment_intents.create(params={"amount": 500, "currency": "usd"})

    first, second = webhook_receiver.wait_for(2)
    assert first.body == second.body  # the same event, delivered again
    assert stripe_server.wait_for_webhooks(timeout=5)
    assert [(d.attempt, d.status) for d in stripe_server.webhook_deliveries] == [
        (1, 500),
        (2, 200),
    ]


def test_signed_event_for_tests_to_post_themselves(stripe_server: StripeServer) -> None:
    client = stripe_client(stripe_server)
    pi = authorize(client)
    [event] = stripe_server.events_of("payment_intent.amount_capturable_updated", pi.id)

    payload, signature = stripe_server.signed_event(event)
    assert signature.startswith("t=") and ",v1=" in signature
    constructed = stripe.Webhook.construct_event(payload, signature, stripe_server.webhook_secret)
    assert constructed.data.object.id == pi.id
    assert constructed.data.object.status == "requires_capture"

    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, signature, "whsec_someoneElse")
    stale, old_signature = stripe_server.signed_event(event, timestamp=int(time.time()) - 3600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(stale, old_signature, stripe_server.webhook_secret)


def test_events_can_be_listed_as_a_polling_fallback(client: stripe.StripeClient) -> None:
    pi = authorize(client)
    client.v1.payment_intents.capture(pi.id)

    succeeded = client.v1.events.list(params={"type": "payment_intent.succeeded"})
    assert [e.data.object.id for e in succeeded.data] == [pi.id]
    everything = client.v1.events.list(params={"type": "payment_intent.*", "limit": 100})
    assert [e.type for e in everything.data] == [  # newest first
        "payment_intent.succeeded",
        "payment_intent.amount_capturable_updated",
        "payment_intent.created",
    ]
    assert client.v1.events.retrieve(succeeded.data[0].id).type == "payment_intent.succeeded"


# ---------------------------------------------------------------------------- request log


def test_requests_are_logged(stripe_server: StripeServer, client: stripe.StripeClient) -> None:
    pi = authorize(client)
    client.v1.payment_intents.retrieve(pi.id)

    create, retrieve = stripe_server.requests
    assert (create.method, create.path, create.status) == ("POST", "/v1/payment_intents", 200)
    assert create.idempotency_key == "bkj:res_1:vendor:authorize"
    assert create.params["metadata"] == {"reservation_id": "res_1", "party": "vendor"}
    assert create.params["transfer_data"] == {"destination": VENDOR_ACCOUNT}
    assert create.params["allowed_payment_method_types"] == ["card"]
    assert create.params["amount"] == "12000"  # form values are strings
    assert create.api_key == stripe_server.api_key
    assert create.headers["stripe-version"] == API_VERSION
    assert (retrieve.method, retrieve.path, retrieve.idempotency_key) == (
        "GET",
        f"/v1/payment_intents/{pi.id}",
        None,
    )
