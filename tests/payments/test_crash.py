"""A commit killed (SIGKILL) at each step boundary is finished by reconciliation, with
each PaymentIntent captured at most once and a clean audit, on both gateways."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bookiji.bootstrap import Container, build
from bookiji.config import Settings
from bookiji.services.audit import audit
from bookiji.services.clock import ManualClock
from bookiji.services.documents import load_reservation_document
from bookiji.services.reservations import HoldRequest
from bookiji.store.database import Database
from bookiji.store.models import LocalPaymentIntent
from bookiji.store.uow import UnitOfWork
from tests.factories import add_vendor
from tests.fakes.stripe_server import StripeServer

SCRIPT = str(Path(sys.executable).parent / "bookiji")
POINTS = [
    "before_vendor_capture",
    "after_vendor_capture",
    "before_requester_capture",
    "after_requester_capture",
    "before_finalize",
]


@contextmanager
def gateway_settings(kind: str) -> Iterator[tuple[dict[str, object], StripeServer | None]]:
    if kind == "local":
        yield {"gateway": "local"}, None
        return
    with StripeServer() as server:
        yield (
            {
                "gateway": "stripe",
                "stripe_api_key": server.api_key,
                "stripe_base_url": server.base_url,
            },
            server,
        )


def captures(container: Container, server: StripeServer | None, intent_id: str) -> int:
    if server is not None:
        return server.captures(intent_id)
    with UnitOfWork(container.db, readonly=True) as uow:
        row = uow.session.get(LocalPaymentIntent, intent_id)
        assert row is not None
        return row.captures


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("kind", ["local", "stripe"])
def test_a_commit_killed_anywhere_is_finished_once(
    database_url: str, tmp_path: Path, kind: str, point: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with gateway_settings(kind) as (payments, server):
        settings = Settings(database_url=database_url, payments=payments)
        db = Database(database_url)
        add_vendor(db, "shop", slot_interval_minutes=60, max_advance_days=30)
        db.dispose()
        container = build(settings, clock=ManualClock(now))
        start = (now + timedelta(days=2)).replace(hour=10, minute=0, second=0)
        rid = container.reservations.create_hold(
            HoldRequest("shop", start, start + timedelta(hours=1), "req"), actor="test"
        ).reservation_id
        container.reservations.confirm(rid, actor="vendor")
        container.payments.authorize(rid, "vendor", payment_method="pm_card_visa", actor="t")
        container.payments.authorize(
            rid, "requester", payment_method="pm_card_visa", actor="t", auto_commit=False
        )
        config = tmp_path / "bookiji.toml"
        lines = [f'database_url = "{database_url}"', "[payments]"]
        lines += [f'{key} = "{value}"' for key, value in payments.items()]
        config.write_text("\n".join(lines) + "\n")

        crashed = subprocess.run(
            [SCRIPT, "--config", str(config), "reservations", "commit", rid],
            env={**os.environ, "BOOKIJI_CRASH_AT": point},
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        assert load_reservation_document(container.db, rid)["state"] == "COMMIT_IN_PROGRESS"

        # Later, when the dead worker's lease has run out, reconciliation finishes the job.
        container.clock.advance(timedelta(minutes=5))  # type: ignore[attr-defined]
        container.reconciler.run_once()
        document = load_reservation_document(container.db, rid)
        assert document["state"] == "COMMITTED"
        for party in ("vendorDeposit", "requesterPayment"):
            intent_id = document["payment"][party]["paymentIntentId"]
            assert captures(container, server, intent_id) == 1
        assert audit(container.db, container.gateway) == []
        container.close()
