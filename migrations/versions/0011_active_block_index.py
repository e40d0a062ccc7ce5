"""Find a vendor's active blocks around a time in a few index steps, however long its history.

`block_start < hi AND block_end > lo` on an index by block start walks every block of the
vendor that starts before `hi`: all its past bookings and expired holds, read again by every
hold and by the SQLite overlap trigger on every insert (bench/api_load.py: creates slowed by a
quarter per ~4,000 holds of one vendor). The active blocks of a vendor never overlap (the
trigger and the exclusion constraint see to it), so those touching [lo, hi) are the ones
starting in [lo, hi) plus at most one more: the last one starting before `lo`, if it ends
after `lo`. A partial index of the active blocks answers both with one range and one step
back. The SQLite triggers are rewritten to ask exactly that.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here as it was at this revision; bookiji.store.models.ACTIVE_PREDICATE must say the
# same (SQLite uses a partial index only for a query that carries its very predicate).
INACTIVE = (
    "'CANCELLED', 'EXPIRED', 'FAILED_AVAILABILITY_CHANGED', 'FAILED_COMMIT', "
    "'FAILED_REQUESTER_AUTH', 'FAILED_VENDOR_AUTH', 'FAILED_VENDOR_TIMEOUT'"
)
ACTIVE = f"state NOT IN ({INACTIVE})"

_NEW = f"""
    SELECT RAISE(ABORT, 'slot_unavailable: overlapping active reservation')
    WHERE NEW.state NOT IN ({INACTIVE}) AND (
        EXISTS (
            SELECT 1 FROM reservations
            WHERE vendor_id = NEW.vendor_id AND {ACTIVE}
              AND block_start >= NEW.block_start AND block_start < NEW.block_end
              AND id != NEW.id
        )
        OR (
            SELECT block_end FROM reservations
            WHERE vendor_id = NEW.vendor_id AND {ACTIVE}
              AND block_start < NEW.block_start AND id != NEW.id
            ORDER BY block_start DESC LIMIT 1
        ) > NEW.block_start
    );
"""

_OLD = f"""
    SELECT RAISE(ABORT, 'slot_unavailable: overlapping active reservation')
    WHERE NEW.state NOT IN ({INACTIVE}) AND EXISTS (
        SELECT 1 FROM reservations AS other
        WHERE other.vendor_id = NEW.vendor_id
          AND other.id != NEW.id
          AND other.state NOT IN ({INACTIVE})
          AND other.block_start < NEW.block_end
          AND other.block_end > NEW.block_start
    );
"""


def _triggers(body: str) -> None:
    op.execute("DROP TRIGGER IF EXISTS reservations_no_overlap_insert")
    op.execute("DROP TRIGGER IF EXISTS reservations_no_overlap_update")
    op.execute(
        f"CREATE TRIGGER reservations_no_overlap_insert BEFORE INSERT ON reservations "
        f"BEGIN {body} END"
    )
    op.execute(
        "CREATE TRIGGER reservations_no_overlap_update "
        "BEFORE UPDATE OF state, vendor_id, block_start, block_end ON reservations "
        f"BEGIN {body} END"
    )


def upgrade() -> None:
    # block_end and id make it covering for the trigger's questions.
    op.execute(
        "CREATE INDEX ix_reservations_active_block ON reservations "
        f"(vendor_id, block_start, block_end, id) WHERE {ACTIVE}"
    )
    if op.get_bind().dialect.name == "sqlite":
        _triggers(_NEW)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _triggers(_OLD)
    op.drop_index("ix_reservations_active_block", table_name="reservations")
