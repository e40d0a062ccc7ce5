"""Whether the configured PII keys open the data stored in this database, and whether the
newest of them (the one that seals) is one the database knows.

A well-formed key that is not one the data was sealed with (a mistyped key file, another
environment's key) used to be accepted: reads of sealed rows failed later, and new rows were
sealed with it, so the database held data under two unrelated keys. Listed FIRST, ahead of
the right key, such a key was still taken for the start of a rotation. The checks here run
before anything is read or written:

* key-check records (`pii_key_checks`): one Fernet token per key that sealed, or may have
  sealed, stored data. Every record must open with the configured keys, and the newest key
  must have one: a key becomes the sealing key only through `bookiji pii begin-rotation`
  (`verify(begin_rotation=True)`), never because a daemon or a command started with it
  first. `pii rotate` (which refuses to begin a rotation itself), once everything is
  re-sealed, keeps only the newest key's record, so the old key can go.
* a bounded sample of stored values (the last rows by primary key of every sealed column,
  an index walk, never a scan): catches data sealed by something that never wrote a record
  (a process of an older version), and decides on a database from before the records:
  there the newest key must open one of the sampled values.

The first records of a database are written, one per configured key, by the first process
that starts on it with keys (a key listed then is taken to hold data until `pii rotate` has
finished): on a fresh database with nothing sealed, or on one from before the records whose
sample the newest key opens. A fresh database with nothing sealed passes with or without
keys; without keys, any record or sealed value fails.

`problem()` (for `/readyz`, records only) fails when a record does not open, and when a
running process's newest key has lost its record (a `pii rotate` under another newest key
retired it while this process kept sealing with it).
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
#: Why a key listed first that the database does not know is refused, and the way out.
_UNREGISTERED = (
    "the newest configured PII key (the first listed) is new to this database, which holds "
    "data under other keys: if it is mistyped or another environment's key, put the right "
    "key first; if it is a new key meant to replace them, run `bookiji pii begin-rotation` "
    "with it first and the old keys after it (operator guide: rotation steps)"
)


@dataclass(frozen=True)
class KeyCheck:
    records: int  # key-check records, all opened
    sampled: int  # sealed values sampled, all opened
    registered: int  # key-check records written by this check


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
    small read): for `/readyz`, which runs every few seconds. None when they all open and
    one of them is the newest key's (a process whose key a rotation retired is not ready)."""
    records = _records(db)
    ring = keyring()
    if not records:
        return None
    if not ring.configured:
        return str(_no_key("personal data"))
    unopened = sum(1 for token in records if not ring.opens(token))
    if unopened:
        return str(_unopened(unopened, len(records)))
    if not _sealed_with_newest(records):
        return (
            "the newest configured PII key has no key-check record in this database: a "
            "`bookiji pii rotate` finished under another newest key while this process kept "
            "sealing with its own; restart it with that rotation's key list, then run "
            "`bookiji pii rotate` again"
        )
    return None


def _sealed_with_newest(tokens: Sequence[str]) -> bool:
    ring = keyring()
    return any(not ring.needs_rotation(token) for token in tokens)


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
    begin_rotation: bool = False,
) -> KeyCheck:
    """Refuse (PiiKeyError, which names no key) unless the configured keys open every
    key-check record and, with `sample`, every sampled stored value, and the newest key
    has a record (or, on a database without records, opens a sampled value or nothing is
    sealed yet). Without records the sample is always taken: only it tells a fresh database
    from one sealed before the records.

    `register`: a database without records gets one per configured key (the first start).
    `begin_rotation` (`bookiji pii begin-rotation`): a newest key without a record is not
    refused but gets one; the only way a new key starts sealing."""
    ring = keyring()
    records = _records(db)
    if not ring.configured:
        tokens = _sample(db, columns) if sample else []
        if records:
            raise _no_key("personal data")
        if tokens:
            raise _no_key(f"stored personal data ({len(tokens)} sampled values)")
        return KeyCheck(0, 0, 0)
    tokens = _sample(db, columns) if sample or not records else []
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
    # Without records (a fresh database, or one sealed before them) the sample decides.
    known = _sealed_with_newest(records or tokens) or not (records or tokens)
    if not known and not begin_rotation:
        raise PiiKeyError(_UNREGISTERED)
    # Written only when the newest key has no record yet: otherwise the check is all reads,
    # and a command that only reads never queues for the write lock.
    write = (register and not records) or (begin_rotation and not (records and known))
    registered = _register(db, begin_rotation=begin_rotation) if write else 0
    return KeyCheck(len(records), len(tokens), registered)


def _register(db: Database, *, begin_rotation: bool) -> int:
    """One record per configured key on a database without any; with `begin_rotation`, a
    record for the newest key unless one opens with it. In one write transaction, judging
    the records again: another process may have written the first ones meanwhile (two
    first starts with different keys: the second is refused, as it would be later)."""
    ring = keyring()
    with UnitOfWork(db) as uow:
        records = list(uow.session.exec(select(PiiKeyCheck.token)).all())
        if _sealed_with_newest(records):
            return 0
        tokens = ring.seal_with_each(CHECK_TEXT)
        if records:
            unopened = sum(1 for token in records if not ring.opens(token))
            if unopened:
                raise _unopened(unopened, len(records))
            if not begin_rotation:
                raise PiiKeyError(_UNREGISTERED)
            tokens = tokens[:1]
        now = datetime.now(UTC)
        for token in tokens:
            uow.session.add(PiiKeyCheck(id=secrets.token_hex(16), token=token, created_at=now))
        uow.commit()
    return len(tokens)


def retire_old_keys(db: Database) -> int:
    """After a finished `pii rotate`: everything is sealed with the newest key, so only its
    record stays and the older keys may be dropped. The number of records removed. Refused
    (nothing removed) while the newest key has no record: `pii rotate` never begins a
    rotation, and the records of the keys that open the data must not all go."""
    ring = keyring()
    if not ring.configured:
        return 0
    with UnitOfWork(db) as uow:
        rows = uow.session.exec(select(PiiKeyCheck.id, PiiKeyCheck.token)).all()
        if not _sealed_with_newest([token for _, token in rows]):
            raise PiiKeyError(_UNREGISTERED)
        old = [id_ for id_, token in rows if ring.needs_rotation(token)]
        if old:
            uow.session.execute(delete(PiiKeyCheck).where(col(PiiKeyCheck.id).in_(old)))
            uow.commit()
    return len(old)
