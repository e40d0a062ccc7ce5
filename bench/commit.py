"""A full hold -> committed flow: median and p95, on LocalGateway and on the Stripe test
server (the real `stripe` SDK over loopback HTTP), SQLite in both cases.

Each flow: hold (vendor asked), vendor confirms, deposit authorized, requester authorized,
commit (revalidate, capture both, book). Also prints the cost of a bare hold as the
baseline, and the ratio. Run: .venv/bin/python bench/commit.py [flows]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bookiji.bootstrap import build
from bookiji.config import Settings
from bookiji.services.clock import ManualClock
from bookiji.services.reservations import HoldRequest
from bookiji.store import migrate
from bookiji.store.database import Database
from tests.factories import add_vendor
from tests.fakes.stripe_server import StripeServer

NOW = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


def run(payments: dict[str, object], flows: int) -> tuple[list[float], list[float]]:
    workdir = Path(tempfile.mkdtemp(prefix="bookiji-bench-commit-"))
    url = f"sqlite:///{workdir / 'bench.db'}"
    db = Database(url)
    migrate.upgrade(db)
    add_vendor(db, "shop", slot_minutes=15, slot_interval_minutes=15, max_advance_days=365)
    db.dispose()
    container = build(Settings(database_url=url, payments=payments), clock=ManualClock(NOW))
    container.confirmation.notifiers = {"console": _Quiet()}
    full, holds = [], []
    for index in range(flows):
        start = NOW + timedelta(days=1 + index // 90, minutes=15 * (index % 90))
        began = time.perf_counter()
        rid = container.reservations.create_hold(
            HoldRequest("shop", start, start + timedelta(minutes=15), f"r{index}"), actor="b"
        ).reservation_id
        held = time.perf_counter()
        container.reservations.confirm(rid, actor="vendor")
        container.payments.authorize(rid, "vendor", payment_method="pm_card_visa", actor="b")
        state = container.payments.authorize(
            rid, "requester", payment_method="pm_card_visa", actor="b"
        ).state
        done = time.perf_counter()
        assert state == "COMMITTED", state
        holds.append((held - began) * 1000)
        full.append((done - began) * 1000)
    container.close()
    return full, holds


class _Quiet:
    channel = "console"

    def send(self, destination: str, notification: object) -> None:
        return None


def show(name: str, samples: list[float]) -> float:
    ordered = sorted(samples)
    median = statistics.median(ordered)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    print(f"{name:<34}{median:>10.2f}{p95:>10.2f}")
    return median


def main() -> None:
    flows = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    print(f"{flows} flows each; milliseconds")
    print(f"{'measure':<34}{'median':>10}{'p95':>10}")
    local_full, local_holds = run({"gateway": "local"}, flows)
    with StripeServer() as server:
        stripe_full, _ = run(
            {"gateway": "stripe", "stripe_api_key": server.api_key,
             "stripe_base_url": server.base_url},
            flows,
        )  # fmt: skip
    hold = show("hold only (baseline)", local_holds)
    local = show("hold -> committed, LocalGateway", local_full)
    remote = show("hold -> committed, Stripe server", stripe_full)
    print(f"full flow / hold: {local / hold:.1f}x (local), {remote / hold:.1f}x (Stripe)")


if __name__ == "__main__":
    main()
