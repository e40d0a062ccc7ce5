"""Index transitions by target state and time: "committed today" and "failures today" on the
support dashboard read one index range instead of the whole log.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_reservation_transitions_to_state_at",
        "reservation_transitions",
        ["to_state", "at"],
    )


def downgrade() -> None:
    op.drop_index("ix_reservation_transitions_to_state_at", table_name="reservation_transitions")
