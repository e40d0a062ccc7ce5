"""A cancel's free text is the partner's note: shown in the reservation's document and its
cancel event, stored only sealed on the reservation, erased by `requesters forget`, re-sealed
by `pii rotate`; the append-only log and the outbox say only Bookiji's own words. SQLite and
Postgres, the tables read with plain SQL."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import inspect, text
from sqlalchemy.exc import StatementError

from bookiji.domain.errors import EncryptionKeyProblem
from bookiji.integrations.local_gateway import LocalGateway
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.clock import ManualClock
from bookiji.services.documents import load_reservation_document
from bookiji.services.pii import PiiService
from bookiji.services.reservations import HoldRequest
from bookiji.services.webhooks import WebhookService
from bookiji.store import crypto
from bookiji.store.database import Database
from tests.payments.harness import DAY, NOW, Workflow, build_workflow, local_faults
from tests.webhook_doubles import StatusSender

NOTE = "Zelda Quixote is in hospital, call her on +44 7700 900321"
WORDS = ("Zelda", "Quixote", "hospital", "7700 900321")


@pytest.fixture
def flow(db: Database) -> Workflow:
    gateway = LocalGateway(db, ManualClock(NOW))
    flow = build_workflow(db, gateway, local_faults(gateway))
    ApiKeyService(db, flow.clock).add_partner("acme", "Acme", "https://hooks.example/acme")
    return flow


def cancels(sender: StatusSender) -> list[dict[str, Any]]:
    """The data of every `reservation.cancelled` event sent, in order."""
    return [p["data"] for p in sender.payloads if p["type"] == "reservation.cancelled"]


def deliver(hooks: WebhookService) -> None:
    """Every pending event (one per reservation per round: they go in order)."""
    hooks.fan_out()
    while hooks.deliver_due():
        pass


def deposit_held(flow: Workflow, hour: int = 10, requester: str = "req-zq") -> str:
    """A partner's reservation, confirmed, the vendor's deposit authorized."""
    start = DAY + timedelta(hours=hour)
    rid = flow.reservations.create_hold(
        HoldRequest("shop", start, start + timedelta(hours=1), requester, partner_id="acme"),
        actor="partner:acme",
    ).reservation_id
    flow.reservations.confirm(rid, actor="vendor")
    flow.payments.authorize(rid, "vendor", payment_method="pm_card_visa", actor="test")
    return rid


def cancel(flow: Workflow, rid: str, note: str | None = NOTE) -> bool:
    return flow.reservations.cancel(
        rid, actor="partner:acme", reason="cancelled by partner", note=note, partner_id="acme"
    )


def raw_tables(db: Database) -> str:
    """Every row of every table, as stored (no decryption), as one text."""
    parts: list[str] = []
    with db.engine.connect() as conn:
        for table in sorted(inspect(conn).get_table_names()):
            parts += [repr(tuple(row)) for row in conn.execute(text(f"SELECT * FROM {table}"))]
    return "\n".join(parts)


def raw(db: Database, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with db.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql), params)]


def log_of(db: Database, rid: str) -> list[tuple[Any, ...]]:
    return raw(
        db,
        "SELECT from_state, to_state, reason, actor, at FROM reservation_transitions"
        " WHERE reservation_id = :rid ORDER BY id",
        rid=rid,
    )


def test_the_note_is_the_partners_to_read_and_is_stored_only_sealed(
    flow: Workflow, db: Database
) -> None:
    sender = StatusSender()
    hooks = WebhookService(db, flow.clock, sender)
    rid = deposit_held(flow)
    assert cancel(flow, rid)

    document = load_reservation_document(db, rid, partner_id="acme")
    assert document["state"] == "CANCELLED" and document["cancelNote"] == NOTE
    assert document["payment"]["vendorDeposit"]["state"] == "released"
    last = document["stateHistory"][-1]
    assert (last["to"], last["reason"], last["actor"]) == (
        "CANCELLED", "cancelled by partner", "partner:acme"
    )  # fmt: skip

    # As stored: the log and the outbox say Bookiji's words; the note is a sealed token.
    (reason,) = raw(db, "SELECT reason FROM reservation_transitions WHERE to_state = 'CANCELLED'")[
        0
    ]
    assert reason == "cancelled by partner"
    stored = raw_tables(db)
    for word in WORDS:
        assert word not in stored, f"{word!r} is stored in plain text"
    ((sealed,),) = raw(db, "SELECT cancel_note FROM reservations WHERE id = :rid", rid=rid)
    assert sealed.startswith("gAAAAA")

    # The cancel event carries the note; the other events have no such field.
    deliver(hooks)
    assert [(d["reason"], d["cancelNote"]) for d in cancels(sender)] == [
        ("cancelled by partner", NOTE)
    ]
    others = [p["data"] for p in sender.payloads if p["type"] != "reservation.cancelled"]
    assert others and all("cancelNote" not in data for data in others)
    assert len(sender.payloads) == len(log_of(db, rid))

    # Cancelling again changes nothing, the first note included.
    assert not cancel(flow, rid, note="another text")
    assert load_reservation_document(db, rid)["cancelNote"] == NOTE
    assert len(log_of(db, rid)) == len(document["stateHistory"])


def test_a_cancel_without_a_note_or_a_declined_hold_has_a_null_note(
    flow: Workflow, db: Database
) -> None:
    sender = StatusSender()
    rid = deposit_held(flow)
    start = DAY + timedelta(hours=12)
    declined = flow.reservations.create_hold(
        HoldRequest("shop", start, start + timedelta(hours=1), "req-2", partner_id="acme"),
        actor="partner:acme",
    ).reservation_id
    assert cancel(flow, rid, note=None)
    flow.reservations.decline(declined, actor="vendor")
    assert load_reservation_document(db, rid)["cancelNote"] is None
    assert load_reservation_document(db, rid)["stateHistory"][-1]["reason"] == (
        "cancelled by partner"
    )
    hooks = WebhookService(db, flow.clock, sender)
    deliver(hooks)
    assert [d["cancelNote"] for d in cancels(sender)] == [None, None]


def test_forget_erases_the_note_everywhere_and_keeps_states_and_log(
    flow: Workflow, db: Database
) -> None:
    sender = StatusSender()
    hooks = WebhookService(db, flow.clock, sender)
    rid = deposit_held(flow)
    other = deposit_held(flow, hour=12, requester="req-2")  # someone else's: left alone
    assert cancel(flow, rid)
    flow.reservations.cancel(other, actor="operator:cli", note="keep this note")
    deliver(hooks)
    assert [d["cancelNote"] for d in cancels(sender)] == [NOTE, "keep this note"]
    ((sealed,),) = raw(db, "SELECT cancel_note FROM reservations WHERE id = :rid", rid=rid)
    log_before = log_of(db, rid)

    erasure = PiiService(db).forget("req-zq", partner_id="acme")
    assert erasure.reservations == [rid]

    document = load_reservation_document(db, rid, partner_id="acme")
    assert document["cancelNote"] is None and document["state"] == "CANCELLED"
    assert log_of(db, rid) == log_before  # every transition, as it was
    assert raw(db, "SELECT cancel_note FROM reservations WHERE id = :rid", rid=rid) == [(None,)]
    stored = raw_tables(db)
    assert sealed not in stored
    for word in WORDS:
        assert word not in stored
    assert load_reservation_document(db, other)["cancelNote"] == "keep this note"

    # Sent again (an operator's replay), the event no longer has it.
    (event_id,) = [
        p["id"]
        for p in sender.payloads
        if p["type"] == "reservation.cancelled" and p["data"]["reservationId"] == rid
    ]
    hooks.replay(str(event_id))
    deliver(hooks)
    resent = sender.payloads[-1]
    assert resent["id"] == event_id and resent["data"]["cancelNote"] is None
    assert resent["data"]["reason"] == "cancelled by partner"


def test_rotation_reseals_the_note(flow: Workflow, db: Database) -> None:
    old = crypto.keys_from(os.environ.get(crypto.ENV_KEYS), None)  # the partner's secret too
    new = Fernet.generate_key().decode()
    rid = deposit_held(flow)
    assert cancel(flow, rid)
    ((before,),) = raw(db, "SELECT cancel_note FROM reservations WHERE id = :rid", rid=rid)
    crypto.configure([new, *old])
    PiiService(db).begin_rotation()
    result = PiiService(db, batch_size=1).rotate()
    assert result.resealed["reservations.cancel_note"] == 1
    ((after,),) = raw(db, "SELECT cancel_note FROM reservations WHERE id = :rid", rid=rid)
    assert after != before and after.startswith("gAAAAA")
    crypto.configure([new])  # the old key is gone: the note still opens
    assert load_reservation_document(db, rid)["cancelNote"] == NOTE
    assert PiiService(db).rotate().resealed["reservations.cancel_note"] == 0


def test_without_a_key_a_note_is_refused_and_nothing_changes(flow: Workflow, db: Database) -> None:
    rid = deposit_held(flow)
    log_before = log_of(db, rid)
    crypto.configure([])
    with pytest.raises(StatementError) as caught:
        cancel(flow, rid)
    assert isinstance(caught.value.orig, EncryptionKeyProblem)
    assert "Zelda" not in str(caught.value)  # the statement's values are hidden
    assert load_reservation_document(db, rid)["state"] == "AWAITING_REQUESTER_AUTH"
    assert log_of(db, rid) == log_before
    assert cancel(flow, rid, note=None)  # a cancel without a note needs no key


def test_the_log_takes_only_bookijis_own_reasons(flow: Workflow, db: Database) -> None:
    rid = deposit_held(flow)
    with pytest.raises(ValueError, match="reason"):
        flow.reservations.cancel(rid, actor="operator:cli", reason="Zelda is ill")  # type: ignore[arg-type]
    assert load_reservation_document(db, rid)["state"] == "AWAITING_REQUESTER_AUTH"
    assert "Zelda" not in raw_tables(db)
