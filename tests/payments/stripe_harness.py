"""StripeGateway, built the production way, against a fresh Stripe test server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bookiji.integrations.stripe_gateway import StripeGateway
from tests.fakes.stripe_server import StripeServer
from tests.payments.harness import Faults

CARD_DECLINED = {
    "error": {
        "type": "card_error",
        "code": "card_declined",
        "decline_code": "generic_decline",
        "message": "Your card was declined.",
    }
}


@contextmanager
def stripe_gateway_and_faults() -> Iterator[tuple[StripeGateway, Faults, StripeServer]]:
    with StripeServer() as server:
        gateway = StripeGateway(
            server.api_key, base_url=server.base_url, timeout=10, max_attempts=2,
            sleep=lambda _seconds: None,
        )  # fmt: skip

        def declined() -> None:
            server.fail_next("POST", "/capture", status=402, body=CARD_DECLINED)

        def outage(calls: int, after_apply: bool) -> None:
            server.fail_next(
                "POST", "/capture", status=500, count=calls * gateway.max_attempts,
                after_apply=after_apply,
            )  # fmt: skip

        def authenticate(intent_id: str, succeed: bool) -> object:
            return server.complete_authentication(intent_id, succeed=succeed)

        def answer_lost() -> None:
            server.fail_next(
                "POST", "/v1/payment_intents", status=500, count=gateway.max_attempts,
                after_apply=True,
            )  # fmt: skip

        faults = Faults(declined, outage, server.captures, authenticate, answer_lost)
        yield gateway, faults, server
