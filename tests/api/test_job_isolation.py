"""A partner's webhook endpoint that never answers holds up deliveries, never the other jobs
(expiry, commits, compensations): a real daemon against a socket that accepts and stays
silent."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.api.daemon_support import free_port, running_daemon, write_config


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


def test_a_silent_partner_endpoint_does_not_stop_expiry(database_url: str, tmp_path: Path) -> None:
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
            time.sleep(3)  # well inside the 8 s the send may wait
            after = _runs(daemon.logs(), "expiry")
            assert after - before >= 3, daemon.logs()[-2000:]
            assert daemon.stop() == 0
    finally:
        server.close()
        for conn in held:
            conn.close()
