"""Requester contact details on a reservation, and stored answers indexed by reservation (sealed JSON; see bookiji/store/crypto.py).

Existing metadata, stored answers, calendar credentials and webhook secrets keep their column
types: sealed values are stored inside them, and `bookiji pii rotate` seals the old rows.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.add_column("reservations", sa.Column("requester_contact", json_type, nullable=True))
    # `requesters forget` redacts the stored answers of a requester's reservations.
    op.create_index("ix_idempotency_keys_reservation", "idempotency_keys", ["reservation_id"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_reservation", table_name="idempotency_keys")
    with op.batch_alter_table("reservations", recreate="never") as batch:
        batch.drop_column("requester_contact")
