"""The dashboard's read model, on SQLite and Postgres: what it returns and how it reads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event

from bookiji.bootstrap import Container
from bookiji.domain.errors import NotFound
from bookiji.services.clock import ManualClock
from bookiji.store.database import Database
from bookiji.tui.queries import (
    STUCK,
    DashboardQueries,
    Outcome,
    ReservationFilter,
    outcome_of,
)
from tests.tui.seed import IDS, PLANS, Seeded

ALL_STEPS = sum(len(plan.steps) for plan in PLANS)


def queries(container: Container) -> DashboardQueries:
    return DashboardQueries(container.db, container.clock)


def test_the_feed_starts_with_the_newest_rows_and_pages_on_by_id(
    container: Container, seeded: Seeded
) -> None:
    q = queries(container)
    latest = q.feed_latest(limit=5)
    assert [row.id for row in latest] == list(range(ALL_STEPS - 4, ALL_STEPS + 1))
    newest = latest[-1]
    assert (newest.reservation_id, newest.vendor_id) == (IDS.held, "studio-a")
    assert (newest.from_state, newest.to_state, newest.actor) == (
        "INTENT_CREATED",
        "HELD",
        "partner:acme",
    )

    # Paging by id from 0 visits every row once, in order.
    seen: list[int] = []
    while page := q.feed_after(seen[-1] if seen else 0, limit=7):
        seen.extend(row.id for row in page)
    assert seen == list(range(1, ALL_STEPS + 1))
    assert q.feed_after(newest.id) == []

    # A change written by a service appears after the cursor, with its vendor.
    container.reservations.cancel(IDS.awaiting_vendor, actor="operator:cli", note="duplicate")
    fresh = q.feed_after(newest.id)
    assert [(r.reservation_id, r.vendor_id, r.to_state, r.reason) for r in fresh] == [
        (IDS.awaiting_vendor, "dr-lee", "CANCELLED", "cancelled")  # the note is not the log's
    ]
    assert fresh[0].outcome is Outcome.FAILURE


@pytest.mark.parametrize(
    ("from_state", "to_state", "reason", "expected"),
    [
        ("HELD", "AWAITING_VENDOR_CONFIRMATION", "vendor asked to confirm", Outcome.PROGRESS),
        (None, "INTENT_CREATED", "hold requested", Outcome.PROGRESS),
        ("COMMIT_IN_PROGRESS", "COMMITTED", "both captured; booked", Outcome.COMMITTED),
        ("HELD", "FAILED_VENDOR_TIMEOUT", "deadline passed", Outcome.FAILURE),
        ("AWAITING_REQUESTER_AUTH", "EXPIRED", "deadline passed", Outcome.FAILURE),
        ("HELD", "CANCELLED", "cancelled", Outcome.FAILURE),
        ("COMMIT_IN_PROGRESS", "FAILED_COMMIT", "requester capture failed", Outcome.COMPENSATION),
        ("COMMIT_IN_PROGRESS", "FAILED_AVAILABILITY_CHANGED", "busy", Outcome.COMPENSATION),
        ("AUTHORIZED_BOTH", "CANCELLED", "compensation forced by operator", Outcome.COMPENSATION),
    ],
)
def test_each_transition_has_the_outcome_its_colour_shows(
    from_state: str | None, to_state: str, reason: str, expected: Outcome
) -> None:
    assert outcome_of(from_state, to_state, reason) is expected


def test_the_overview_counts_live_work_today_and_stuck_items(
    container: Container, seeded: Seeded, now_clock: ManualClock
) -> None:
    q = queries(container)
    view = q.overview()
    assert view.by_state == {
        "HELD": 1,
        "AWAITING_VENDOR_CONFIRMATION": 2,
        "AWAITING_REQUESTER_AUTH": 1,
        "COMMIT_IN_PROGRESS": 1,
    }
    assert (view.committed_today, view.failures_today) == (1, 2)
    assert (
        view.past_deadline,
        view.commit_too_long,
        view.compensation_failing,
        view.dead_letters,
    ) == (1, 1, 1, 1)

    # Tomorrow nothing has been committed or failed yet; a minute later one more hold is late.
    now_clock.advance(timedelta(days=1))
    tomorrow = q.overview()
    assert (tomorrow.committed_today, tomorrow.failures_today) == (0, 0)
    assert tomorrow.past_deadline == 4  # every waiting reservation is past its deadline


def test_a_commit_is_stuck_once_it_stops_moving_for_the_threshold(
    container: Container, seeded: Seeded, now_clock: ManualClock
) -> None:
    # Seeded: COMMIT_IN_PROGRESS since 10:12, deadline 10:27. At 10:13 it is young.
    now_clock.set(now_clock.now().replace(hour=10, minute=13))
    lenient = DashboardQueries(container.db, container.clock, commit_stuck_after=timedelta(2))
    assert lenient.overview().commit_too_long == 0
    strict = DashboardQueries(container.db, container.clock, commit_stuck_after=timedelta(0))
    assert strict.overview().commit_too_long == 1


def ids(rows: list[Any]) -> list[str]:
    return [row.id for row in rows]


def test_the_reservations_table_filters_by_state_vendor_partner_and_any_part_of_an_id(
    container: Container, seeded: Seeded
) -> None:
    q = queries(container)
    everything = q.reservations(ReservationFilter())
    assert ids(everything) == [plan.id for plan in reversed(PLANS)]  # newest first

    assert ids(q.reservations(ReservationFilter(state="AWAITING_VENDOR_CONFIRMATION"))) == [
        IDS.awaiting_vendor,
        IDS.overdue_vendor,
    ]
    assert ids(q.reservations(ReservationFilter(vendor_id="yoga-loft"))) == [
        IDS.overdue_vendor,
        IDS.stuck_commit,
    ]
    assert ids(q.reservations(ReservationFilter(partner_id="globex", vendor_id="dr-lee"))) == [
        IDS.awaiting_vendor,
        IDS.failed_commit,
    ]
    # Any part of the id, any case; the requester's id too; % and _ are literal.
    assert ids(q.reservations(ReservationFilter(text="  9A7C5E  "))) == [IDS.awaiting_payment]
    assert ids(q.reservations(ReservationFilter(text="bob@"))) == [IDS.failed_commit]
    assert q.reservations(ReservationFilter(text="%")) == []
    assert len(q.reservations(ReservationFilter(text="res_"))) == len(PLANS)
    stuck = q.reservations(ReservationFilter(state=STUCK))
    assert ids(stuck) == [IDS.overdue_vendor, IDS.stuck_commit]
    assert all(row.overdue for row in stuck)
    assert not any(row.overdue for row in everything if row.id not in ids(stuck))


def test_filter_choices_list_vendors_and_partners(container: Container, seeded: Seeded) -> None:
    choices = queries(container).filter_choices()
    assert choices.vendors == [
        ("dr-lee", "Dr Lee Physio"),
        ("studio-a", "Studio A"),
        ("yoga-loft", "Yoga Loft"),
    ]
    assert choices.partners == [("acme", "Acme Bookings"), ("globex", "Globex Travel")]


def test_the_detail_has_history_payments_compensations_and_webhooks(
    container: Container, seeded: Seeded
) -> None:
    detail = queries(container).detail(IDS.failed_commit)
    assert (detail.state, detail.vendor_name, detail.vendor_timezone) == (
        "FAILED_COMMIT",
        "Dr Lee Physio",
        "America/New_York",
    )
    history = detail.document["stateHistory"]
    assert [step["to"] for step in history][-3:] == [
        "AUTHORIZED_BOTH",
        "COMMIT_IN_PROGRESS",
        "FAILED_COMMIT",
    ]
    vendor = detail.document["payment"]["vendorDeposit"]
    assert (vendor["state"], vendor["paymentIntentId"]) == ("captured", "pi_3QvB2leeDeposit00001")
    actions = {a["action"]: a for a in detail.document["compensationActions"]}
    assert actions["refund_capture"]["attempts"] == 3
    assert actions["refund_capture"]["lastError"] == "provider unavailable (503)"
    assert [(d.event_type, d.partner_id, d.status, d.attempts) for d in detail.deliveries] == [
        ("reservation.failed_commit", "globex", "dead", 8)
    ]
    with pytest.raises(NotFound):
        queries(container).detail("res_missing")


# -- how it reads ---------------------------------------------------------------------------


@contextmanager
def query_plans(db: Database) -> Iterator[list[tuple[str, str]]]:
    """(statement, plan) of every statement run meanwhile, with sequential scans
    discouraged on Postgres so a plan without a usable index shows as a Seq Scan."""
    plans: list[tuple[str, str]] = []

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if not statement.lstrip().upper().startswith("SELECT"):
            return
        if db.is_sqlite:
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
        else:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + statement, parameters)
            plan = "\n".join(str(row[0]) for row in cursor.fetchall())
        plans.append((statement, plan))

    event.listen(db.engine, "before_cursor_execute", explain)
    try:
        yield plans
    finally:
        event.remove(db.engine, "before_cursor_execute", explain)


def full_scans(plan: str, table: str) -> bool:
    return f"SCAN {table}" in plan.replace("SCAN TABLE", "SCAN") or f"Seq Scan on {table}" in plan


def test_the_feed_and_the_overview_read_through_indexes(
    container: Container, seeded: Seeded
) -> None:
    q = queries(container)
    with query_plans(container.db) as plans:
        q.feed_after(10, limit=50)
        q.feed_latest(limit=50)
        q.overview()
    feed = [p for s, p in plans if "reservation_transitions.reason" in s]
    assert len(feed) == 2
    for plan in feed:  # a primary-key range, never the whole log
        assert "PRIMARY KEY (rowid>?)" in plan or "reservation_transitions_pkey" in plan, plan
    arrivals = [p for s, p in plans if "count" in s and "reservation_transitions" in s]
    assert len(arrivals) == 2
    assert all("ix_reservation_transitions_to_state_at" in p for p in arrivals), arrivals
    for statement, plan in plans:
        for table in ("reservation_transitions", "reservations", "webhook_deliveries"):
            assert not full_scans(plan, table), (statement, plan)


def test_watching_never_needs_the_write_lock(container: Container, seeded: Seeded) -> None:
    """On SQLite a writer holds BEGIN IMMEDIATE; every dashboard read still completes."""
    if not container.db.is_sqlite:
        pytest.skip("Postgres readers never block on writers")
    q = queries(container)
    reads: list[Callable[[], object]] = [
        lambda: q.feed_after(0),
        q.overview,
        lambda: q.reservations(ReservationFilter(text="res")),
        lambda: q.detail(IDS.committed),
    ]
    writer = container.db.engine.connect()
    writer.begin()  # BEGIN IMMEDIATE: the write lock, held throughout
    try:
        done: list[object] = []
        worker = threading.Thread(target=lambda: done.extend(read() for read in reads))
        worker.start()
        worker.join(timeout=10)
        assert len(done) == len(reads), "a dashboard read waited for the write lock"
    finally:
        writer.rollback()
        writer.close()
