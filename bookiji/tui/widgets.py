"""The main screen's parts: the overview, the live transition feed and the reservations
table with its filters."""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import DataTable, Input, Select, Static

from bookiji.domain.states import TERMINAL_FAILURES, ReservationState
from bookiji.tui.format import clock_time, countdown, short_instant
from bookiji.tui.queries import (
    AWAITING_PAYMENT,
    AWAITING_VENDOR,
    COMMITTING,
    HOLDS,
    STUCK,
    FeedRow,
    FilterChoices,
    Overview,
    ReservationFilter,
    ReservationRow,
)
from bookiji.tui.work import Context, notify_error, run_db

S = ReservationState


def state_class(state: str) -> str:
    """The component class a state is drawn with."""
    if state == S.COMMITTED:
        return "state--committed"
    if state in {s.value for s in TERMINAL_FAILURES}:
        return "state--failed"
    return "state--live"


# -- overview ---------------------------------------------------------------------------------


class Stat(Static):
    """One number of the overview: `Awaiting vendor  2`."""

    def __init__(self, label: str, *, id: str, alert: bool = False) -> None:
        super().__init__(id=id, classes="stat -alerting" if alert else "stat")
        self.label = label
        self.value: int | None = None

    def on_mount(self) -> None:
        self.show(None)

    def show(self, value: int | None) -> None:
        if value == self.value and value is not None:
            return
        self.value = value
        text = Text(self.label + " ")
        text.append("…" if value is None else str(value), style="bold")
        self.update(text)
        self.set_class(bool(value) and self.has_class("-alerting"), "-alert")


class OverviewPanel(Vertical):
    COUNTS: ClassVar[list[tuple[str, str]]] = [
        ("holds", "Holds"),
        ("awaiting-vendor", "Awaiting vendor"),
        ("awaiting-payment", "Awaiting payment"),
        ("committing", "Committing"),
        ("committed-today", "Committed today"),
        ("failures-today", "Failures today"),
    ]
    STUCK: ClassVar[list[tuple[str, str]]] = [
        ("past-deadline", "Past deadline"),
        ("commit-too-long", "Commit too long"),
        ("compensation-failing", "Refunds failing"),
        ("dead-letters", "Dead letters"),
    ]

    def compose(self) -> ComposeResult:
        with Grid(id="counts"):
            for key, label in self.COUNTS:
                yield Stat(label, id=f"stat-{key}")
        with Grid(id="stuck"):
            for key, label in self.STUCK:
                yield Stat(label, id=f"stat-{key}", alert=True)

    def show(self, view: Overview) -> None:
        values = {
            "holds": view.count(HOLDS),
            "awaiting-vendor": view.count(AWAITING_VENDOR),
            "awaiting-payment": view.count(AWAITING_PAYMENT),
            "committing": view.count(COMMITTING),
            "committed-today": view.committed_today,
            "failures-today": view.failures_today,
            "past-deadline": view.past_deadline,
            "commit-too-long": view.commit_too_long,
            "compensation-failing": view.compensation_failing,
            "dead-letters": view.dead_letters,
        }
        for key, value in values.items():
            self.query_one(f"#stat-{key}", Stat).show(value)


# -- live feed --------------------------------------------------------------------------------


class FeedTable(DataTable[Text]):
    """Newest transition on top; each row in its outcome's colour (styles in the .tcss)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Open")]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "feed--progress",
        "feed--committed",
        "feed--failure",
        "feed--compensation",
    }


class FeedPanel(Vertical):
    """Polls `reservation_transitions` by increasing id. Paused, it keeps polling and
    counting what arrives (the backlog) without moving the table under the reader."""

    COLUMNS: ClassVar[list[tuple[str, str]]] = [
        ("time", "UTC"),
        ("reservation", "reservation"),
        ("change", "from → to"),
        ("vendor", "vendor"),
        ("reason", "reason"),
        ("actor", "actor"),
        ("outcome", "outcome"),
    ]
    #: Narrower than this, reservation ids are shortened (enter opens the full one).
    SHORT_IDS_BELOW = 110

    def __init__(self, ctx: Context, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ctx = ctx
        self.last_id = 0
        self.rows: deque[FeedRow] = deque(maxlen=ctx.feed_limit)  # newest first
        self.backlog: deque[FeedRow] = deque(maxlen=ctx.feed_limit)  # oldest first
        self.backlog_count = 0
        self.paused = False
        self.loaded = False
        self._polling = False
        self._failing = False
        self.short_ids = False

    def compose(self) -> ComposeResult:
        yield Static("Live feed: loading…", id="feed-title", classes="pane-title")
        yield FeedTable(id="feed", cursor_type="row")

    @property
    def table(self) -> FeedTable:
        return self.query_one(FeedTable)

    def on_mount(self) -> None:
        self._draw()
        self._polling = True
        run_db(
            self,
            lambda: self.ctx.queries.feed_latest(limit=self.ctx.feed_limit),
            self._arrived,
            group="feed",
            failed=self._failed,
        )
        self.set_interval(self.ctx.poll_interval, self.poll)

    def on_resize(self) -> None:
        short = self.size.width < self.SHORT_IDS_BELOW
        if short != self.short_ids:
            self.short_ids = short
            self._draw()

    def poll(self) -> None:
        if self._polling:
            return  # the previous poll is still running
        self._polling = True
        last = self.last_id
        run_db(
            self,
            lambda: self.ctx.queries.feed_after(last, limit=self.ctx.feed_limit),
            self._arrived,
            group="feed",
            failed=self._failed,
        )

    def _failed(self, exc: BaseException) -> None:
        self._polling = False
        if not self._failing:  # say it once, not every half second
            self._failing = True
            notify_error(self, exc, title="Live feed stopped")
        self._title()

    def _arrived(self, rows: list[FeedRow]) -> None:
        self._polling = False
        self.loaded = True
        if self._failing:
            self._failing = False
            self.app.notify("Live feed reconnected", markup=False)
        if rows:
            self.last_id = rows[-1].id
            if self.paused:
                self.backlog.extend(rows)
                self.backlog_count += len(rows)
            else:
                self.rows.extendleft(rows)
                self._draw()
        self._title()

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.rows.extendleft(self.backlog)
            self.backlog.clear()
            self.backlog_count = 0
            self._draw()
        self._title()

    def row_for(self, key: str) -> FeedRow | None:
        return next((row for row in self.rows if str(row.id) == key), None)

    def _title(self) -> None:
        title = self.query_one("#feed-title", Static)
        if self._failing:
            title.update("Live feed: database unreachable, retrying…")
        elif self.paused:
            title.update(f"Live feed: PAUSED, {self.backlog_count} new since the pause (p resumes)")
        else:
            title.update(f"Live feed: {len(self.rows)} latest transitions, newest on top")
        self.set_class(self.paused, "-paused")

    def _draw(self) -> None:
        table = self.table
        keep = None
        if table.row_count and table.cursor_row > 0:
            keep = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        styles = {
            name: table.get_component_rich_style(f"feed--{name}", partial=True)
            for name in ("progress", "committed", "failure", "compensation")
        }
        table.clear(columns=True)  # columns too: their widths follow the content shown
        for key, label in self.COLUMNS:
            table.add_column(label, key=key)
        for row in self.rows:
            style = styles[row.outcome.value]
            reservation = row.reservation_id
            if self.short_ids and len(reservation) > 13:
                reservation = reservation[:12] + "…"
            cells = (
                clock_time(row.at),
                reservation,
                f"{row.from_state or '∅'} → {row.to_state}",
                row.vendor_id,
                row.reason,
                row.actor,
                row.outcome.value,
            )
            table.add_row(*(Text(cell, style=style) for cell in cells), key=str(row.id))
        if keep is not None and keep in table.rows:
            table.move_cursor(row=table.get_row_index(keep), animate=False)


# -- reservations -----------------------------------------------------------------------------


class ReservationsTable(DataTable[Text]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Open")]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "state--live",
        "state--committed",
        "state--failed",
        "state--overdue",
    }


class ReservationsPanel(Vertical):
    TYPING_PAUSE = 0.2  # seconds without a key before the search runs
    COLUMNS: ClassVar[list[tuple[str, str]]] = [
        ("id", "reservation"),
        ("state", "state"),
        ("deadline", "deadline"),
        ("vendor", "vendor"),
        ("partner", "partner"),
        ("requester", "requester"),
        ("slot", "slot (UTC)"),
    ]

    def __init__(self, ctx: Context, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ctx = ctx
        self.loaded = False
        self.shown: list[ReservationRow] = []
        self._drawn: object = None
        self._typing: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Static("Reservations: loading…", id="reservations-title", classes="pane-title")
        with Horizontal(id="filters"):
            yield Input(placeholder="/ id or requester", id="search", compact=True)
            yield Select[str](
                [("Stuck (past deadline)", STUCK), *((s.value, s.value) for s in S)],
                prompt="Any state",
                id="state-filter",
                compact=True,
            )
            yield Select[str]([], prompt="Any vendor", id="vendor-filter", compact=True)
            yield Select[str]([], prompt="Any partner", id="partner-filter", compact=True)
        yield ReservationsTable(id="reservations", cursor_type="row")

    @property
    def table(self) -> ReservationsTable:
        return self.query_one(ReservationsTable)

    def on_mount(self) -> None:
        for key, label in self.COLUMNS:
            self.table.add_column(label, key=key)
        self.load_choices()
        self.reload()
        self.set_interval(self.ctx.refresh_interval, self.reload)
        self.set_interval(self.ctx.refresh_interval * 15, self.load_choices)

    def load_choices(self) -> None:
        run_db(self, self.ctx.queries.filter_choices, self._choices, group="choices")

    def _choices(self, choices: FilterChoices) -> None:
        for widget_id, options in (
            ("#vendor-filter", choices.vendors),
            ("#partner-filter", choices.partners),
        ):
            select = self.query_one(widget_id, Select)
            if select.expanded:
                continue
            value = select.value
            select.set_options([(f"{name} ({key})", key) for key, name in options])
            if value in {key for key, _ in options}:
                select.value = value

    def current_filter(self) -> ReservationFilter:
        def picked(widget_id: str) -> str | None:
            value = self.query_one(widget_id, Select).value
            return value if isinstance(value, str) else None

        return ReservationFilter(
            state=picked("#state-filter"),
            vendor_id=picked("#vendor-filter"),
            partner_id=picked("#partner-filter"),
            text=self.query_one("#search", Input).value,
        )

    def reload(self) -> None:
        where = self.current_filter()
        run_db(
            self,
            lambda: (where, self.ctx.queries.reservations(where)),
            self._show,
            group="reservations",
            exclusive=True,
        )

    def on_input_changed(self, event: Input.Changed) -> None:
        # Typing: one query once the keys pause, not one per key.
        if self._typing is not None:
            self._typing.stop()
        self._typing = self.set_timer(self.TYPING_PAUSE, self.reload)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.table.focus()  # enter: from the search to the rows it found

    def on_select_changed(self, event: Select.Changed) -> None:
        self.reload()

    def _show(self, result: tuple[ReservationFilter, list[ReservationRow]]) -> None:
        where, rows = result
        if where != self.current_filter():
            return  # a newer filter's answer is on its way
        now = self.ctx.clock.now()
        drawn = (where, rows, [countdown(row.state_deadline, now) for row in rows])
        if self.loaded and drawn == self._drawn:
            return  # nothing a reader could see has changed
        self._drawn = drawn
        self.loaded = True
        self.shown = rows
        table = self.table
        keep = None
        if table.row_count:
            keep = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        overdue = table.get_component_rich_style("state--overdue", partial=True)
        lines = []
        for row in rows:
            style = table.get_component_rich_style(state_class(row.state), partial=True)
            left, late = countdown(row.state_deadline, now)
            deadline = Text("-" if row.state_deadline is None else left)
            if late and row.overdue:
                deadline.stylize(overdue)
            lines.append((row.id, (
                Text(row.id),
                Text(row.state, style=style),
                deadline,
                Text(row.vendor_id),
                Text(row.partner_id or "-"),
                Text(row.requester_id),
                Text(short_instant(row.slot_start)),
            )))  # fmt: skip
        table.clear(columns=True)  # columns too: their widths follow the content shown
        # Widths given, not measured by the table later: its own measuring ran late at times
        # (after a screenshot, or not at all), leaving columns as narrow as their headers.
        for index, (key, label) in enumerate(self.COLUMNS):
            width = max([len(label), *(cells[index].cell_len for _, cells in lines)])
            table.add_column(label, key=key, width=width)
        for key, cells in lines:
            table.add_row(*cells, key=key)
        if keep is not None and keep in table.rows:
            table.move_cursor(row=table.get_row_index(keep), animate=False)
        active = [
            name
            for name, value in (
                ("state", where.state),
                ("vendor", where.vendor_id),
                ("partner", where.partner_id),
                ("text", where.text.strip()),
            )
            if value
        ]
        filtered = f", filtered by {', '.join(active)}" if active else ""
        self.query_one("#reservations-title", Static).update(
            f"Reservations: {len(rows)} shown, newest first{filtered}"
        )
