"""The confirmation-token key is created on first use: two workers using it first at the
same moment both get the one stored, instead of one failing on the unique name (a daemon's
notification thread and a request did, once notifications moved off the request)."""

from __future__ import annotations

import contextlib
import threading

import pytest
from sqlalchemy import event

from bookiji.services.clock import ManualClock
from bookiji.services.confirmation import installation_key
from bookiji.store.database import Database


def test_two_first_uses_at_once_share_one_key(
    backend: str, db: Database, clock: ManualClock
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite writers take turns (BEGIN IMMEDIATE): the two cannot interleave")
    barrier = threading.Barrier(2, timeout=10)
    waited: set[int] = set()

    def looked(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        me = threading.get_ident()
        if "FROM app_secrets" in statement and me not in waited:
            waited.add(me)  # both look before either inserts
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()

    keys: list[bytes] = []
    errors: list[str] = []

    def first_use() -> None:
        try:
            keys.append(installation_key(db, clock))
        except Exception as exc:
            errors.append(type(exc).__name__)

    event.listen(db.engine, "after_cursor_execute", looked)
    try:
        workers = [threading.Thread(target=first_use) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
    finally:
        event.remove(db.engine, "after_cursor_execute", looked)
    assert errors == []
    assert len(keys) == 2 and keys[0] == keys[1] == installation_key(db, clock)
