"""Payments (operation log, the LocalGateway ledger), confirmation tokens, notifications.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 21:18:47.440720
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "local_payment_idempotency",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "response",
            sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "local_payment_intents",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("reservation_id", sa.String(length=40), nullable=True),
        sa.Column("party", sa.String(length=16), nullable=True),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("amount_capturable", sa.Integer(), nullable=False),
        sa.Column("amount_received", sa.Integer(), nullable=False),
        sa.Column("amount_refunded", sa.Integer(), nullable=False),
        sa.Column("captures", sa.Integer(), nullable=False),
        sa.Column("payment_method", sa.String(length=255), nullable=False),
        sa.Column("customer", sa.String(length=255), nullable=True),
        sa.Column("destination", sa.String(length=255), nullable=True),
        sa.Column("application_fee", sa.Integer(), nullable=True),
        sa.Column("client_secret", sa.String(length=255), nullable=False),
        sa.Column("error_code", sa.String(length=80), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("local_payment_intents", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_local_payment_intents_reservation_id"), ["reservation_id"], unique=False
        )

    op.create_table(
        "confirmation_tokens",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("reservation_id", sa.String(length=40), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["reservations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("confirmation_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_confirmation_tokens_reservation_id"), ["reservation_id"], unique=False
        )

    op.create_table(
        "payment_operations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("reservation_id", sa.String(length=40), nullable=False),
        sa.Column("party", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("intent_id", sa.String(length=255), nullable=True),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=80), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["reservations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("payment_operations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_payment_operations_reservation_id"), ["reservation_id"], unique=False
        )

    op.create_table(
        "vendor_notifications",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("reservation_id", sa.String(length=40), nullable=False),
        sa.Column("vendor_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("token_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["reservations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("vendor_notifications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vendor_notifications_reservation_id"), ["reservation_id"], unique=False
        )
        batch_op.create_index(
            "ix_vendor_notifications_status_next", ["status", "next_attempt_at"], unique=False
        )

    with op.batch_alter_table("vendors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notify_email", sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column("notify_webhook_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("notify_sms", sa.String(length=32), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("vendors", schema=None) as batch_op:
        batch_op.drop_column("notify_sms")
        batch_op.drop_column("notify_webhook_url")
        batch_op.drop_column("notify_email")

    with op.batch_alter_table("vendor_notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_vendor_notifications_status_next")
        batch_op.drop_index(batch_op.f("ix_vendor_notifications_reservation_id"))

    op.drop_table("vendor_notifications")
    with op.batch_alter_table("payment_operations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payment_operations_reservation_id"))

    op.drop_table("payment_operations")
    with op.batch_alter_table("confirmation_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_confirmation_tokens_reservation_id"))

    op.drop_table("confirmation_tokens")
    with op.batch_alter_table("local_payment_intents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_local_payment_intents_reservation_id"))

    op.drop_table("local_payment_intents")
    op.drop_table("local_payment_idempotency")
