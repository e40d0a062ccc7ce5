"""An erasure on SQLite leaves the erased values neither in the write-ahead log nor in free
space of the database file (the requester id is plain text in reservations and its index).
SQLite and Postgres (the file checks: SQLite; Postgres keeps dead tuples until VACUUM, as the
operator guide says)."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bookiji.integrations.local_gateway import LocalGateway
from bookiji.services.clock import ManualClock
from bookiji.services.pii import PiiService
from bookiji.services.reservations import HoldRequest
from bookiji.store.database import Database
from tests.payments.harness import DAY, NOW, Workflow, build_workflow, local_faults

CONTACT = {"name": "Zelda Quixote", "email": "zelda.q@example.org"}


@pytest.fixture
def flow(db: Database) -> Workflow:
    gateway = LocalGateway(db, ManualClock(NOW))
    return build_workflow(db, gateway, local_faults(gateway))


def hold(flow: Workflow, hour: int, requester: str, **extra: Any) -> str:
    start = DAY + timedelta(hours=hour)
    return flow.reservations.create_hold(
        HoldRequest("shop", start, start + timedelta(hours=1), requester, **extra), actor="test"
    ).reservation_id


ERASED = "requester-ERASE-ME-7391-with-a-rather-long-suffix"


def database_bytes(db: Database) -> bytes:
    path = Path(db.engine.url.database or "")
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def test_forget_leaves_no_copy_in_the_sqlite_files(flow: Workflow, db: Database) -> None:
    """The requester id is plain text in reservations (and its index); before, the erased
    rows' old pages stayed in the write-ahead log, and without secure_delete in free space of
    the database file's pages."""
    for hour in range(9, 17):
        who = ERASED if hour % 3 == 0 else f"someone-{hour}"
        hold(flow, hour, requester=who, contact=CONTACT, idempotency_key=f"k{hour}")
    if db.is_sqlite:
        assert ERASED.encode() in database_bytes(db)
    erasure = PiiService(db).forget(ERASED)
    assert len(erasure.reservations) == 3
    if not db.is_sqlite:
        assert erasure.wal_truncated is None
        with db.engine.connect() as conn:
            dump = conn.execute(text("SELECT requester_id FROM reservations")).scalars().all()
        assert ERASED not in dump  # live rows; dead tuples stay until VACUUM (operator guide)
        return
    assert ERASED.encode() not in database_bytes(db)
    assert erasure.wal_truncated is True
    path = Path(db.engine.url.database or "")
    assert Path(f"{path}-wal").stat().st_size == 0


def test_forget_says_when_a_reader_holds_up_the_log(flow: Workflow, db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("the write-ahead log file is SQLite's")
    hold(flow, 10, requester=ERASED)
    hold(flow, 11, requester="someone-else")
    reader = sqlite3.connect(db.engine.url.database or "", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM reservations").fetchall()  # a snapshot held
        erasure = PiiService(db).forget(ERASED)  # committed all the same
        assert erasure.wal_truncated is False
        assert db.truncate_wal(wait_seconds=0.2) is False
    finally:
        reader.close()
    assert db.truncate_wal() is True
    assert ERASED.encode() not in database_bytes(db)


def test_connections_zero_deleted_content(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("a SQLite pragma")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
