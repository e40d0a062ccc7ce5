"""The database refuses overlapping active blocks, and the queries around a time find every
active block that touches it, when they read only the blocks starting in the window plus the
last one before it (migration 0011). Checked against a brute-force oracle on random blocks,
written around the service, on both databases."""

from __future__ import annotations

from datetime import timedelta
from itertools import count
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import DBAPIError

from bookiji.services.availability import _HOLD_BEFORE, _HOLDS, _HOLDS_FROM
from bookiji.store.database import Database
from bookiji.store.models import Reservation
from bookiji.store.uow import UnitOfWork
from tests.conftest import T0
from tests.factories import add_vendor
from tests.service.test_query_plans import plan

ACTIVE = ["HELD", "AWAITING_VENDOR_CONFIRMATION", "COMMITTED"]
INACTIVE = ["EXPIRED", "CANCELLED", "FAILED_COMMIT"]
TABLE = Reservation.__table__  # type: ignore[attr-defined]
_numbers = count()

blocks = st.lists(
    st.tuples(
        st.integers(0, 60),  # start, in 10-minute steps
        st.integers(1, 40),  # length, in 10-minute steps: long ones reach over many others
        st.sampled_from(ACTIVE + INACTIVE),
    ),
    min_size=1,
    max_size=12,
)


def _row(vendor: str, start: int, length: int, state: str) -> dict[str, Any]:
    begin = T0 + timedelta(minutes=10 * start)
    end = begin + timedelta(minutes=10 * length)
    return {
        "id": f"res_blk_{next(_numbers)}", "vendor_id": vendor, "requester_id": "r",
        "partner_id": None, "slot_start": begin, "slot_end": end, "block_start": begin,
        "block_end": end, "state": state, "state_deadline": None, "version": 1,
        "currency": "USD", "price_amount": 0, "deposit_amount": 0,
        "vendor_payment_state": "not_started", "vendor_payment_ref": None,
        "requester_payment_state": "not_started", "requester_payment_ref": None,
        "metadata": {}, "requester_contact": None, "idempotency_key": None,
        "created_at": T0, "updated_at": T0,
    }  # fmt: skip


def _overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["block_start"] < b["block_end"] and b["block_start"] < a["block_end"])


def _written(db: Database, statement: Any, params: dict[str, Any] | None = None) -> bool:
    try:
        with db.write_gate, db.engine.begin() as conn:
            conn.execute(statement, params or {})
    except DBAPIError as exc:
        assert "slot_unavailable" in str(exc) or "ex_reservations_no_overlap" in str(exc)
        return False
    return True


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(blocks=blocks, revive=st.integers(0, 11), window=st.tuples(st.integers(-5, 70),
                                                                 st.integers(1, 30)))  # fmt: skip
def test_overlaps_refused_and_found_as_by_brute_force(
    db: Database, blocks: list[tuple[int, int, str]], revive: int, window: tuple[int, int]
) -> None:
    vendor = f"v{next(_numbers)}"
    add_vendor(db, vendor)
    kept: list[dict[str, Any]] = []
    for start, length, state in blocks:
        row = _row(vendor, start, length, state)
        clash = state in ACTIVE and any(
            _overlaps(row, k) for k in kept if k["state"] in ACTIVE
        )  # fmt: skip
        assert _written(db, TABLE.insert(), row) is not clash, (row, kept)
        if not clash:
            kept.append(row)

    # Reviving a finished block into an active state: the update trigger asks the same.
    dead = [k for k in kept if k["state"] in INACTIVE]
    if dead:
        row = dead[revive % len(dead)]
        clash = any(_overlaps(row, k) for k in kept if k["state"] in ACTIVE)
        revived = TABLE.update().where(TABLE.c.id == row["id"]).values(state="HELD")
        assert _written(db, revived) is not clash
        if not clash:
            row["state"] = "HELD"

    lo = T0 + timedelta(minutes=10 * window[0])
    hi = lo + timedelta(minutes=10 * window[1])
    live = [k for k in kept if k["state"] in ACTIVE]
    expected = {k["id"] for k in live if k["block_start"] < hi and k["block_end"] > lo}
    with UnitOfWork(db, readonly=True) as uow:
        found = [
            row.id for row in uow.session.execute(_HOLDS, {"vendor": vendor, "lo": lo, "hi": hi})
        ]
    assert sorted(found) == sorted(expected)


@pytest.mark.parametrize(
    "statement", [_HOLDS_FROM, _HOLD_BEFORE.element, _HOLDS], ids=["from", "before", "both"]
)
def test_holds_around_a_time_read_the_partial_index_of_active_blocks(
    db: Database, statement: Any
) -> None:
    read = plan(db, lambda _uow: statement.params(vendor="v1", lo=T0, hi=T0 + timedelta(hours=1)))
    assert "ix_reservations_active_block" in read
    assert "SCAN reservations" not in read
