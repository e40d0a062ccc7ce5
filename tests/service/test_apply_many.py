"""The expiry sweep's batch of state changes: one UPDATE for all, each row still checked
against the version it was read at, and every log row and event written."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm.exc import StaleDataError

from bookiji.domain.states import ReservationState, StageTTLs
from bookiji.services import transitions
from bookiji.services.clock import ManualClock
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.store.database import Database
from bookiji.store.uow import UnitOfWork
from tests.conftest import T0
from tests.factories import add_vendor

S = ReservationState


def holds(db: Database, clock: ManualClock, count: int) -> list[str]:
    add_vendor(db)
    service = ReservationService(db, clock, StageTTLs())
    start = T0 + timedelta(days=1)
    return [
        service.create_hold(
            HoldRequest("v1", start + timedelta(hours=2 * i), start + timedelta(hours=2 * i + 1),
                        f"r{i}"), actor="t",
        ).reservation_id
        for i in range(count)
    ]  # fmt: skip


def test_a_batch_moves_every_row_and_logs_each(db: Database, clock: ManualClock) -> None:
    ids = holds(db, clock, 3)
    with UnitOfWork(db, readonly=True) as uow:
        versions = {i: uow.reservations.get(i).version for i in ids}  # type: ignore[union-attr]
    with UnitOfWork(db) as uow:
        rows = [uow.reservations.get(i, for_update=True) for i in ids]
        moves = [transitions.Move(r, S.CANCELLED, "batch") for r in rows if r is not None]
        done = transitions.apply_many(uow, moves, now=clock.now(), ttls=StageTTLs(), actor="t")
        uow.commit()
    assert len(done) == 3
    with UnitOfWork(db, readonly=True) as uow:
        for rid in ids:
            row = uow.reservations.get(rid)
            assert row is not None and row.state == "CANCELLED"
            assert row.version == (versions[rid] or 0) + 1
            assert uow.transitions.for_reservation(rid)[-1].to_state == "CANCELLED"


def test_a_row_changed_since_it_was_read_fails_the_whole_batch(
    db: Database, clock: ManualClock
) -> None:
    ids = holds(db, clock, 2)
    with UnitOfWork(db, readonly=True) as uow:
        stale = [uow.reservations.get(i) for i in ids]
    before = [r.state for r in stale if r]
    with db.engine.begin() as conn:  # another writer moves one of them meanwhile
        conn.execute(text("UPDATE reservations SET version = version + 1 WHERE id = :id"),
                     {"id": ids[1]})  # fmt: skip
    with UnitOfWork(db) as uow, pytest.raises(StaleDataError):
        for row in stale:
            assert row is not None
            uow.session.add(row)
        moves = [transitions.Move(r, S.CANCELLED, "batch") for r in stale if r is not None]
        transitions.apply_many(uow, moves, now=clock.now(), ttls=StageTTLs(), actor="t")
    with UnitOfWork(db, readonly=True) as uow:
        after = [uow.reservations.get(i) for i in ids]
    assert [r.state for r in after if r] == before  # the batch moved nothing
