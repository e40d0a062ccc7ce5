"""Migrations build exactly the models, on both databases, and the guards hold."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

import bookiji.store.models  # noqa: F401  (registers the tables)
from bookiji.domain.states import StageTTLs
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.clock import ManualClock
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.store import migrate
from bookiji.store.database import Database
from tests.factories import add_vendor

EXPECTED_TABLES = {
    "vendors",
    "calendar_connections",
    "busy_intervals",
    "reservations",
    "reservation_transitions",
    "bookings",
    "partners",
    "partner_api_keys",
    "idempotency_keys",
    "outbox_events",
    "compensation_actions",
    "job_leases",
}


def test_migrations_match_the_models_and_downgrade_to_base(empty_database_url: str) -> None:
    db = Database(empty_database_url)
    try:
        assert migrate.current_revision(db) is None
        migrate.upgrade(db)
        assert migrate.is_at_head(db)
        assert set(inspect(db.engine).get_table_names()) >= EXPECTED_TABLES
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            drift = compare_metadata(context, SQLModel.metadata)
        assert drift == [], f"migrations and models disagree: {drift}"

        migrate.downgrade(db, "base")
        assert migrate.current_revision(db) is None
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        # And back up again: downgrade left nothing behind that blocks a re-run.
        migrate.upgrade(db)
        assert migrate.is_at_head(db)
    finally:
        db.dispose()


def test_0015_adds_the_previous_webhook_secret_and_goes_back(
    empty_database_url: str, clock: ManualClock
) -> None:
    """Down to 0014 in an overlap: the previous secret goes (the new one alone signs), the
    current one stays; up again: the columns are back, empty."""
    added = {"previous_webhook_secret", "previous_webhook_secret_until"}
    db = Database(empty_database_url)
    try:
        migrate.upgrade(db)
        keys = ApiKeyService(db, clock)
        keys.add_partner("acme", "Acme")
        new = keys.rotate_webhook_secret("acme", overlap=timedelta(hours=1))
        assert keys.get_partner("acme").previous_webhook_secret is not None
        migrate.downgrade(db, "0014")
        assert migrate.current_revision(db) == "0014"
        assert not added & {c["name"] for c in inspect(db.engine).get_columns("partners")}
        migrate.upgrade(db)
        assert added <= {c["name"] for c in inspect(db.engine).get_columns("partners")}
        partner = keys.get_partner("acme")
        assert (partner.webhook_secret, partner.previous_webhook_secret) == (new, None)
        assert partner.previous_webhook_secret_until is None
    finally:
        db.dispose()


def _hold(db: Database, clock: ManualClock) -> str:
    service = ReservationService(db, clock, StageTTLs())
    start = clock.now() + timedelta(days=1)
    outcome = service.create_hold(
        HoldRequest("v1", start, start + timedelta(hours=1), "req-1"), actor="test"
    )
    return outcome.reservation_id


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE reservation_transitions SET reason = 'rewritten'",
        "DELETE FROM reservation_transitions",
    ],
)
def test_transition_log_refuses_update_and_delete(
    db: Database, clock: ManualClock, statement: str
) -> None:
    add_vendor(db)
    reservation_id = _hold(db, clock)
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as conn:
        conn.execute(text(statement))
    with db.engine.connect() as conn:
        reasons = (
            conn.execute(
                text("SELECT reason FROM reservation_transitions WHERE reservation_id = :r"),
                {"r": reservation_id},
            )
            .scalars()
            .all()
        )
    assert len(reasons) == 2 and "rewritten" not in reasons


def test_postgres_also_refuses_truncate(db: Database, clock: ManualClock) -> None:
    if not db.is_postgres:
        pytest.skip("TRUNCATE exists only on Postgres")
    add_vendor(db)
    _hold(db, clock)
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as conn:
        conn.execute(text("TRUNCATE reservation_transitions CASCADE"))


def test_database_refuses_an_overlapping_active_block_written_around_the_service(
    db: Database, clock: ManualClock
) -> None:
    """Even raw SQL that skips the application check cannot double-book."""
    add_vendor(db)
    reservation_id = _hold(db, clock)
    with db.engine.connect() as conn:
        row = (
            conn.execute(text("SELECT * FROM reservations WHERE id = :r"), {"r": reservation_id})
            .mappings()
            .one()
        )
    clone = dict(row)
    clone["id"] = "res_raw_sql_clone"
    columns = ", ".join(clone)
    params = ", ".join(f":{name}" for name in clone)
    clone["metadata"] = "{}"
    with pytest.raises(DBAPIError), db.engine.begin() as conn:
        conn.execute(text(f"INSERT INTO reservations ({columns}) VALUES ({params})"), clone)
    # The same block in a terminal state is allowed: it occupies nothing.
    clone["state"] = "CANCELLED"
    with db.engine.begin() as conn:
        conn.execute(text(f"INSERT INTO reservations ({columns}) VALUES ({params})"), clone)
    # ...and it cannot be revived into an active state over the live one.
    with pytest.raises(DBAPIError), db.engine.begin() as conn:
        conn.execute(text("UPDATE reservations SET state = 'HELD' WHERE id = 'res_raw_sql_clone'"))
