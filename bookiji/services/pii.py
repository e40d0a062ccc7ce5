"""Personal data: erasing a requester's, and re-sealing everything with the newest key.

`forget` keeps what the money and the audit trail need (amounts, payment references, states,
the transition log, which holds ids and Bookiji's own reasons) and replaces the requester's id
on their reservations and bookings with a pseudonym, clearing contact details, partner
metadata and cancel notes and redacting the stored idempotent answers. It is one
transaction: all or nothing. (Transitions written before migration 0013 may still carry a
cancel's free text as their reason: the log is append-only, and that history stays.)
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Text, type_coerce, update
from sqlalchemy.orm.attributes import flag_modified
from sqlmodel import SQLModel, col, select

from bookiji.domain.errors import NotFound
from bookiji.services import pii_keys
from bookiji.store.crypto import sealed_with_newest
from bookiji.store.database import Database
from bookiji.store.models import (
    Booking,
    CalendarConnection,
    IdempotencyKey,
    Partner,
    Reservation,
    Vendor,
)
from bookiji.store.uow import UnitOfWork

log = logging.getLogger(__name__)

#: (model, attribute, column name, raw type) of every sealed column.
SEALED: tuple[tuple[type[SQLModel], str, str, Any], ...] = (
    (Reservation, "meta", "metadata", JSON),
    (Reservation, "requester_contact", "requester_contact", JSON),
    (Reservation, "cancel_note", "cancel_note", Text),
    (IdempotencyKey, "response_body", "response_body", JSON),
    (CalendarConnection, "credentials_ref", "credentials_ref", Text),
    (CalendarConnection, "source", "source", Text),
    (Partner, "webhook_secret", "webhook_secret", Text),
    (Partner, "previous_webhook_secret", "previous_webhook_secret", Text),
    (Partner, "webhook_url", "webhook_url", Text),
    (Vendor, "notify_webhook_url", "notify_webhook_url", Text),
)


@dataclass(frozen=True)
class Erasure:
    pseudonym: str
    reservations: list[str]
    bookings: int
    stored_answers: int
    #: SQLite: whether the write-ahead log, which still held the erased values, was emptied
    #: (False: a reader held it up; it is emptied later). None on Postgres.
    wal_truncated: bool | None = None


@dataclass(frozen=True)
class Rotation:
    examined: int
    resealed: dict[str, int]


class PiiService:
    def __init__(self, db: Database, *, batch_size: int = 500) -> None:
        self.db = db
        self.batch_size = batch_size

    def forget(self, requester_id: str, *, partner_id: str | None = None) -> Erasure:
        pseudonym = f"forgotten-{secrets.token_hex(8)}"
        with UnitOfWork(self.db) as uow:
            query = select(Reservation).where(col(Reservation.requester_id) == requester_id)
            if partner_id is not None:
                query = query.where(col(Reservation.partner_id) == partner_id)
            reservations = list(uow.session.exec(query.order_by(col(Reservation.id))).all())
            if not reservations:
                raise NotFound(
                    "no reservations for this requester"
                    + (" and partner" if partner_id is not None else ""),
                    details={"partnerId": partner_id},
                )
            ids = [r.id for r in reservations]
            for reservation in reservations:
                reservation.requester_id = pseudonym
                reservation.meta = {}
                reservation.requester_contact = None
                reservation.cancel_note = None
            bookings = uow.session.execute(
                update(Booking)
                .where(col(Booking.reservation_id).in_(ids))
                .values(requester_id=pseudonym)
            )
            answers = list(
                uow.session.exec(
                    select(IdempotencyKey).where(col(IdempotencyKey.reservation_id).in_(ids))
                ).all()
            )
            for answer in answers:
                # The request's fingerprint is a hash of the erased data: a guess could be
                # checked against it. A random one keeps the key taken (another body is 422).
                answer.request_hash = secrets.token_hex(32)
                if answer.response_body is not None:
                    answer.response_body = {
                        **answer.response_body,
                        "requesterId": pseudonym,
                        "metadata": {},
                        "requester": None,
                    }
            uow.commit()
        log.info(
            "requester data erased",
            extra={"pseudonym": pseudonym, "reservations": len(ids), "partner_id": partner_id},
        )
        return Erasure(
            pseudonym,
            ids,
            int(bookings.rowcount or 0),  # type: ignore[attr-defined]
            len(answers),
            wal_truncated=self.db.truncate_wal() if self.db.is_sqlite else None,
        )

    def rotate(self, progress: Callable[[int, int], None] | None = None) -> Rotation:
        """Seal every stored value with the newest key (and seal rows from before sealing).
        Batched, so it can run beside the daemon and be stopped and run again. Refused
        (PiiKeyError, nothing re-sealed) while the newest key has no key-check record: a
        rotation begins with `begin_rotation`, and the daemons must seal with the new key
        before the old data is moved to it."""
        pii_keys.verify(self.db, SEALED, register=True, sample=False)
        stale: list[tuple[type[SQLModel], str, list[Any]]] = []
        examined = 0
        with UnitOfWork(self.db, readonly=True) as uow:
            for model, attribute, column, raw in SEALED:
                table = model.__table__  # type: ignore[attr-defined]
                keys = list(table.primary_key.columns)
                rows = uow.session.execute(
                    select(*keys, type_coerce(table.c[column], raw()))  # type: ignore[call-overload]
                ).all()
                examined += len(rows)
                pending = [
                    tuple(row[:-1]) if len(keys) > 1 else row[0]
                    for row in rows
                    if not sealed_with_newest(row[-1])
                ]
                stale.append((model, attribute, pending))
        total = sum(len(p) for _, _, p in stale)
        done = 0
        resealed: dict[str, int] = {}
        for model, attribute, pending in stale:
            name = f"{model.__tablename__}.{attribute}"
            resealed[name] = len(pending)
            for start in range(0, len(pending), self.batch_size):
                with UnitOfWork(self.db) as uow:
                    for key in pending[start : start + self.batch_size]:
                        row = uow.session.get(model, key)
                        if row is not None:
                            flag_modified(row, attribute)
                    uow.commit()
                done += len(pending[start : start + self.batch_size])
                if progress is not None:
                    progress(done, total)
        pii_keys.retire_old_keys(self.db)  # all sealed with the newest key: the rest may go
        return Rotation(examined, resealed)

    def check_keys(self, *, register: bool = False, sample: bool = True) -> pii_keys.KeyCheck:
        """Refuse (PiiKeyError) unless the configured keys open the stored data and the
        newest has a key-check record; see `pii_keys`. `register`: a database without
        records gets one per configured key (a daemon's or the CLI's first start)."""
        return pii_keys.verify(self.db, SEALED, register=register, sample=sample)

    def begin_rotation(self) -> pii_keys.KeyCheck:
        """Record the newest key (a new one, listed first) as the sealing key, once the
        configured keys are checked to open every record and a sample of stored values:
        the only way a new key starts sealing (`bookiji pii begin-rotation`)."""
        return pii_keys.verify(self.db, SEALED, register=True, sample=True, begin_rotation=True)

    def key_problem(self) -> str | None:
        """What is wrong with the keys by the key-check records alone (cheap, for /readyz)."""
        return pii_keys.problem(self.db)
