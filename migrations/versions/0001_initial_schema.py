"""Initial schema: every table, plus the guards the ORM cannot express.

The no-double-booking guarantee lives here: a Postgres exclusion constraint, and on SQLite
triggers that refuse an overlapping active block. The transition log is append-only by
trigger on both. The states are spelled out, not imported: a released migration must not
change when the code does.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 20:40:01.449216
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")

    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "outbox_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=80), nullable=False),
        sa.Column("reservation_id", sa.String(length=40), nullable=True),
        sa.Column("partner_id", sa.String(length=64), nullable=True),
        sa.Column(
            "payload", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_events_partner_id", ["partner_id", "id"], unique=False)
        batch_op.create_index(
            "ix_outbox_events_reservation", ["reservation_id", "id"], unique=False
        )

    op.create_table(
        "partners",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_secret", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "vendors",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("slot_minutes", sa.Integer(), nullable=False),
        sa.Column("slot_interval_minutes", sa.Integer(), nullable=False),
        sa.Column("buffer_before_minutes", sa.Integer(), nullable=False),
        sa.Column("buffer_after_minutes", sa.Integer(), nullable=False),
        sa.Column("min_notice_minutes", sa.Integer(), nullable=False),
        sa.Column("max_advance_days", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("price", sa.Integer(), nullable=False),
        sa.Column("deposit", sa.Integer(), nullable=False),
        sa.Column(
            "hours", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column(
            "overrides", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("payment_customer_ref", sa.String(length=255), nullable=True),
        sa.Column("payment_method_ref", sa.String(length=255), nullable=True),
        sa.Column("payment_account_ref", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("price >= 0 AND deposit >= 0", name="ck_vendors_amounts"),
        sa.CheckConstraint("slot_minutes BETWEEN 5 AND 1440", name="ck_vendors_slot_minutes"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "calendar_connections",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("vendor_id", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("credentials_ref", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["vendor_id"],
            ["vendors.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "vendor_id", "provider", "source", name="uq_calendar_connections_source"
        ),
    )
    with op.batch_alter_table("calendar_connections", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_calendar_connections_vendor_id"), ["vendor_id"], unique=False
        )

    op.create_table(
        "partner_api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=128), nullable=False),
        sa.Column(
            "scopes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rotated_from", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prefix"),
    )
    with op.batch_alter_table("partner_api_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_partner_api_keys_partner_id"), ["partner_id"], unique=False
        )

    op.create_table(
        "reservations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("vendor_id", sa.String(length=64), nullable=False),
        sa.Column("requester_id", sa.String(length=200), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=True),
        sa.Column("slot_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("slot_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("block_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("block_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=40), nullable=False),
        sa.Column("state_deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("price_amount", sa.Integer(), nullable=False),
        sa.Column("deposit_amount", sa.Integer(), nullable=False),
        sa.Column("vendor_payment_state", sa.String(length=32), nullable=False),
        sa.Column("vendor_payment_ref", sa.String(length=255), nullable=True),
        sa.Column("requester_payment_state", sa.String(length=32), nullable=False),
        sa.Column("requester_payment_ref", sa.String(length=255), nullable=True),
        sa.Column(
            "metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('INTENT_CREATED', 'HELD', 'AWAITING_VENDOR_CONFIRMATION', 'CONFIRMED_BY_VENDOR', 'AWAITING_VENDOR_AUTH', 'VENDOR_AUTHORIZED', 'AWAITING_REQUESTER_AUTH', 'AUTHORIZED_BOTH', 'COMMIT_IN_PROGRESS', 'COMMITTED', 'FAILED_VENDOR_TIMEOUT', 'FAILED_VENDOR_AUTH', 'FAILED_REQUESTER_AUTH', 'FAILED_AVAILABILITY_CHANGED', 'FAILED_COMMIT', 'EXPIRED', 'CANCELLED')",
            name="ck_reservations_state",
        ),
        sa.CheckConstraint(
            "block_start <= slot_start AND block_end >= slot_end", name="ck_reservations_block"
        ),
        sa.CheckConstraint(
            "price_amount >= 0 AND deposit_amount >= 0", name="ck_reservations_money"
        ),
        sa.CheckConstraint("slot_start < slot_end", name="ck_reservations_slot_order"),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.id"],
        ),
        sa.ForeignKeyConstraint(
            ["vendor_id"],
            ["vendors.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index("ix_reservations_created", ["created_at"], unique=False)
        batch_op.create_index(
            "ix_reservations_partner_created", ["partner_id", "created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_reservations_requester_id"), ["requester_id"], unique=False
        )
        batch_op.create_index(
            "ix_reservations_state_deadline", ["state", "state_deadline"], unique=False
        )
        batch_op.create_index(
            "ix_reservations_vendor_block", ["vendor_id", "block_start", "block_end"], unique=False
        )

    op.create_table(
        "bookings",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("reservation_id", sa.String(length=40), nullable=False),
        sa.Column("vendor_id", sa.String(length=64), nullable=False),
        sa.Column("requester_id", sa.String(length=200), nullable=False),
        sa.Column("slot_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("slot_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("price_amount", sa.Integer(), nullable=False),
        sa.Column("deposit_amount", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["reservations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("reservation_id"),
    )
    with op.batch_alter_table("bookings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bookings_vendor_id"), ["vendor_id"], unique=False)

    op.create_table(
        "busy_intervals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("connection_id", sa.String(length=40), nullable=False),
        sa.Column("vendor_id", sa.String(length=64), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tentative", sa.Boolean(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("start_at < end_at", name="ck_busy_intervals_order"),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["calendar_connections.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("busy_intervals", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_busy_intervals_connection_id"), ["connection_id"], unique=False
        )
        batch_op.create_index(
            "ix_busy_intervals_vendor_start", ["vendor_id", "start_at"], unique=False
        )

    op.create_table(
        "compensation_actions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("reservation_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("party", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["reservations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("compensation_actions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_compensation_actions_reservation_id"), ["reservation_id"], unique=False
        )
        batch_op.create_index(
            "ix_compensation_actions_status_next", ["status", "next_attempt_at"], unique=False
        )

    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("reservation_id", sa.String(length=40), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column(
            "response_body", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["reservations.id"],
        ),
        sa.PrimaryKeyConstraint("scope", "key"),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotency_keys_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "reservation_transitions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("reservation_id", sa.String(length=40), nullable=False),
        sa.Column("from_state", sa.String(length=40), nullable=True),
        sa.Column("to_state", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "details", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["reservations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reservation_transitions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_reservation_transitions_reservation", ["reservation_id", "id"], unique=False
        )

    _install_guards(bind.dialect.name)


def downgrade() -> None:
    _remove_guards(op.get_bind().dialect.name)

    with op.batch_alter_table("reservation_transitions", schema=None) as batch_op:
        batch_op.drop_index("ix_reservation_transitions_reservation")

    op.drop_table("reservation_transitions")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_keys_expires_at"))

    op.drop_table("idempotency_keys")
    with op.batch_alter_table("compensation_actions", schema=None) as batch_op:
        batch_op.drop_index("ix_compensation_actions_status_next")
        batch_op.drop_index(batch_op.f("ix_compensation_actions_reservation_id"))

    op.drop_table("compensation_actions")
    with op.batch_alter_table("busy_intervals", schema=None) as batch_op:
        batch_op.drop_index("ix_busy_intervals_vendor_start")
        batch_op.drop_index(batch_op.f("ix_busy_intervals_connection_id"))

    op.drop_table("busy_intervals")
    with op.batch_alter_table("bookings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bookings_vendor_id"))

    op.drop_table("bookings")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_vendor_block")
        batch_op.drop_index("ix_reservations_state_deadline")
        batch_op.drop_index(batch_op.f("ix_reservations_requester_id"))
        batch_op.drop_index("ix_reservations_partner_created")
        batch_op.drop_index("ix_reservations_created")

    op.drop_table("reservations")
    with op.batch_alter_table("partner_api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_partner_api_keys_partner_id"))

    op.drop_table("partner_api_keys")
    with op.batch_alter_table("calendar_connections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calendar_connections_vendor_id"))

    op.drop_table("calendar_connections")
    op.drop_table("vendors")
    op.drop_table("partners")
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_events_reservation")
        batch_op.drop_index("ix_outbox_events_partner_id")

    op.drop_table("outbox_events")
    op.drop_table("job_leases")


# States that free the vendor's block; every other state (COMMITTED included) is active.
_TERMINAL_FAILURES = (
    "FAILED_VENDOR_TIMEOUT",
    "FAILED_VENDOR_AUTH",
    "FAILED_REQUESTER_AUTH",
    "FAILED_AVAILABILITY_CHANGED",
    "FAILED_COMMIT",
    "EXPIRED",
    "CANCELLED",
)
_INACTIVE = ", ".join(f"'{state}'" for state in _TERMINAL_FAILURES)


def _install_guards(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute(
            f"""
            ALTER TABLE reservations ADD CONSTRAINT ex_reservations_no_overlap
            EXCLUDE USING gist (vendor_id WITH =, tstzrange(block_start, block_end, '[)') WITH &&)
            WHERE (state NOT IN ({_INACTIVE}))
            """
        )
        op.execute(
            """
            CREATE FUNCTION bookiji_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'reservation_transitions is append-only (% refused)', TG_OP
                    USING ERRCODE = 'restrict_violation';
            END
            $$
            """
        )
        op.execute(
            """
            CREATE TRIGGER reservation_transitions_append_only
            BEFORE UPDATE OR DELETE ON reservation_transitions
            FOR EACH ROW EXECUTE FUNCTION bookiji_append_only()
            """
        )
        op.execute(
            """
            CREATE TRIGGER reservation_transitions_no_truncate
            BEFORE TRUNCATE ON reservation_transitions
            FOR EACH STATEMENT EXECUTE FUNCTION bookiji_append_only()
            """
        )
        return
    # SQLite: the same guarantees with triggers. Times are stored as fixed-width UTC text, so
    # string comparison is time comparison.
    overlap = f"""
        SELECT RAISE(ABORT, 'slot_unavailable: overlapping active reservation')
        WHERE NEW.state NOT IN ({_INACTIVE}) AND EXISTS (
            SELECT 1 FROM reservations AS other
            WHERE other.vendor_id = NEW.vendor_id
              AND other.id != NEW.id
              AND other.state NOT IN ({_INACTIVE})
              AND other.block_start < NEW.block_end
              AND other.block_end > NEW.block_start
        );
    """
    op.execute(
        f"CREATE TRIGGER reservations_no_overlap_insert BEFORE INSERT ON reservations "
        f"BEGIN {overlap} END"
    )
    op.execute(
        "CREATE TRIGGER reservations_no_overlap_update "
        "BEFORE UPDATE OF state, vendor_id, block_start, block_end ON reservations "
        f"BEGIN {overlap} END"
    )
    for verb in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER reservation_transitions_no_{verb.lower()} "
            f"BEFORE {verb} ON reservation_transitions "
            f"BEGIN SELECT RAISE(ABORT, 'reservation_transitions is append-only ({verb} refused)'); END"
        )


def _remove_guards(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute(
            "DROP TRIGGER IF EXISTS reservation_transitions_no_truncate ON reservation_transitions"
        )
        op.execute(
            "DROP TRIGGER IF EXISTS reservation_transitions_append_only ON reservation_transitions"
        )
        op.execute("DROP FUNCTION IF EXISTS bookiji_append_only()")
        op.execute("ALTER TABLE reservations DROP CONSTRAINT IF EXISTS ex_reservations_no_overlap")
        return
    for name in (
        "reservations_no_overlap_insert",
        "reservations_no_overlap_update",
        "reservation_transitions_no_update",
        "reservation_transitions_no_delete",
    ):
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
