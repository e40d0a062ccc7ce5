"""A daemon started with a wrong but well-formed PII key refuses to start (one error line,
exit 1, no key in it) and seals nothing; the right key starts; a rotation runs with both
keys, and the new key alone starts once `pii rotate` has finished; a daemon left on the old
key alone is no longer ready. Real `bookiji daemon` processes, SQLite and Postgres."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bookiji.store import crypto
from bookiji.store.database import Database
from tests import sealed
from tests.api.daemon_support import SCRIPT, free_port, running_daemon, seed_partner, write_config

CONTACT = {"name": "Zelda Quixote", "email": "zelda.q@example.org"}


def opened_by(database_url: str, key: str) -> int:
    db = Database(database_url)
    try:
        return sealed.opened_by(db, key)
    finally:
        db.dispose()


def tokens(database_url: str) -> list[str]:
    db = Database(database_url)
    try:
        return sealed.stored_tokens(db)
    finally:
        db.dispose()


def test_a_wrong_key_is_refused_and_a_rotation_goes_through(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new, wrong = (Fernet.generate_key().decode() for _ in range(3))
    crypto.configure([old])  # the partner's webhook secret is sealed with the old key
    api_key = seed_partner(database_url, slot_interval_minutes=60, max_advance_days=30)
    config = write_config(tmp_path / "bookiji.toml", database_url, free_port())
    day = (datetime.now(UTC) + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)

    def body(hour: int) -> dict[str, object]:
        start = day + timedelta(hours=hour)
        return {
            "vendorId": "shop", "slotStartTime": start.isoformat(),
            "slotEndTime": (start + timedelta(hours=1)).isoformat(),
            "requesterId": f"req-{hour}", "requester": CONTACT,
        }  # fmt: skip

    def keys(*given: str) -> None:
        monkeypatch.setenv("BOOKIJI_PII_KEYS", ",".join(given))

    def refused(why: str) -> None:
        started = subprocess.run(
            [SCRIPT, "--config", str(config), "daemon", "--port", str(free_port())],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert started.returncode == 1, started.stdout + started.stderr
        assert started.stdout == ""
        (line,) = started.stderr.strip().splitlines()  # one line, no traceback
        assert line.startswith("error: ") and line.endswith("[encryption_key_problem]"), line
        assert why in line, line
        for key in (old, new, wrong):
            assert key not in line and key[:12] not in line

    # Data from before key-check records: the sampled stored values tell the key is wrong.
    keys(wrong)
    refused("do not open 1 of 1 stored values")
    keys()  # no key at all, with sealed data
    refused("no PII key is configured")
    keys(old)
    port_a = free_port()
    with running_daemon(config, tmp_path, port=port_a, name="old") as first:
        with first.client(api_key) as client:
            assert client.get("/readyz").status_code == 200
            created = client.post("/v1/reservations", json=body(10))
            assert created.status_code == 201, created.text
            kept = created.json()["reservationId"]
        keys(wrong)  # a second daemon with a mistyped key, beside the running one
        refused("1 of the 1 keys it holds data under is not configured")
        # A rotation begins: a daemon with the new key first and the old one after starts...
        keys(new, old)
        with running_daemon(config, tmp_path, port=free_port(), name="both") as both:
            with both.client(api_key) as client:
                assert client.get("/readyz").status_code == 200
                created = client.post("/v1/reservations", json=body(12))
                assert created.status_code == 201, created.text
                assert client.get(f"/v1/reservations/{kept}").json()["requester"] == CONTACT
            # ... and the daemon still on the old key alone cannot read what it seals: not
            # ready (it serves on: a load balancer takes it out).
            with first.client() as client:
                ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "encryption_key_problem"
            assert "not configured" in ready.json()["error"]["message"]
            assert old not in ready.text and new not in ready.text
            assert both.stop() == 0
        assert first.stop() == 0
    keys(new)  # the old key dropped before `pii rotate`: refused
    refused("1 of the 2 keys it holds data under is not configured")
    keys(new, old)
    rotated = subprocess.run(
        [SCRIPT, "--config", str(config), "pii", "rotate", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr
    keys(new)  # rotated: the new key alone starts and reads everything
    with running_daemon(config, tmp_path, port=free_port(), name="new") as last:
        with last.client(api_key) as client:
            assert client.get("/readyz").status_code == 200
            assert client.get(f"/v1/reservations/{kept}").json()["requester"] == CONTACT
        assert last.stop() == 0
    keys(old)
    refused("1 of the 1 keys it holds data under is not configured")
    assert opened_by(database_url, wrong) == 0  # nothing was ever sealed with the wrong key
    assert opened_by(database_url, old) == 0  # all re-sealed; its record gone with it
    assert opened_by(database_url, new) == len(tokens(database_url))
