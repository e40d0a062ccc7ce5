"""Reservations by state, newest first (`reservations list --state`, the dashboard's table):
one index range instead of sorting every reservation in that state (bench/scale.py showed
the listing 10x slower at 20,000 rows than at 1,000).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_reservations_state_created", "reservations", ["state", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_reservations_state_created", table_name="reservations")
