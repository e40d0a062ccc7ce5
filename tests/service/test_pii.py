"""Personal data and credentials are encrypted at rest, keys rotate, and `forget` erases a
requester while the money and the audit trail stay intact. SQLite and Postgres."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import JSON, text, type_coerce
from sqlalchemy.exc import StatementError
from sqlmodel import col, select

from bookiji.bootstrap import build
from bookiji.config import Settings
from bookiji.daemon.jobs import all_jobs
from bookiji.domain.errors import EncryptionKeyProblem, IdempotencyKeyReused, NotFound
from bookiji.integrations.local_gateway import LocalGateway
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.audit import audit
from bookiji.services.calendars import CalendarService
from bookiji.services.clock import ManualClock
from bookiji.services.documents import load_reservation_document
from bookiji.services.pii import PiiService
from bookiji.services.reservations import HoldRequest
from bookiji.store import crypto
from bookiji.store.database import Database
from bookiji.store.models import (
    Booking,
    CalendarConnection,
    IdempotencyKey,
    Partner,
    Reservation,
    ReservationTransition,
)
from bookiji.store.uow import UnitOfWork
from tests.payments.harness import DAY, NOW, Workflow, build_workflow, local_faults

CONTACT = {"name": "Zelda Quixote", "email": "zelda.q@example.org", "phone": "+44 7700 900321"}
METADATA = {"passport": "P-99X-4471", "note": "allergic to peanuts"}
SECRETS = ("Zelda Quixote", "zelda.q@example.org", "7700 900321", "P-99X-4471", "peanuts")


@pytest.fixture
def flow(db: Database) -> Workflow:
    gateway = LocalGateway(db, ManualClock(NOW))
    return build_workflow(db, gateway, local_faults(gateway))


def hold(flow: Workflow, hour: int, requester: str = "req-zq", **extra: Any) -> str:
    start = DAY + timedelta(hours=hour)
    return flow.reservations.create_hold(
        HoldRequest("shop", start, start + timedelta(hours=1), requester, **extra), actor="test"
    ).reservation_id


def committed(flow: Workflow, hour: int, **extra: Any) -> str:
    rid = hold(flow, hour, **extra)
    flow.reservations.confirm(rid, actor="vendor")
    flow.payments.authorize(rid, "vendor", payment_method="pm_card_visa", actor="test")
    flow.payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="test")
    return rid


def raw_dump(db: Database) -> str:
    """Everything the database holds in the tables with personal data, as stored."""
    parts: list[str] = []
    with db.engine.connect() as conn:
        for table, column in (
            ("reservations", "metadata"),
            ("reservations", "requester_contact"),
            ("idempotency_keys", "response_body"),
            ("calendar_connections", "credentials_ref"),
            ("partners", "webhook_secret"),
        ):
            cast = "::text" if db.is_postgres else ""
            parts += [str(v) for (v,) in conn.execute(text(f"SELECT {column}{cast} FROM {table}"))]
    return "\n".join(parts)


def test_personal_data_and_credentials_are_sealed_at_rest(flow: Workflow, db: Database) -> None:
    rid = hold(flow, 10, idempotency_key="k1", metadata=METADATA, contact=CONTACT)
    ApiKeyService(db, flow.clock).add_partner("acme", "Acme")
    CalendarService(db, flow.clock, lambda c, v: None).connect(  # type: ignore[arg-type,return-value]
        "shop", "google", "primary", credentials_ref='json:{"refresh_token": "1//refresh-XYZ"}'
    )
    stored = raw_dump(db)
    for secret in (*SECRETS, "refresh-XYZ"):
        assert secret not in stored
    assert "sealed" in stored and "gAAAAA" in stored
    if db.is_sqlite:  # nor anywhere in the files on disk (database and write-ahead log)
        path = Path(db.engine.url.database or "")
        blob = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert b"zelda.q@example.org" not in blob and b"P-99X-4471" not in blob
    document = load_reservation_document(db, rid)
    assert document["requester"] == CONTACT and document["metadata"] == METADATA
    with UnitOfWork(db, readonly=True) as uow:
        partner = uow.session.get(Partner, "acme")
        connection = uow.session.exec(select(CalendarConnection)).one()
        answer = uow.session.exec(select(IdempotencyKey)).one()
    assert partner is not None and (partner.webhook_secret or "").startswith("whsec_")
    assert connection.credentials_ref == 'json:{"refresh_token": "1//refresh-XYZ"}'
    assert answer.response_body is not None and answer.response_body["requester"] == CONTACT


def test_rotation_reseals_with_the_newest_key_and_old_rows_too(
    flow: Workflow, db: Database
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    crypto.configure([old])
    rid = hold(flow, 10, idempotency_key="k1", metadata=METADATA, contact=CONTACT)
    # A row from before encryption existed: plain JSON in the column.
    with db.engine.begin() as conn:
        conn.execute(
            Reservation.__table__.update()  # type: ignore[attr-defined]
            .where(Reservation.__table__.c.id == rid)  # type: ignore[attr-defined]
            .values(requester_contact=type_coerce({"name": "Legacy Lou"}, JSON()))
        )
    crypto.configure([new, old])  # the new key in front; the old one still opens
    assert load_reservation_document(db, rid)["requester"] == {"name": "Legacy Lou"}
    PiiService(db).begin_rotation()  # (`rotate` alone refuses a key the database lacks)
    result = PiiService(db, batch_size=1).rotate()
    assert result.resealed["reservations.requester_contact"] == 1
    assert result.resealed["reservations.meta"] == 1
    assert result.resealed["idempotency_keys.response_body"] == 1
    assert "Legacy Lou" not in raw_dump(db)
    crypto.configure([new])  # the old key is gone: everything still opens
    document = load_reservation_document(db, rid)
    assert document["requester"] == {"name": "Legacy Lou"} and document["metadata"] == METADATA
    assert sum(PiiService(db).rotate().resealed.values()) == 0  # nothing left to do
    crypto.configure([Fernet.generate_key().decode()])  # a wrong key: a clear error
    with pytest.raises(EncryptionKeyProblem, match="does not open"):
        load_reservation_document(db, rid)


def test_rotation_reseals_a_partner_s_previous_webhook_secret(flow: Workflow, db: Database) -> None:
    """The secret a webhook-secret rotation keeps for its overlap is sealed like the current
    one, and `pii rotate` re-seals it."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    crypto.configure([old])
    keys = ApiKeyService(db, flow.clock)
    _, first = keys.add_partner("globex", "Globex")
    second = keys.rotate_webhook_secret("globex", overlap=timedelta(hours=24))
    with db.engine.connect() as conn:
        (stored,) = conn.execute(
            text("SELECT previous_webhook_secret FROM partners WHERE id = 'globex'")
        ).one()
    assert stored.startswith("gAAAAA") and first not in stored
    crypto.configure([new, old])
    PiiService(db).begin_rotation()
    result = PiiService(db).rotate()
    assert result.resealed["partners.previous_webhook_secret"] == 1
    assert result.resealed["partners.webhook_secret"] >= 1
    crypto.configure([new])  # the old key is gone: both secrets still open
    partner = keys.get_partner("globex")
    assert (partner.webhook_secret, partner.previous_webhook_secret) == (second, first)


def test_a_replaced_webhook_secret_is_erased_once_its_overlap_is_over(db: Database) -> None:
    """The daemon's webhook job erases a replaced signing secret when its overlap ends (not
    before: until then deliveries still carry its signature); the current one stays."""
    clock = ManualClock(NOW)
    container = build(Settings(database_url=db.url), clock=clock)
    keys = container.apikeys
    keys.add_partner("globex", "Globex")
    keys.add_partner("initech", "Initech")
    current = keys.rotate_webhook_secret("globex", overlap=timedelta(hours=1))
    keys.rotate_webhook_secret("initech", overlap=timedelta(hours=3))
    job = all_jobs(container)["webhooks"]

    def kept() -> dict[str, bool]:
        with db.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, previous_webhook_secret, previous_webhook_secret_until "
                     "FROM partners ORDER BY id")
            ).all()  # fmt: skip
        return {pid: secret is not None and until is not None for pid, secret, until in rows}

    clock.advance(timedelta(minutes=59))
    assert job().items == [] and kept() == {"globex": True, "initech": True}
    clock.advance(timedelta(minutes=1))
    assert job().items == [{"replacedWebhookSecretsErased": 1}]
    assert kept() == {"globex": False, "initech": True}
    assert keys.get_partner("globex").webhook_secret == current
    assert job().items == []  # nothing left to erase: no write


def test_without_a_key_personal_data_is_refused_and_nothing_is_written(
    flow: Workflow, db: Database
) -> None:
    crypto.configure([])
    with pytest.raises(StatementError) as caught:
        hold(flow, 10, contact=CONTACT)
    assert isinstance(caught.value.orig, EncryptionKeyProblem)
    assert "BOOKIJI_PII_KEYS" in str(caught.value.orig)
    assert "zelda" not in str(caught.value).lower()  # the statement's values are hidden
    with UnitOfWork(db, readonly=True) as uow:
        assert uow.session.exec(select(Reservation)).all() == []
    assert hold(flow, 11)  # a hold without personal data needs no key


def test_forget_erases_the_requester_but_keeps_money_and_audit_trail(
    flow: Workflow, db: Database
) -> None:
    paid = committed(flow, 10, metadata=METADATA, contact=CONTACT, idempotency_key="k1")
    open_hold = hold(flow, 12, contact=CONTACT)
    other = hold(flow, 14, requester="someone-else", metadata={"keep": "me"})

    def money_and_log(rid: str) -> tuple[Any, ...]:
        with UnitOfWork(db, readonly=True) as uow:
            r = uow.reservations.get(rid)
            assert r is not None
            log = uow.session.exec(
                select(ReservationTransition)
                .where(col(ReservationTransition.reservation_id) == rid)
                .order_by(col(ReservationTransition.id))
            ).all()
            return (
                r.state, r.price_amount, r.deposit_amount, r.currency, r.vendor_payment_ref,
                r.requester_payment_ref, r.vendor_payment_state, r.requester_payment_state,
                [(t.from_state, t.to_state, t.reason, t.actor, t.at) for t in log],
            )  # fmt: skip

    before = {rid: money_and_log(rid) for rid in (paid, open_hold, other)}
    erasure = PiiService(db).forget("req-zq")
    assert sorted(erasure.reservations) == sorted([paid, open_hold])
    assert erasure.bookings == 1 and erasure.stored_answers == 1
    assert {rid: money_and_log(rid) for rid in (paid, open_hold, other)} == before
    for rid in (paid, open_hold):
        document = load_reservation_document(db, rid)
        assert document["requesterId"] == erasure.pseudonym
        assert document["requester"] is None and document["metadata"] == {}
    with UnitOfWork(db, readonly=True) as uow:
        booking = uow.session.exec(select(Booking)).one()
        answer = uow.session.exec(select(IdempotencyKey)).one()
    assert booking.requester_id == erasure.pseudonym
    assert answer.response_body is not None
    assert answer.response_body["requesterId"] == erasure.pseudonym
    assert "Zelda" not in str(answer.response_body)
    # The key's fingerprint was a hash of the erased data: the original request no longer
    # matches it (no way to confirm a guess), and the key stays taken.
    with pytest.raises(IdempotencyKeyReused):
        hold(flow, 10, metadata=METADATA, contact=CONTACT, idempotency_key="k1")
    assert load_reservation_document(db, other)["metadata"] == {"keep": "me"}
    assert audit(db, flow.gateway) == []
    with pytest.raises(NotFound):
        PiiService(db).forget("req-zq")  # nothing left under that id
