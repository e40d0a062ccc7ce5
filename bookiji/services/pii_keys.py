"""Whether the configured PII keys open the data stored in this database.

A well-formed key that is not one the data was sealed with (a mistyped key file, another
environment's key) used to be accepted: reads of sealed rows failed later, and new rows were
sealed with it, so the database held data under two unrelated keys. The checks here run
before anything is read or written:

* key-check records (`pii_key_checks`): one Fernet token per key that sealed, or may have
  sealed, stored data. Every record must open with the configured keys. A new newest key (a
  rotation begins) gets its record when a daemon or the CLI starts with it; `pii rotate`, once
  everything is re-sealed, keeps only the newest key's record, so the old key can go.
* a bounded sample of stored values (the last rows by primary key of every sealed column,
  an index walk, never a scan): catches data sealed by something that never wrote a record
  (a process of an older version), and decides on a database from before the records.

The first record of a database is written for every configured key (a key listed then is
taken to hold data until `pii rotate` has finished). A fresh database with nothing sealed
passes with or without keys; without keys, any record or sealed value fails.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, type_coerce
from sqlmodel import SQLModel, col, select

from bookiji.store.crypto import PiiKeyError, is_sealed, keyring
from bookiji.store.database import Database
from bookiji.store.models import PiiKeyCheck
from bookiji.store.uow import UnitOfWork

#: The text each key-check record seals (a known plain text is no weakness for Fernet).
CHECK_TEXT = "bookiji pii key check"
#: Stored values tried per sealed column: the last rows by primary key (an index walk).
SAMPLE_ROWS = 50

_REMEDY = (
    "list every key in use (newest first) in BOOKIJI_PII_KEYS or pii_keys_file; drop an old "
    "key only after `bookiji pii rotate` has finished"
)


@dataclass(frozen=True)
class KeyCheck:
    records: int  # key-check records, all opened
    sampled: int  # sealed values sampled, all opened
    registered: int  # key-check records written by this check
    #: Whether a record or sampled value was sealed with the newest key before this check;
    #: False with data present: the newest key is new here (a rotation begins with it).
    newest_in_use: bool


def _no_key(what: str) -> PiiKeyError:
    return PiiKeyError(
        f"{what} in this database is encrypted and no PII key is configured "
        "(BOOKIJI_PII_KEYS or pii_keys_file)"
    )


def _records(db: Database) -> list[str]:
    with UnitOfWork(db, readonly=True) as uow:
        return list(uow.session.exec(select(PiiKeyCheck.token)).all())


def _token(stored: Any) -> str | None:
    token = stored.get("sealed") if isinstance(stored, dict) else stored
    return token if isinstance(token, str) and is_sealed(token) else None


def _sample(db: Database, columns: Sequence[tuple[type[SQLModel], str, str, Any]]) -> list[str]:
    tokens: list[str] = []
    with UnitOfWork(db, readonly=True) as uow:
        for model, _attribute, column, raw in columns:
            table = model.__table__  # type: ignore[attr-defined]
            order = [c.desc() for c in table.primary_key.columns]
            stored = uow.session.execute(
                select(type_coerce(table.c[column], raw())).order_by(*order).limit(SAMPLE_ROWS)
            ).scalars()
            tokens += [t for t in map(_token, stored) if t is not None]
    return tokens


def problem(db: Database) -> str | None:
    """What is wrong with the configured keys, judged by the key-check records only (one
    small read): for `/readyz`, which runs every few seconds. None when they all open."""
    records = _records(db)
    ring = keyring()
    if not records:
        return None
    if not ring.configured:
        return str(_no_key("personal data"))
    unopened = sum(1 for token in records if not ring.opens(token))
    return str(_unopened(unopened, len(records))) if unopened else None


def _unopened(unopened: int, records: int) -> PiiKeyError:
    return PiiKeyError(
        f"the configured PII keys do not open data stored in this database: {unopened} of "
        f"the {records} keys it holds data under {'is' if unopened == 1 else 'are'} not "
        f"configured (a mistyped key file, or another environment's key?); {_REMEDY}"
    )


def verify(
    db: Database,
    columns: Sequence[tuple[type[SQLModel], str, str, Any]],
    *,
    register: bool,
    sample: bool,
) -> KeyCheck:
    """Refuse (PiiKeyError, which names no key) unless the configured keys open every
    key-check record and, with `sample`, every sampled stored value. With `register`, a
    newest key without a record gets one (every configured key, on a database without any)."""
    ring = keyring()
    records = _records(db)
    tokens = _sample(db, columns) if sample else []
    if not ring.configured:
        if records:
            raise _no_key("personal data")
        if tokens:
            raise _no_key(f"stored personal data ({len(tokens)} sampled values)")
        return KeyCheck(0, 0, 0, newest_in_use=False)
    unopened = sum(1 for token in records if not ring.opens(token))
    if unopened:
        raise _unopened(unopened, len(records))
    closed = sum(1 for token in tokens if not ring.opens(token))
    if closed:
        raise PiiKeyError(
            f"the configured PII keys do not open {closed} of {len(tokens)} stored values "
            f"sampled from this database (a mistyped key file, or another environment's "
            f"key?); {_REMEDY}"
        )
    newest = any(not ring.needs_rotation(token) for token in [*records, *tokens])
    recorded = any(not ring.needs_rotation(token) for token in records)
    # Written only when the newest key has no record yet: otherwise the check is all reads,
    # and a command that only reads never queues for the write lock.
    registered = _register(db) if register and not recorded else 0
    return KeyCheck(len(records), len(tokens), registered, newest_in_use=newest)


def _register(db: Database) -> int:
    """A record for the newest key unless one opens with it; one per configured key when
    the database has none. In one write transaction, so two starts rarely both write (and
    two records of one key would be harmless)."""
    ring = keyring()
    with UnitOfWork(db) as uow:
        records = list(uow.session.exec(select(PiiKeyCheck.token)).all())
        if any(not ring.needs_rotation(token) for token in records):
            return 0
        tokens = ring.seal_with_each(CHECK_TEXT)
        if records:
            tokens = tokens[:1]
        now = datetime.now(UTC)
        for token in tokens:
            uow.session.add(PiiKeyCheck(id=secrets.token_hex(16), token=token, created_at=now))
        uow.commit()
    return len(tokens)


def retire_old_keys(db: Database) -> int:
    """After a finished `pii rotate`: everything is sealed with the newest key, so only its
    record stays and the older keys may be dropped. The number of records removed."""
    ring = keyring()
    if not ring.configured:
        return 0
    _register(db)
    with UnitOfWork(db) as uow:
        rows = uow.session.exec(select(PiiKeyCheck.id, PiiKeyCheck.token)).all()
        old = [id_ for id_, token in rows if ring.needs_rotation(token)]
        if old:
            uow.session.execute(delete(PiiKeyCheck).where(col(PiiKeyCheck.id).in_(old)))
            uow.commit()
    return len(old)
