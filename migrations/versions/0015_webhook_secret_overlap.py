"""A partner's previous webhook signing secret, kept for an overlap after a rotation.

`bookiji partners rotate-webhook-secret ID --overlap 24h` keeps the secret it replaces in
`previous_webhook_secret` (sealed, like `webhook_secret`; the column type stays TEXT) until
`previous_webhook_secret_until`: until then every delivery carries a signature with each
secret, so a partner's receiver that still holds the old one keeps accepting them.

The downgrade drops both columns: deliveries are then signed with the new secret only.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("partners", sa.Column("previous_webhook_secret", sa.Text(), nullable=True))
    op.add_column(
        "partners",
        sa.Column("previous_webhook_secret_until", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("partners", recreate="never") as batch:
        batch.drop_column("previous_webhook_secret_until")
        batch.drop_column("previous_webhook_secret")
