"""A cancel's free-text note on its reservation, sealed and erasable (see bookiji/store/crypto.py).

Until now the text given with a cancel was written as the transition's `reason` and into the
event payload, and the transition log cannot be changed: `requesters forget` could not erase
it. From this revision the log and the events say only Bookiji's own words for a cancel and
the text lives here, where `forget` clears it and `pii rotate` re-seals it. Transitions written
before this revision keep their text (the log is append-only; history is not rewritten).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("reservations", sa.Column("cancel_note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reservations", recreate="never") as batch:
        batch.drop_column("cancel_note")
