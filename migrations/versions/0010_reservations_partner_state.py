"""Holds in flight per partner and per requester (the hold caps), counted inside every
create: (partner_id, state, requester_id) turns both counts into index ranges over the
unfinished states, instead of a walk over every reservation the partner ever made.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_reservations_partner_state", "reservations", ["partner_id", "state", "requester_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_reservations_partner_state", table_name="reservations")
