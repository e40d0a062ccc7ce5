"""A partner's cancel reason over real HTTP, against a running daemon with a partner webhook
endpoint on loopback: the partner reads it back (document, `GET /v1/events`, the webhook) as
`cancelNote`; the tables hold it only sealed; `bookiji requesters forget` erases it and
leaves the states and the transition log. SQLite and Postgres."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text

from bookiji.api.schemas import EventPage, ReservationDocument
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.clock import SystemClock
from bookiji.store.database import Database
from tests.api.daemon_support import SCRIPT, free_port, running_daemon, write_config
from tests.factories import add_vendor
from tests.fakes.webhook_receiver import StandardWebhookReceiver

NOTE = "Zelda Quixote is in hospital, call her on +44 7700 900321"
WORDS = ("Zelda", "Quixote", "hospital", "7700 900321")


def raw_tables(db: Database, *tables: str) -> str:
    """The rows of `tables` (all by default) as stored, without decryption, as one text."""
    parts: list[str] = []
    with db.engine.connect() as conn:
        for table in tables or sorted(inspect(conn).get_table_names()):
            parts += [repr(tuple(row)) for row in conn.execute(text(f"SELECT * FROM {table}"))]
    return "\n".join(parts)


def cancel_events(page: dict[str, Any], rid: str) -> list[dict[str, Any]]:
    return [
        e["data"]
        for e in page["events"]
        if e["type"] == "reservation.cancelled" and e["data"]["reservationId"] == rid
    ]


def test_a_partners_cancel_reason_is_its_note_and_forget_erases_it(
    database_url: str, tmp_path: Path
) -> None:
    db = Database(database_url)
    add_vendor(db, "shop", slot_interval_minutes=60, max_advance_days=30)
    keys = ApiKeyService(db, SystemClock())
    day = (datetime.now(UTC) + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    start = day + timedelta(hours=10)
    port = free_port()
    config = write_config(tmp_path / "bookiji.toml", database_url, port)
    _, secret = keys.add_partner("acme", "Acme")
    _, key = keys.create_key("acme")
    with StandardWebhookReceiver(secret) as receiver:
        keys.set_webhook_url("acme", receiver.url)
        with running_daemon(config, tmp_path, port=port) as daemon, daemon.client(key) as client:
            created = client.post("/v1/reservations", json={
                "vendorId": "shop", "slotStartTime": start.isoformat(),
                "slotEndTime": (start + timedelta(hours=1)).isoformat(),
                "requesterId": "req-zq",
            })  # fmt: skip
            assert created.status_code == 201, created.text
            rid = created.json()["reservationId"]
            too_long = client.post(f"/v1/reservations/{rid}/cancel", json={"reason": "x" * 501})
            assert too_long.status_code == 400  # the limit the reason always had

            cancelled = client.post(f"/v1/reservations/{rid}/cancel", json={"reason": NOTE})
            assert cancelled.status_code == 200, cancelled.text
            document = ReservationDocument.model_validate(cancelled.json()).model_dump(
                by_alias=True
            )
            assert document["state"] == "CANCELLED" and document["cancelNote"] == NOTE
            read = client.get(f"/v1/reservations/{rid}").json()
            assert (read["cancelNote"], read["stateHistory"]) == (
                NOTE, cancelled.json()["stateHistory"]
            )  # fmt: skip
            last = cancelled.json()["stateHistory"][-1]
            assert (last["to"], last["reason"], last["actor"]) == (
                "CANCELLED", "cancelled by partner", "partner:acme"
            )  # fmt: skip
            events = client.get("/v1/events", params={"after": 0}).json()
            EventPage.model_validate(events)
            assert [(d["reason"], d["cancelNote"]) for d in cancel_events(events, rid)] == [
                ("cancelled by partner", NOTE)
            ]
            (cancel_id,) = [
                e["id"] for e in events["events"] if e["type"] == "reservation.cancelled"
            ]
            assert receiver.wait_for({e["id"] for e in events["events"]}, timeout=20)
            webhook = receiver.seen[cancel_id]
            assert webhook["data"] == cancel_events(events, rid)[0]  # the same as polled
            for word in WORDS:  # as stored: the log and the outbox never had it
                assert word not in raw_tables(db, "reservation_transitions", "outbox_events")
                assert word not in raw_tables(db)
            history = cancelled.json()["stateHistory"]

            forgotten = subprocess.run(
                [SCRIPT, "--config", str(config), "requesters", "forget", "req-zq", "--yes"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert forgotten.returncode == 0, forgotten.stderr
            after = client.get(f"/v1/reservations/{rid}").json()
            assert after["cancelNote"] is None and after["state"] == "CANCELLED"
            assert after["stateHistory"] == history  # the log and its states stay
            events = client.get("/v1/events", params={"after": 0}).json()
            assert [d["cancelNote"] for d in cancel_events(events, rid)] == [None]
            assert daemon.stop() == 0
    with db.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT cancel_note FROM reservations WHERE id = :rid"), {"rid": rid}
        ).all()
    assert stored == [(None,)]
    for word in WORDS:
        assert word not in raw_tables(db)
        assert word not in daemon.logs()
    db.dispose()
