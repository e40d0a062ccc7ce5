"""Holds in flight per partner and per requester (the hold caps), counted inside every
create: a partial index of the unfinished holds by (partner_id, requester_id) makes both
counts a range of the holds in flight, instead of a walk over every reservation the partner
ever made; a hold that ends simply leaves it (no index write for the expiry sweep).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here as it was at this revision; bookiji.store.models.HOLDING_PREDICATE must say the
# same.
HOLDING = (
    "state IN ('AUTHORIZED_BOTH', 'AWAITING_REQUESTER_AUTH', 'AWAITING_VENDOR_AUTH', "
    "'AWAITING_VENDOR_CONFIRMATION', 'COMMIT_IN_PROGRESS', 'CONFIRMED_BY_VENDOR', 'HELD', "
    "'INTENT_CREATED', 'VENDOR_AUTHORIZED')"
)


def upgrade() -> None:
    op.create_index(
        "ix_reservations_holding",
        "reservations",
        ["partner_id", "requester_id", "state"],  # covering: SQLite picks it without statistics
        postgresql_where=sa.text(HOLDING),
        sqlite_where=sa.text(HOLDING),
    )


def downgrade() -> None:
    op.drop_index("ix_reservations_holding", table_name="reservations")
