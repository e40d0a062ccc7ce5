"""A daemon started with a wrong but well-formed PII key, or with a key the database does not
know listed first (a typo ahead of the right key), refuses to start (one error line, exit 1,
no key in it, before the port is bound) and seals nothing; the right key starts. A rotation
goes through as the operator guide lists it: the new key staged second, `pii begin-rotation`
with it first, daemons with both, `pii rotate`, the new key alone; daemons left behind are
no longer ready. Real `bookiji daemon` processes, SQLite and Postgres."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from bookiji.services.pii import PiiService
from bookiji.store import crypto
from bookiji.store.database import Database
from tests import sealed
from tests.api.daemon_support import SCRIPT, free_port, running_daemon, seed_partner, write_config

CONTACT = {"name": "Zelda Quixote", "email": "zelda.q@example.org"}


def opened_by(database_url: str, key: str) -> int:
    return sealed.on(database_url, sealed.opened_by, key)


def tokens(database_url: str) -> list[str]:
    return sealed.on(database_url, sealed.stored_tokens)


def key_records(database_url: str) -> int:
    return sealed.on(database_url, sealed.key_records)


def bookiji(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def refused(config: Path, why: str, *keys: str, port: int | None = None) -> None:
    started = bookiji(config, "daemon", "--port", str(port or free_port()))
    assert started.returncode == 1, started.stdout + started.stderr
    assert started.stdout == ""  # not even the start-up log line
    (line,) = started.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: ") and line.endswith("[encryption_key_problem]"), line
    assert why in line, line
    for key in keys:
        assert key not in line and key[:12] not in line


def test_a_new_key_listed_first_is_refused_before_the_port_is_bound(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    right, typo = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    crypto.configure([right])  # the partner's webhook secret is sealed with the right key
    seed_partner(database_url)
    config = write_config(tmp_path / "bookiji.toml", database_url, free_port())
    monkeypatch.setenv("BOOKIJI_PII_KEYS", f"{typo},{right}")
    with socket.socket() as taken:  # the daemon's port is in use: binding first would say so
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # A database sealed before the key-check records: the sample decides...
        refused(config, "new to this database", typo, right, port=port)
        assert key_records(database_url) == 0
        db = Database(database_url)
        try:
            PiiService(db).check_keys(register=True)  # ... then the right key's record
        finally:
            db.dispose()
        refused(config, "run `bookiji pii begin-rotation`", typo, right, port=port)
    assert key_records(database_url) == 1  # none for the typo
    assert opened_by(database_url, typo) == 0  # nothing sealed with it
    monkeypatch.setenv("BOOKIJI_PII_KEYS", right)
    with running_daemon(config, tmp_path, port=free_port()) as daemon:
        with daemon.client() as client:
            assert client.get("/readyz").status_code == 200
        assert daemon.stop() == 0


def test_a_wrong_key_is_refused_and_a_rotation_goes_through(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new, wrong = (Fernet.generate_key().decode() for _ in range(3))
    crypto.configure([old])  # the partner's webhook secret is sealed with the old key
    api_key = seed_partner(database_url, slot_interval_minutes=60, max_advance_days=30)
    config = write_config(tmp_path / "bookiji.toml", database_url, free_port())
    day = (datetime.now(UTC) + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)

    def hold(client: httpx.Client, hour: int) -> str:
        """A hold with the requester's contact details (sealed); its id."""
        start = day + timedelta(hours=hour)
        created = client.post("/v1/reservations", json={
            "vendorId": "shop", "slotStartTime": start.isoformat(),
            "slotEndTime": (start + timedelta(hours=1)).isoformat(),
            "requesterId": f"req-{hour}", "requester": CONTACT,
        })  # fmt: skip
        assert created.status_code == 201, created.text
        return str(created.json()["reservationId"])

    def keys(*given: str) -> None:
        monkeypatch.setenv("BOOKIJI_PII_KEYS", ",".join(given))

    def not_ready(client: httpx.Client, why: str) -> None:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "encryption_key_problem"
        assert why in ready.json()["error"]["message"]
        assert old not in ready.text and new not in ready.text

    # Data from before key-check records: the sampled stored values tell the key is wrong.
    keys(wrong)
    refused(config, "do not open 1 of 1 stored values", old, new, wrong)
    keys()  # no key at all, with sealed data
    refused(config, "no PII key is configured")
    keys(old)
    with running_daemon(config, tmp_path, port=free_port(), name="old") as first:
        with first.client(api_key) as client:
            assert client.get("/readyz").status_code == 200
            kept = hold(client, 10)
        keys(wrong)  # a second daemon with a mistyped key, beside the running one
        refused(config, "1 of the 1 keys it holds data under is not configured", old, wrong)
        keys(new, old)  # the new key first: not a rotation until one is begun
        refused(config, "run `bookiji pii begin-rotation`", old, new)
        # 1. Staged: the new key second opens what it will seal; daemons stay ready.
        keys(old, new)
        with running_daemon(config, tmp_path, port=free_port(), name="staged") as staged:
            # 2. The new key first, for the CLI: the rotation begins.
            keys(new, old)
            begun = bookiji(config, "pii", "begin-rotation", "--json")
            assert begun.returncode == 0, begun.stderr
            assert key_records(database_url) == 2
            with staged.client() as client:
                assert client.get("/readyz").status_code == 200
            with first.client() as client:  # the old key alone cannot open the new record
                not_ready(client, "not configured")
            assert first.stop() == 0
            # 3. Daemons with [new, old]: they seal with the new key; staged ones read it.
            with running_daemon(config, tmp_path, port=free_port(), name="both") as both:
                with both.client(api_key) as client:
                    assert client.get("/readyz").status_code == 200
                    fresh = hold(client, 12)
                    assert client.get(f"/v1/reservations/{kept}").json()["requester"] == CONTACT
                with staged.client(api_key) as client:
                    assert client.get(f"/v1/reservations/{fresh}").json()["requester"] == CONTACT
                keys(new)  # the old key dropped before `pii rotate`: refused
                refused(config, "1 of the 2 keys it holds data under is not configured", old, new)
                # 4. Re-seal everything; the old key's record goes.
                keys(new, old)
                rotated = bookiji(config, "pii", "rotate", "--json")
                assert rotated.returncode == 0, rotated.stderr
                assert key_records(database_url) == 1
                with both.client() as client:
                    assert client.get("/readyz").status_code == 200
                with staged.client() as client:  # still sealing with the retired old key
                    not_ready(client, "has no key-check record")
                assert both.stop() == 0
            assert staged.stop() == 0
    # 5. The new key alone starts and reads everything.
    keys(new)
    with running_daemon(config, tmp_path, port=free_port(), name="new") as last:
        with last.client(api_key) as client:
            assert client.get("/readyz").status_code == 200
            assert client.get(f"/v1/reservations/{kept}").json()["requester"] == CONTACT
        assert last.stop() == 0
    keys(old)
    refused(config, "1 of the 1 keys it holds data under is not configured", old, new)
    keys(old, new)
    refused(config, "new to this database", old, new)
    assert opened_by(database_url, wrong) == 0  # nothing was ever sealed with the wrong key
    assert opened_by(database_url, old) == 0  # all re-sealed; its record gone with it
    assert opened_by(database_url, new) == len(tokens(database_url))
