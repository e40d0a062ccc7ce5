"""Rows written by the hot path's prepared INSERTs read back exactly as rows the ORM wrote,
and they fail the way SQLAlchemy's own statements fail (so callers' handling still holds)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, StatementError

from bookiji.store import crypto
from bookiji.store.crypto import EncryptionKeyProblem
from bookiji.store.database import Database
from bookiji.store.errors import is_overlap_violation
from bookiji.store.models import OutboxEvent, Reservation, VendorNotificationRow
from bookiji.store.uow import UnitOfWork
from tests.conftest import T0
from tests.factories import add_vendor

TABLE = Reservation.__table__  # type: ignore[attr-defined]


def _fields(rid: str, start_hours: int) -> dict[str, Any]:
    start = T0 + timedelta(days=2, hours=start_hours)
    return {
        "id": rid, "vendor_id": "v1", "requester_id": "r1", "partner_id": None,
        "slot_start": start, "slot_end": start + timedelta(hours=1),
        "block_start": start, "block_end": start + timedelta(hours=1),
        "state": "HELD", "state_deadline": T0 + timedelta(minutes=10), "version": 1,
        "currency": "gbp", "price_amount": 5000, "deposit_amount": 1000,
        "vendor_payment_state": "not_started", "vendor_payment_ref": None,
        "requester_payment_state": "not_started", "requester_payment_ref": None,
        "metadata": {"note": "window seat", "n": 2},
        "requester_contact": {"name": "Zelda Quixote", "email": "zelda.q@example.org"},
        "idempotency_key": None, "created_at": T0, "updated_at": T0,
    }  # fmt: skip


def _stored(db: Database, rid: str) -> dict[str, Any]:
    with UnitOfWork(db, readonly=True) as uow:
        raw = uow.session.connection().exec_driver_sql(
            f"SELECT * FROM reservations WHERE id = '{rid}'"  # the bytes as stored
        )
        row = dict(raw.mappings().one())
        loaded = uow.session.execute(select(TABLE).where(TABLE.c.id == rid)).mappings().one()
    sealed = ("metadata", "requester_contact")  # ciphertext differs per write, by design
    return {k: (dict(loaded)[k] if k in sealed else v) for k, v in row.items() if k != "id"}


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Restored afterwards: later tests in this process must not find an empty keyring.
    monkeypatch.setattr(crypto, "_keyring", crypto.Keyring([crypto.new_key()]))


def test_a_prepared_insert_stores_what_the_orm_stores(db: Database, keyed: None) -> None:
    add_vendor(db, "v1")
    orm_fields = {("meta" if k == "metadata" else k): v for k, v in _fields("res_orm", 0).items()}
    with UnitOfWork(db) as uow:
        uow.reservations.add(Reservation(**orm_fields))
        uow.insert(Reservation, _fields("res_fast", 2))
        uow.commit()
    orm, fast = _stored(db, "res_orm"), _stored(db, "res_fast")
    moved = ("slot_start", "slot_end", "block_start", "block_end")
    for key in moved:  # two hours apart, same format
        assert type(orm[key]) is type(fast[key])
    assert {k: v for k, v in orm.items() if k not in moved} == {
        k: v for k, v in fast.items() if k not in moved
    }


def test_columns_left_out_take_their_model_defaults(db: Database) -> None:
    add_vendor(db, "v1")
    fields = _fields("res_1", 0) | {"metadata": {}, "requester_contact": None}
    with UnitOfWork(db) as uow:
        uow.insert(Reservation, fields)
        uow.insert(OutboxEvent, [{"event_id": "evt_1", "type": "reservation.held",
                                  "reservation_id": "res_1", "partner_id": None,
                                  "created_at": T0}])  # fmt: skip
        uow.insert(VendorNotificationRow, {
            "id": "ntf_1", "reservation_id": "res_1", "vendor_id": "v1", "channel": "console",
            "destination": "console", "token_id": "tok_1", "next_attempt_at": T0,
            "created_at": T0,
        })  # fmt: skip
        uow.commit()
    with UnitOfWork(db, readonly=True) as uow:
        event = uow.session.execute(
            select(OutboxEvent).where(OutboxEvent.event_id == "evt_1")  # type: ignore[arg-type]
        ).scalar_one_or_none()
        note = uow.session.get(VendorNotificationRow, "ntf_1")
        assert event is not None and event.payload == {}
        assert note is not None and (note.status, note.attempts) == ("pending", 0)


def test_an_overlap_is_refused_as_sqlalchemys_integrity_error(db: Database) -> None:
    add_vendor(db, "v1")
    plain = {"metadata": {}, "requester_contact": None}
    with UnitOfWork(db) as uow:
        uow.insert(Reservation, _fields("res_1", 0) | plain)
        uow.commit()
    with pytest.raises(IntegrityError) as caught, UnitOfWork(db) as uow:
        uow.insert(Reservation, _fields("res_2", 0) | plain)
    assert is_overlap_violation(caught.value)


def test_a_value_its_type_refuses_fails_before_writing_and_hides_the_values(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_vendor(db, "v1")
    monkeypatch.setattr(crypto, "_keyring", crypto.Keyring([]))
    with pytest.raises(StatementError) as caught, UnitOfWork(db) as uow:
        uow.insert(Reservation, _fields("res_1", 0))
    assert isinstance(caught.value.orig, EncryptionKeyProblem)
    assert "zelda" not in str(caught.value).lower()


def test_rows_of_one_statement_must_share_their_columns(db: Database) -> None:
    add_vendor(db, "v1")
    rows = [
        {"event_id": "evt_1", "type": "t", "reservation_id": "r", "partner_id": None},
        {"event_id": "evt_2", "type": "t", "reservation_id": "r"},
    ]
    with pytest.raises(ValueError, match="same columns"), UnitOfWork(db) as uow:
        uow.insert(OutboxEvent, rows)
