"""Seal the secrets that were only hidden in output: calendar sources, webhook URLs.

`calendar_connections.source` (an ICS feed's URL usually carries a secret token),
`partners.webhook_url` and `vendors.notify_webhook_url` (a URL may carry a token or a user
name and password) become `SealedText` in the models. The column type stays TEXT, so no
column changes here; rows written before are read as they are and sealed by the next
`bookiji pii rotate` or update, as for every sealed column.

What changes here:
* the unique constraint on (vendor_id, provider, source) goes: sealed sources are random
  tokens, which never collide. The services keep one connection per source, comparing the
  opened sources under a lock on the vendor's row. SQLite drops a constraint by copying the
  table; the busy-time cache refers to it (foreign keys are on), so its rows are set aside
  and put back around the copy.
* a vendor notification no longer copies the vendor's webhook URL (the sender reads the
  sealed one from the vendor's row), so the copies already made are emptied.

The downgrade opens the sealed sources and URLs again (with the configured PII keys) for the
code before this revision, which reads them as plain text.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bookiji.store.crypto import is_sealed, keyring

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNIQUE = "uq_calendar_connections_source"
_SET_ASIDE = "_busy_intervals_0012"
#: (table, key column, column) of the values sealed from this revision on.
SEALED = (
    ("calendar_connections", "id", "source"),
    ("partners", "id", "webhook_url"),
    ("vendors", "id", "notify_webhook_url"),
)


def _on_connections(change: str) -> None:
    """Drop or create the unique constraint on calendar_connections."""
    if op.get_bind().dialect.name == "sqlite":
        # The copy drops the old table, which the cache's rows refer to.
        op.execute(f"CREATE TEMP TABLE {_SET_ASIDE} AS SELECT * FROM busy_intervals")
        op.execute("DELETE FROM busy_intervals")
    with op.batch_alter_table("calendar_connections") as batch:
        if change == "drop":
            batch.drop_constraint(UNIQUE, type_="unique")
        else:
            batch.create_unique_constraint(UNIQUE, ["vendor_id", "provider", "source"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"INSERT INTO busy_intervals SELECT * FROM {_SET_ASIDE}")
        op.execute(f"DROP TABLE {_SET_ASIDE}")


def upgrade() -> None:
    _on_connections("drop")
    op.execute("UPDATE vendor_notifications SET destination = '' WHERE channel = 'webhook'")


def downgrade() -> None:
    bind = op.get_bind()
    for table, key, column in SEALED:
        rows = bind.execute(
            sa.text(f"SELECT {key}, {column} FROM {table} WHERE {column} LIKE 'gAAAAA%'")
        ).all()
        for row_key, stored in rows:
            if is_sealed(stored):
                bind.execute(
                    sa.text(f"UPDATE {table} SET {column} = :plain WHERE {key} = :key"),
                    {"plain": keyring().open(stored), "key": row_key},
                )
    op.execute(
        "UPDATE vendor_notifications SET destination = COALESCE(("
        "SELECT notify_webhook_url FROM vendors WHERE vendors.id = vendor_notifications.vendor_id"
        "), '') WHERE channel = 'webhook'"
    )
    _on_connections("create")
