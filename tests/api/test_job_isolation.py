"""A partner's webhook endpoint that never answers holds up its own deliveries, never the
other jobs (expiry, commits, compensations) nor other partners' webhooks: a real daemon
against a socket that accepts and stays silent, next to a partner endpoint that answers."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.api.daemon_support import free_port, running_daemon, write_config
from tests.fakes.webhook_receiver import StandardWebhookReceiver


def _silent_endpoint() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose connections are accepted and never answered."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return server, held


def _runs(logs: str, job: str) -> int:
    count = 0
    for line in logs.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        count += entry.get("job") == job
    return count


def test_a_silent_partner_endpoint_stops_neither_expiry_nor_other_partners_webhooks(
    database_url: str, tmp_path: Path
) -> None:
    from bookiji.services.apikeys import ApiKeyService
    from bookiji.services.clock import SystemClock
    from bookiji.store.database import Database
    from tests.factories import add_vendor

    server, held = _silent_endpoint()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/hooks"
    db = Database(database_url)
    try:
        add_vendor(db, "shop", slot_interval_minutes=60, max_advance_days=30)
        keys = ApiKeyService(db, SystemClock())
        keys.add_partner("acme", "Acme", webhook_url=url)
        key = keys.create_key("acme")[1]
        beta_secret = keys.add_partner("beta", "Beta")[1]
        beta_key = keys.create_key("beta")[1]
        beta = StandardWebhookReceiver(beta_secret).start()
        keys.set_webhook_url("beta", beta.url)
    finally:
        db.dispose()
    port = free_port()
    config = write_config(
        tmp_path / "bookiji.toml",
        database_url,
        port,
        extra="[webhooks]\ntimeout_seconds = 8\n[daemon]\nshutdown_grace_seconds = 2\n",
    )
    day = (datetime.now(UTC) + timedelta(days=2)).replace(
        hour=10, minute=0, second=0, microsecond=0
    )
    try:
        with running_daemon(config, tmp_path, port=port) as daemon, daemon.client(key) as client:
            created = client.post("/v1/reservations", json={
                "vendorId": "shop", "slotStartTime": day.isoformat(),
                "slotEndTime": (day + timedelta(hours=1)).isoformat(), "requesterId": "r1",
            })  # fmt: skip
            assert created.status_code == 201, created.text
            deadline = time.monotonic() + 10
            while not held and time.monotonic() < deadline:  # the delivery is out, unanswered
                time.sleep(0.05)
            assert held, "the daemon never called the partner's endpoint"
            before = _runs(daemon.logs(), "expiry")
            # Meanwhile another partner's reservation: its webhooks come while acme's hangs.
            with daemon.client(beta_key) as other:
                start = day + timedelta(hours=2)
                made = other.post("/v1/reservations", json={
                    "vendorId": "shop", "slotStartTime": start.isoformat(),
                    "slotEndTime": (start + timedelta(hours=1)).isoformat(), "requesterId": "r2",
                })  # fmt: skip
            assert made.status_code == 201, made.text
            reservation = made.json()["reservationId"]
            deadline = time.monotonic() + 3  # well inside the 8 s acme's send may wait
            while time.monotonic() < deadline and not any(
                m["data"]["reservationId"] == reservation for m in list(beta.seen.values())
            ):
                time.sleep(0.05)
            assert any(m["data"]["reservationId"] == reservation for m in beta.seen.values()), (
                "beta's webhooks waited behind acme's silent endpoint"
            )
            time.sleep(max(0.0, deadline - time.monotonic()))
            after = _runs(daemon.logs(), "expiry")
            assert after - before >= 3, daemon.logs()[-2000:]
            assert len(held) == 1  # acme's first send, still waiting
            began = time.monotonic()
            assert daemon.stop() == 0
            # The grace period (2 s), not acme's send timeout (8 s).
            assert time.monotonic() - began < 6, daemon.logs()[-2000:]
    finally:
        beta.close()
        server.close()
        for conn in held:
            conn.close()
