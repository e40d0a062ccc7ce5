"""The dashboard driven like a user drives it: keys (and the mouse), asserting on what the
screen shows and on what the database then holds. SQLite here; the read model is tested on
both databases in test_queries.py and the live feed across processes in test_live_feed.py."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event
from textual.pilot import Pilot
from textual.widgets import Input

from bookiji.bootstrap import Container
from bookiji.services.clock import ManualClock
from bookiji.services.reservations import HoldRequest
from bookiji.store.uow import UnitOfWork
from bookiji.tui.app import MainScreen
from bookiji.tui.detail import DetailScreen
from bookiji.tui.dialogs import ConfirmScreen, HelpScreen
from bookiji.tui.widgets import FeedPanel, FeedTable, Stat
from tests.factories import add_vendor
from tests.tui.seed import IDS, NOW, PLANS, Seeded
from tests.tui.support import (
    column,
    dialog,
    loaded,
    make_app,
    notifications,
    rows,
    screen_text,
    text,
    wait_for,
)

pytestmark = pytest.mark.anyio
BIG = (160, 48)  # both panes, full ids in the feed
COMPACT = (100, 30)  # one pane at a time: cheaper to draw, enough for one reservation
ALL_STEPS = sum(len(plan.steps) for plan in PLANS)


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def stored(container: Container, reservation_id: str) -> tuple[str, str, str]:
    """(state, last actor, last reason) as the database has them."""
    with UnitOfWork(container.db, readonly=True) as uow:
        reservation = uow.reservations.get(reservation_id)
        assert reservation is not None
        last = uow.transitions.for_reservation(reservation_id)[-1]
        return reservation.state, last.actor, last.reason


def footer(app: Any) -> str:
    return screen_text(app).splitlines()[app.size.height - 1]


async def ask(pilot: Pilot[Any], app: Any, key: str) -> str:
    """Press an action's key; the confirmation dialog's text."""
    await pilot.press(key)
    await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "dialog")
    return dialog(app)


async def open_reservation(pilot: Pilot[Any], fragment: str, reservation_id: str) -> None:
    """Search by part of the id, enter to the rows, enter to open."""
    await pilot.press("slash", *fragment, "enter")
    await wait_for(
        pilot, lambda: column(pilot.app, "#reservations", 0) == [reservation_id], "search result"
    )
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, DetailScreen), "detail screen")
    await loaded(pilot)


# -- main screen ----------------------------------------------------------------------------


async def test_the_feed_shows_newest_first_with_every_field_coloured_by_outcome(
    container: Container, seeded: Seeded
) -> None:
    app = make_app(container)
    async with app.run_test(size=BIG) as pilot:
        await loaded(pilot)
        feed = app.screen.query_one(FeedTable)
        assert feed.row_count == ALL_STEPS
        assert [feed.coordinate_to_cell_key((i, 0)).row_key.value for i in (0, 1)] == [
            str(ALL_STEPS),
            str(ALL_STEPS - 1),
        ]
        assert rows(app, "#feed")[0] == [
            "10:28:00",
            IDS.held,
            "INTENT_CREATED → HELD",
            "studio-a",
            "slot free; hold placed",
            "partner:acme",
            "progress",
        ]
        by_outcome = {}
        for index, row in enumerate(rows(app, "#feed")):
            by_outcome.setdefault(row[-1], (row, feed.get_row_at(index)[2].style))
        assert by_outcome["committed"][0][1:3] == [IDS.committed, "COMMIT_IN_PROGRESS → COMMITTED"]
        assert by_outcome["compensation"][0][2] == "COMMIT_IN_PROGRESS → FAILED_COMMIT"
        assert by_outcome["failure"][0][2] == "AWAITING_VENDOR_CONFIRMATION → CANCELLED"
        colours = {outcome: str(style) for outcome, (_, style) in by_outcome.items()}
        assert len(set(colours.values())) == 4, colours  # four outcomes, four colours


async def test_pausing_the_feed_counts_the_backlog_and_resuming_shows_it(
    container: Container, seeded: Seeded
) -> None:
    app = make_app(container)
    async with app.run_test(size=BIG) as pilot:
        await loaded(pilot)
        await pilot.press("p")
        assert "PAUSED, 0 new" in text(app, "#feed-title")
        container.reservations.cancel(IDS.held, actor="operator:cli")
        container.reservations.cancel(IDS.awaiting_vendor, actor="operator:cli")
        await wait_for(pilot, lambda: "PAUSED, 2 new" in text(app, "#feed-title"), "backlog 2")
        assert len(rows(app, "#feed")) == ALL_STEPS  # the table holds still while paused
        assert rows(app, "#feed")[0][1] == IDS.held and "CANCELLED" not in rows(app, "#feed")[0][2]

        await pilot.press("p")
        await wait_for(pilot, lambda: len(rows(app, "#feed")) == ALL_STEPS + 2, "backlog shown")
        assert [row[1:3] for row in rows(app, "#feed")[:2]] == [
            [IDS.awaiting_vendor, "AWAITING_VENDOR_CONFIRMATION → CANCELLED"],
            [IDS.held, "HELD → CANCELLED"],
        ]
        assert "PAUSED" not in text(app, "#feed-title")


async def test_the_overview_counts_by_state_and_highlights_stuck_items(
    container: Container, seeded: Seeded
) -> None:
    app = make_app(container)
    async with app.run_test(size=BIG) as pilot:
        await loaded(pilot)
        assert [str(stat.render()) for stat in app.screen.query(Stat)] == [
            "Holds 1",
            "Awaiting vendor 2",
            "Awaiting payment 1",
            "Committing 1",
            "Committed today 1",
            "Failures today 2",
            "Past deadline 1",
            "Commit too long 1",
            "Refunds failing 1",
            "Dead letters 1",
        ]
        alerts = [stat.id for stat in app.screen.query(Stat) if stat.has_class("-alert")]
        assert alerts == [
            "stat-past-deadline",
            "stat-commit-too-long",
            "stat-compensation-failing",
            "stat-dead-letters",
        ]
        # Someone replays the dead letter: the highlight goes away by itself.
        container.webhooks.replay("evt_1a3c5e7b9d0f2a4c6e8b0d2f")
        dead = app.screen.query_one("#stat-dead-letters", Stat)
        await wait_for(pilot, lambda: str(dead.render()) == "Dead letters 0", "refresh")
        assert not dead.has_class("-alert")


async def test_filters_by_text_state_vendor_and_partner_from_the_keyboard(
    container: Container, seeded: Seeded
) -> None:
    app = make_app(container)
    async with app.run_test(size=COMPACT) as pilot:
        await loaded(pilot)
        assert len(rows(app, "#reservations")) == len(PLANS)
        await pilot.press("slash", *"BOB@")
        await wait_for(
            pilot, lambda: column(app, "#reservations", 0) == [IDS.failed_commit], "text filter"
        )
        await pilot.press(*["backspace"] * 4)
        await wait_for(pilot, lambda: len(rows(app, "#reservations")) == len(PLANS), "cleared")

        # State: the first choice after "any" is "stuck (past deadline)".
        await pilot.press("tab", "enter", "down", "enter")
        await wait_for(
            pilot,
            lambda: column(app, "#reservations", 0) == [IDS.overdue_vendor, IDS.stuck_commit],
            "stuck filter",
        )
        # Vendor: yoga-loft is the third vendor; partner: acme the first partner.
        await pilot.press("tab", "enter", "down", "down", "down", "enter")
        await pilot.press("tab", "enter", "down", "enter")
        await wait_for(
            pilot, lambda: column(app, "#reservations", 0) == [IDS.stuck_commit], "all filters"
        )
        assert "filtered by state, vendor, partner" in text(app, "#reservations-title")
        assert rows(app, "#reservations")[0][1:3] == ["COMMIT_IN_PROGRESS", "overdue by 3m 00s"]


async def test_a_small_terminal_shows_one_pane_at_a_time_and_short_ids_that_open_in_full(
    container: Container, seeded: Seeded
) -> None:
    app = make_app(container)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        feed, table = app.screen.query_one("#feed-pane"), app.screen.query_one("#reservations-pane")
        assert feed.display and not table.display
        assert rows(app, "#feed")[0][1] == IDS.held[:12] + "…"
        await pilot.press("r")
        assert table.display and not feed.display
        await pilot.press("f")
        assert feed.display and not table.display
        await pilot.press("enter")  # the newest transition's reservation, in full
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen), "detail")
        await loaded(pilot)
        assert text(app, "#detail-head").startswith(IDS.held)


async def test_keys_are_in_the_footer_and_question_mark_explains_them(
    container: Container, seeded: Seeded
) -> None:
    app = make_app(container)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await wait_for(pilot, lambda: "? Help" in footer(app), "the footer")
        for key in ("⏎ Open", "f Feed", "r Reservations", "p Pause feed", "/ Search", "q Quit"):
            assert key in footer(app), footer(app)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        shown = screen_text(app)
        assert "pause / resume the feed" in shown and "force compensation" in shown
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)

        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen), "detail")
        await wait_for(pilot, lambda: "esc Back" in footer(app), "the detail footer")
        for key in ("c Cancel", "f Compensate", "w Retry webhook", "n Reconcile", "? Help"):
            assert key in footer(app), footer(app)


# -- the reservation screen -----------------------------------------------------------------


async def test_opening_a_reservation_shows_slot_money_history_compensations_and_webhooks(
    container: Container, seeded: Seeded
) -> None:
    app = make_app(container)
    async with app.run_test(size=COMPACT) as pilot:
        await loaded(pilot)
        await open_reservation(pilot, "7f9b", IDS.failed_commit)
        assert text(app, "#detail-head") == f"{IDS.failed_commit}  FAILED_COMMIT"
        assert text(app, "#countdown") == "Deadline: none (this state does not expire)"
        assert text(app, "#detail-slot").splitlines() == [
            "Slot Thu 03 Dec 2026 10:00-11:00 America/New_York (UTC-05:00)",
            "     Thu 03 Dec 2026 15:00-16:00 UTC",
        ]
        payments = text(app, "#detail-payments")
        assert (
            "Vendor deposit" in payments
            and "20.00 USD  captured    pi_3QvB2leeDeposit00001" in payments
        )
        assert "90.00 USD  released    pi_3QvB2leePrice000001" in payments
        history = rows(app, "#history")
        assert len(history) == 10
        assert history[0][1:] == [
            "COMMIT_IN_PROGRESS",
            "FAILED_COMMIT",
            "partner:globex",
            "requester capture failed: card_declined",
        ]
        assert history[-1][1:3] == ["∅", "INTENT_CREATED"]
        assert rows(app, "#compensations") == [
            ["requester", "cancel_authorization", "90.00 USD", "done", "1", "-"],
            ["vendor", "refund_capture", "20.00 USD", "pending", "3", "provider unavailable (503)"],
        ]
        assert rows(app, "#deliveries") == [
            [
                "evt_1a3c5e7b9d0f2a4c6e8b0d2f",
                "reservation.failed_commit",
                "globex",
                "dead",
                "8",
                "HTTP 500 from endpoint",
            ]
        ]
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_a_cancelled_reservation_shows_the_cancel_note_apart_from_the_history(
    container: Container, seeded: Seeded
) -> None:
    container.reservations.cancel(
        IDS.held, actor="partner:globex", reason="cancelled by partner", note="customer called"
    )
    app = make_app(container)
    async with app.run_test(size=COMPACT) as pilot:
        await loaded(pilot)
        await open_reservation(pilot, "4f2a", IDS.held)
        assert text(app, "#detail-parties").splitlines()[1] == "Cancel note: customer called"
        assert rows(app, "#history")[0][2:5] == [
            "CANCELLED",
            "partner:globex",
            "cancelled by partner",
        ]


async def test_the_countdown_follows_the_clock_to_the_deadline_and_past_it(
    container: Container, seeded: Seeded, now_clock: ManualClock
) -> None:
    app = make_app(container)
    async with app.run_test(size=COMPACT) as pilot:
        await loaded(pilot)
        await open_reservation(pilot, "8b1d", IDS.awaiting_vendor)  # deadline 10:33
        assert text(app, "#countdown") == "Deadline 2026-12-01 10:33 UTC: in 3m 00s"
        now_clock.advance(timedelta(seconds=75))
        await wait_for(pilot, lambda: text(app, "#countdown").endswith("in 1m 45s"), "1m 45s")
        countdown = app.screen.query_one("#countdown")
        assert not countdown.has_class("-overdue")
        now_clock.advance(timedelta(minutes=2))
        await wait_for(pilot, lambda: text(app, "#countdown").endswith("overdue by 15s"), "overdue")
        assert countdown.has_class("-overdue")


async def test_cancel_says_what_it_will_do_and_does_nothing_until_confirmed(
    container: Container, seeded: Seeded
) -> None:
    app = make_app(container)
    async with app.run_test(size=COMPACT, notifications=True) as pilot:
        await loaded(pilot)
        await open_reservation(pilot, "4f2a", IDS.held)
        shown = await ask(pilot, app, "c")
        assert f"Cancel {IDS.held}?" in shown
        assert "moves from HELD to CANCELLED" in shown
        assert "No money is held, so nothing is released or refunded." in shown
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen), "back")
        assert stored(container, IDS.held)[0] == "HELD"
        await wait_for(pilot, lambda: "Nothing was changed" in notifications(app), "told")

        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "dialog again")
        await pilot.press("y")
        await wait_for(pilot, lambda: "CANCELLED" in text(app, "#detail-head"), "cancelled")
        assert stored(container, IDS.held) == (
            "CANCELLED",
            "operator:tui",
            "cancelled by support (dashboard)",
        )
        assert f"cancelled {IDS.held}" in notifications(app)
        assert rows(app, "#history")[0][2:4] == ["CANCELLED", "operator:tui"]


async def test_force_compensation_releases_the_authorized_deposit_after_confirmation(
    container: Container, now_clock: ManualClock
) -> None:
    add_vendor(container.db, "v1")
    hold = container.reservations.create_hold(
        HoldRequest("v1", NOW + timedelta(days=1), NOW + timedelta(days=1, hours=1), "ann"),
        actor="partner:test",
    )
    rid = hold.reservation_id
    container.reservations.confirm(rid, actor="vendor:test")
    intent = container.payments.authorize(
        rid, "vendor", payment_method="pm_card_visa", actor="test"
    ).intent_id
    app = make_app(container)
    async with app.run_test(size=COMPACT, notifications=True) as pilot:
        await loaded(pilot)
        await open_reservation(pilot, rid[4:12].upper(), rid)
        assert "authorized" in text(app, "#detail-payments")
        shown = await ask(pilot, app, "f")
        assert f"{rid} moves from AWAITING_REQUESTER_AUTH to CANCELLED." in shown
        assert f"release the authorization of the vendor deposit: 10.00 GBP ({intent})" in shown
        await pilot.press("y")
        await wait_for(pilot, lambda: "CANCELLED" in text(app, "#detail-head"), "compensated")
        await wait_for(
            pilot,
            lambda: (
                [r[1:4] for r in rows(app, "#compensations")]
                == [["cancel_authorization", "10.00 GBP", "done"]]
            ),
            "the release done",
        )
        assert "released" in text(app, "#detail-payments")
        assert stored(container, rid)[1:] == ("operator:tui", "compensation forced by operator")


async def test_retrying_a_dead_webhook_puts_it_back_in_the_queue(
    container: Container, seeded: Seeded
) -> None:
    app = make_app(container)
    async with app.run_test(size=COMPACT, notifications=True) as pilot:
        await loaded(pilot)
        await open_reservation(pilot, "7f9b", IDS.failed_commit)
        shown = await ask(pilot, app, "w")
        assert "evt_1a3c5e7b9d0f2a4c6e8b0d2f (reservation.failed_commit)" in shown
        assert "is dead after 8 attempt(s) (last error: HTTP 500 from endpoint)" in shown
        assert "goes back to pending with its attempts reset" in shown
        await pilot.press("y")
        await wait_for(
            pilot, lambda: rows(app, "#deliveries")[0][3:5] == ["pending", "0"], "requeued"
        )
        pending = container.webhooks.list(status="pending")
        assert [d.event_id for d in pending] == ["evt_1a3c5e7b9d0f2a4c6e8b0d2f"]

        # Pending now: retried by itself, so the dashboard says so instead of asking.
        await pilot.press("w")
        await wait_for(
            pilot,
            lambda: any("still pending" in n for n in notifications(app)),
            "refusal",
        )
        assert isinstance(app.screen, DetailScreen)


async def test_reconcile_now_runs_the_jobs_and_expires_what_is_past_its_deadline(
    container: Container, now_clock: ManualClock
) -> None:
    add_vendor(container.db, "v1")
    start = NOW + timedelta(days=1)
    rid = container.reservations.create_hold(
        HoldRequest("v1", start, start + timedelta(hours=1), "ann"), actor="partner:test"
    ).reservation_id
    now_clock.advance(timedelta(minutes=11))  # past the 10 minute hold
    app = make_app(container)
    async with app.run_test(size=COMPACT, notifications=True) as pilot:
        await loaded(pilot)
        await open_reservation(pilot, rid[-8:], rid)
        assert text(app, "#countdown").endswith("overdue by 1m 00s")
        shown = await ask(pilot, app, "n")
        assert "as `bookiji reconcile --once` does" in shown
        assert "expiry: expire reservations past their deadline" in shown
        await pilot.press("y")
        await wait_for(
            pilot, lambda: "FAILED_VENDOR_TIMEOUT" in text(app, "#detail-head"), "expired"
        )
        assert stored(container, rid)[1] == "system:expiry"
        await wait_for(
            pilot,
            lambda: any(n.startswith("reconciliation:") for n in notifications(app)),
            "report",
        )
        assert any("expiry 1" in n for n in notifications(app))


async def test_an_action_that_fails_is_a_notification_and_the_app_carries_on(
    container: Container, seeded: Seeded, now_clock: ManualClock
) -> None:
    app = make_app(container)
    async with app.run_test(size=COMPACT, notifications=True) as pilot:
        await loaded(pilot)
        await open_reservation(pilot, "4f2a", IDS.held)
        await ask(pilot, app, "c")
        # While support reads the dialog, the hold times out (the daemon's expiry job).
        now_clock.advance(timedelta(minutes=9))
        container.reservations.expire_due()
        await pilot.press("y")
        await wait_for(
            pilot,
            lambda: any("cannot move a reservation from FAILED_VENDOR_TIMEOUT to CANCELLED"
                        in n for n in notifications(app)),
            "error notification",
        )  # fmt: skip
        assert isinstance(app.screen, DetailScreen) and app.is_running
        await wait_for(
            pilot, lambda: "FAILED_VENDOR_TIMEOUT" in text(app, "#detail-head"), "reloaded"
        )
        assert stored(container, IDS.held)[0] == "FAILED_VENDOR_TIMEOUT"
        # A refusal before the dialog is a notification too: a final state cannot be cancelled.
        await pilot.press("c")
        await wait_for(
            pilot, lambda: any("it is final" in n for n in notifications(app)), "refusal"
        )
        assert isinstance(app.screen, DetailScreen)


async def test_the_mouse_opens_a_reservation_and_answers_the_dialog(
    container: Container, seeded: Seeded
) -> None:
    app = make_app(container)
    async with app.run_test(size=BIG) as pilot:
        await loaded(pilot)
        # The second row of the reservations table: a click highlights, a second opens.
        await pilot.click("#reservations", offset=(3, 2))
        await pilot.click("#reservations", offset=(3, 2))
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen), "detail")
        await loaded(pilot)
        assert text(app, "#detail-head").startswith(IDS.awaiting_vendor)
        await ask(pilot, app, "c")
        await pilot.click("#no")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen), "dismissed")
        assert stored(container, IDS.awaiting_vendor)[0] == "AWAITING_VENDOR_CONFIRMATION"
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "dialog again")
        await pilot.click("#yes")
        await wait_for(pilot, lambda: "CANCELLED" in text(app, "#detail-head"), "cancelled")
        assert stored(container, IDS.awaiting_vendor)[0] == "CANCELLED"


async def test_the_search_box_takes_keys_without_triggering_bindings(
    container: Container, seeded: Seeded
) -> None:
    app = make_app(container)
    async with app.run_test(size=COMPACT) as pilot:
        await loaded(pilot)
        await pilot.press("slash", *"fpr")  # letters that are bindings elsewhere
        assert app.screen.query_one("#search", Input).value == "fpr"
        assert not app.screen.query_one(FeedPanel).paused


async def test_database_io_never_runs_on_the_ui_thread(
    container: Container, seeded: Seeded
) -> None:
    """Every statement of a session (load, poll, open, confirm, cancel) comes from a worker."""
    threads: set[int] = set()

    def record(*_: Any) -> None:
        threads.add(threading.get_ident())

    event.listen(container.db.engine, "before_cursor_execute", record)
    try:
        app = make_app(container)
        async with app.run_test(size=COMPACT) as pilot:
            ui_thread = threading.get_ident()
            await loaded(pilot)
            await open_reservation(pilot, "4f2a", IDS.held)
            await ask(pilot, app, "c")
            await pilot.press("y")
            await wait_for(pilot, lambda: "CANCELLED" in text(app, "#detail-head"), "cancelled")
    finally:
        event.remove(container.db.engine, "before_cursor_execute", record)
    assert threads and ui_thread not in threads
