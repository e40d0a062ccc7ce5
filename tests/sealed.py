"""What the database holds sealed, read raw: every Fernet token, and how many a key opens."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import type_coerce
from sqlmodel import select

from bookiji.services.pii import SEALED
from bookiji.store import crypto
from bookiji.store.database import Database
from bookiji.store.models import PiiKeyCheck
from bookiji.store.uow import UnitOfWork

T = TypeVar("T")


def stored_tokens(db: Database) -> list[str]:
    """Every Fernet token the database holds: sealed columns and key-check records."""
    tokens: list[str] = []
    with UnitOfWork(db, readonly=True) as uow:
        for model, _attribute, column, raw in SEALED:
            table = model.__table__  # type: ignore[attr-defined]
            for (value,) in uow.session.execute(select(type_coerce(table.c[column], raw()))):
                token = value.get("sealed") if isinstance(value, dict) else value
                if isinstance(token, str) and crypto.is_sealed(token):
                    tokens.append(token)
        tokens += list(uow.session.exec(select(PiiKeyCheck.token)).all())
    return tokens


def opened_by(db: Database, key: str) -> int:
    """How many of the stored tokens `key` opens."""
    fernet, count = Fernet(key.encode()), 0
    for token in stored_tokens(db):
        try:
            fernet.decrypt(token.encode())
        except InvalidToken:
            continue
        count += 1
    return count


def key_records(db: Database) -> int:
    with UnitOfWork(db, readonly=True) as uow:
        return len(uow.session.exec(select(PiiKeyCheck)).all())


def on(database_url: str, read: Callable[..., T], *args: object) -> T:
    """`read(db, *args)` on a database opened for it (tests whose processes own the URL)."""
    db = Database(database_url)
    try:
        return read(db, *args)
    finally:
        db.dispose()
