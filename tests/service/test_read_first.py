"""`Database.read_first`, the API's per-request read (key lookup, cached-availability check):
on SQLite it reuses connections kept aside, so it must never answer from an old snapshot
or leave a transaction open that holds writers or checkpoints back."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import OperationalError

from bookiji.store.database import IDLE_READERS, READ_BUSY_TIMEOUT_MS, Database
from bookiji.store.models import Vendor
from bookiji.store.uow import UnitOfWork
from tests.factories import add_vendor

VERSION = select(Vendor.schedule_version).where(Vendor.id == bindparam("vendor"))  # type: ignore[arg-type]


def test_each_read_sees_what_was_committed_before_it(db: Database) -> None:
    add_vendor(db, "v1")
    assert db.read_first(VERSION, {"vendor": "nobody"}) is None
    first = db.read_first(VERSION, {"vendor": "v1"})
    assert first is not None
    for bump in range(1, 4):
        with UnitOfWork(db) as uow:  # another connection writes between two reads
            uow.touch_schedule("v1")
            uow.commit()
        again = db.read_first(VERSION, {"vendor": "v1"})
        assert again is not None and again[0] == first[0] + bump


def test_no_read_stays_open_to_block_a_checkpoint(db: Database) -> None:
    add_vendor(db, "v1")
    for _ in range(3):
        db.read_first(VERSION, {"vendor": "v1"})
    with UnitOfWork(db) as uow:
        uow.touch_schedule("v1")
        uow.commit()
    if db.is_sqlite:  # a reader left inside a transaction pins the WAL's frames
        outside = sqlite3.connect(str(db.engine.url.database), isolation_level=None)
        try:
            _, frames, copied = outside.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            outside.close()
        assert frames > 0 and copied == frames


def test_concurrent_readers_get_answers_and_the_kept_connections_stay_bounded(
    db: Database,
) -> None:
    add_vendor(db, "v1")
    answers: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(50):
                row = db.read_first(VERSION, {"vendor": "v1"})
                assert row is not None
                answers.append(row[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and len(answers) == 12 * 50
    assert len(db._idle_readers) <= IDLE_READERS
    with db.engine.connect() as connection:  # the pool still hands out connections
        assert connection.execute(text("SELECT 1")).scalar() == 1


def test_kept_readers_wait_briefly_and_the_pool_keeps_the_writers_timeout(db: Database) -> None:
    """These reads may run on the API's event loop: a lock they meet (in WAL mode only while
    another connection recovers the WAL index) must not hold every request for the writers'
    30 s busy timeout; and their short timeout must never reach a writer's connection."""
    if not db.is_sqlite:
        pytest.skip("SQLite's busy timeout; Postgres reads run in threads")
    busy = text("PRAGMA busy_timeout")
    assert db.read_first(busy, {}) == (READ_BUSY_TIMEOUT_MS,)
    with pytest.raises(OperationalError):  # a failed read discards its connection ...
        db.read_first(text("SELECT * FROM no_such_table"), {})
    test_concurrent_readers_get_answers_and_the_kept_connections_stay_bounded(db)  # overflow
    held = [db.read_engine.connect() for _ in range(12)]  # ... and the pool hands out only its own
    try:
        for connection in held:
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        for connection in held:
            connection.close()


def test_the_api_reads_come_back_as_sqlalchemy_reads_them(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite `read_first` runs the compiled SQL on the bare driver: each column must still
    come out through its type (aware UTC datetimes, JSON lists), by index and by name."""
    from bookiji.services.apikeys import _BY_PREFIX, ApiKeyService
    from bookiji.services.availability import VERSION_AND_NOTICE
    from bookiji.services.clock import SystemClock
    from bookiji.store import crypto

    # The partner's webhook secret is sealed: a key of this test's own, whatever earlier
    # tests left configured in this process.
    monkeypatch.setattr(crypto, "_keyring", crypto.Keyring([crypto.new_key()]))
    add_vendor(db, "v1")
    keys = ApiKeyService(db, SystemClock())
    keys.add_partner("acme", "Acme")
    row, raw = keys.create_key("acme", scopes=["availability:read", "events:read"])
    keys.authenticate(raw)  # sets last_used_at: a datetime column with a value
    for statement, params in ((_BY_PREFIX, {"prefix": row.prefix}),
                              (VERSION_AND_NOTICE, {"vendor": "v1"})):  # fmt: skip
        with db.engine.connect() as connection:
            expected = connection.execute(statement, params).first()
        got = db.read_first(statement, params)
        assert expected is not None and got is not None
        assert tuple(got) == tuple(expected)
        assert all(getattr(got, name) == getattr(expected, name) for name in expected._fields)
    key = db.read_first(_BY_PREFIX, {"prefix": row.prefix})
    assert key is not None and key.scopes == ["availability:read", "events:read"]
    assert key.last_used_at is not None and key.last_used_at.utcoffset() is not None
