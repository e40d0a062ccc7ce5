"""The hot queries read through their indexes on both databases (found by bench/scale.py):
the expiry sweep through the partial index of due deadlines (Postgres), `reservations list
--state` through (state, created_at). Postgres is told to avoid sequential scans, since on a tiny
table it would rightly prefer one."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite

from bookiji.store.database import Database
from bookiji.store.uow import UnitOfWork
from tests.conftest import T0


def plan(db: Database, build: object) -> str:
    with UnitOfWork(db, readonly=True) as uow:
        statement = build(uow)  # type: ignore[operator]
        dialect = postgresql.dialect() if db.is_postgres else sqlite.dialect()
        sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        if db.is_postgres:
            uow.session.connection().exec_driver_sql("SET LOCAL enable_seqscan = off")
            rows = uow.session.connection().exec_driver_sql(f"EXPLAIN {sql}").all()
        else:
            rows = uow.session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
    return "\n".join(str(r[-1]) for r in rows)


def test_the_expiry_sweep_reads_the_partial_index(db: Database) -> None:
    from bookiji.store.repositories import EXPIRY_INDEX, due_for_expiry_query

    read = plan(db, lambda _uow: due_for_expiry_query(T0, 500))
    if db.is_postgres:
        assert EXPIRY_INDEX in read
    else:  # SQLite without statistics picks the due range of each state: indexed too
        assert "USING INDEX ix_reservations_state_deadline" in read or EXPIRY_INDEX in read
        assert "SCAN reservations" not in read


def test_listing_by_state_reads_state_then_creation(db: Database) -> None:
    from sqlmodel import col, select

    from bookiji.store.models import Reservation

    def listing(_uow: UnitOfWork) -> object:
        return (
            select(Reservation)
            .where(col(Reservation.state) == "COMMITTED")
            .order_by(col(Reservation.created_at).desc(), col(Reservation.id))
            .limit(50)
        )

    assert "ix_reservations_state_created" in plan(db, listing)


def test_hold_caps_count_from_the_partial_index_of_holds_in_flight(db: Database) -> None:
    """Counted inside every create: a range of the holds in flight, however many
    reservations the partner has finished."""
    from bookiji.services.holdcaps import _OF_OPERATOR, _OF_PARTNER

    for statement in (_OF_PARTNER, _OF_OPERATOR):
        read = plan(db, lambda _uow, s=statement: s.params(partner="acme", requester="alice"))
        assert "ix_reservations_holding" in read
        assert "SCAN reservations" not in read
