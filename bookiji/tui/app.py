"""`bookiji tui`: the support dashboard (Textual).

It reads the database the CLI and the daemon write (SQLite or Postgres) in short read
transactions from worker threads (deferred BEGIN on SQLite, so watching never takes the
write lock), and acts only through the services the CLI calls. Time comes from the
container's clock, so tests and screenshots are deterministic.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input

from bookiji.bootstrap import Container
from bookiji.store.database import redact
from bookiji.tui.actions import SupportActions
from bookiji.tui.detail import DetailScreen
from bookiji.tui.dialogs import HelpScreen
from bookiji.tui.queries import DashboardQueries, Overview
from bookiji.tui.widgets import FeedPanel, FeedTable, OverviewPanel, ReservationsPanel
from bookiji.tui.work import Context, run_db


class MainScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "show('feed')", "Feed"),
        Binding("r", "show('reservations')", "Reservations"),
        Binding("p", "pause", "Pause feed"),
        Binding("slash", "search", "Search"),
    ]

    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx
        self.overview: Overview | None = None

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield OverviewPanel(id="overview")
        with Vertical(id="panes", classes="-show-feed"):
            yield FeedPanel(self.ctx, id="feed-pane")
            yield ReservationsPanel(self.ctx, id="reservations-pane")
        yield Footer()

    @property
    def feed(self) -> FeedPanel:
        return self.query_one(FeedPanel)

    @property
    def reservations(self) -> ReservationsPanel:
        return self.query_one(ReservationsPanel)

    @property
    def loaded(self) -> bool:
        """Everything has been read once (tests and screenshots wait for this)."""
        return self.overview is not None and self.feed.loaded and self.reservations.loaded

    def on_mount(self) -> None:
        self.feed.table.focus()
        self.refresh_overview()
        self.set_interval(self.ctx.refresh_interval, self.refresh_overview)

    def refresh_overview(self) -> None:
        run_db(self, self.ctx.queries.overview, self._overview, group="overview", exclusive=True)

    def _overview(self, view: Overview) -> None:
        self.overview = view
        self.query_one(OverviewPanel).show(view)

    def action_show(self, pane: str) -> None:
        panes = self.query_one("#panes")
        panes.set_class(pane == "feed", "-show-feed")
        panes.set_class(pane == "reservations", "-show-reservations")
        (self.feed.table if pane == "feed" else self.reservations.table).focus()

    def action_pause(self) -> None:
        self.feed.toggle_pause()
        state = "paused: new transitions are counted, not shown" if self.feed.paused else "live"
        self.notify(f"Feed {state}", markup=False, timeout=3)

    def action_search(self) -> None:
        self.action_show("reservations")
        self.query_one("#search", Input).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self._open_row(event.data_table, event.row_key.value)

    def _open_row(self, table: DataTable[object], key: str) -> None:
        reservation_id = key
        if isinstance(table, FeedTable):
            row = self.feed.row_for(key)
            if row is None:
                return
            reservation_id = row.reservation_id
        self.app.push_screen(DetailScreen(self.ctx, reservation_id))


class DashboardApp(App[None]):
    CSS_PATH = "dashboard.tcss"
    TITLE = "Bookiji support"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]
    # Small terminals show the feed or the reservations; large ones both.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]

    def __init__(
        self,
        container: Container,
        *,
        poll_interval: float = 0.5,
        refresh_interval: float = 2.0,
        tick_interval: float = 1.0,
        source: str | None = None,
    ) -> None:
        super().__init__()
        self.container = container
        self.ctx = Context(
            queries=DashboardQueries(
                container.db,
                container.clock,
                commit_stuck_after=_commit_stuck_after(container),
            ),
            actions=SupportActions(container),
            clock=container.clock,
            poll_interval=poll_interval,
            refresh_interval=refresh_interval,
            tick_interval=tick_interval,
        )
        self.sub_title = source if source is not None else redact(container.db.url)

    def get_default_screen(self) -> Screen[None]:
        return MainScreen(self.ctx)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


def _commit_stuck_after(container: Container) -> timedelta:
    """A commit with no progress for longer than its lease has no live worker."""
    return timedelta(seconds=container.settings.payments.commit_lease_seconds)
