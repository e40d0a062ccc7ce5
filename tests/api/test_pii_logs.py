"""Personal data goes in through the API and never comes out in logs or error messages: the
daemon's log and the CLI's output are grepped for every seeded value, after successes,
refusals and an erasure."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.api.daemon_support import SCRIPT, free_port, running_daemon, seed_partner, write_config

CONTACT = {"name": "Zelda Quixote", "email": "zelda.q@example.org", "phone": "+44 7700 900321"}
METADATA = {"passport": "P-99X-4471"}
SEEDED = ("Zelda", "Quixote", "zelda.q@example.org", "7700 900321", "P-99X-4471")


def test_seeded_personal_data_never_reaches_logs(database_url: str, tmp_path: Path) -> None:
    key = seed_partner(database_url, slot_interval_minutes=60, max_advance_days=30)
    day = (datetime.now(UTC) + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)

    def body(hour: int, **extra: object) -> dict[str, object]:
        start = day + timedelta(hours=hour)
        return {
            "vendorId": "shop", "slotStartTime": start.isoformat(),
            "slotEndTime": (start + timedelta(hours=1)).isoformat(),
            "requesterId": "req-zq", "metadata": METADATA, "requester": CONTACT, **extra,
        }  # fmt: skip

    port = free_port()
    config = write_config(tmp_path / "bookiji.toml", database_url, port)
    outputs: list[str] = []
    with running_daemon(config, tmp_path, port=port) as daemon, daemon.client(key) as client:
        created = client.post("/v1/reservations", json=body(10, idempotencyKey="k-1"))
        assert created.status_code == 201, created.text
        assert created.json()["requester"] == CONTACT  # the owner reads it back
        rid = created.json()["reservationId"]
        refusals = [
            client.post("/v1/reservations", json=body(10)),  # slot taken
            client.post("/v1/reservations", json=body(12, idempotencyKey="k-1")),  # key reused
            client.post(
                "/v1/reservations",
                json=body(14, requester={**CONTACT, "email": "Zelda Quixote at home"}),
            ),
            client.post("/v1/reservations", json=body(15, requester={**CONTACT, "age": 40})),
        ]
        assert [r.status_code for r in refusals] == [409, 422, 400, 400]
        outputs += [r.text for r in refusals]
        forgotten = subprocess.run(
            [SCRIPT, "--config", str(config), "requesters", "forget", "req-zq", "--yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert forgotten.returncode == 0, forgotten.stderr
        outputs += [forgotten.stdout, forgotten.stderr]
        after = client.get(f"/v1/reservations/{rid}").json()
        assert after["requester"] is None and after["metadata"] == {}
        assert daemon.stop() == 0
    logs = daemon.logs()
    assert rid in logs  # the log does name the reservation, by id
    for value in SEEDED:
        assert value not in logs, f"{value!r} leaked into the daemon's log"
        for text in outputs:
            assert value not in text, f"{value!r} leaked into an answer or the CLI"
    # Every line is one JSON object (the console notification of the hold included), so the
    # operator guide's `jq` over the log reads all of it.
    lines = [line for line in logs.splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith("{")] == []
    assert any("asked to confirm reservation" in line for line in lines)
    assert "req-zq" not in logs  # the requester id, which `forget` replaced, is not kept here
