"""One reservation: slot in the vendor's timezone and UTC, state with a live countdown, full
history, both parties' money, compensation actions, webhook deliveries; and the actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from bookiji.services.webhooks import DeliveryView
from bookiji.tui.actions import PARTY_MONEY, Outcome, Plan, money
from bookiji.tui.dialogs import ConfirmScreen
from bookiji.tui.format import countdown, parse, short_instant, slot_in
from bookiji.tui.queries import ReservationDetail
from bookiji.tui.widgets import state_class
from bookiji.tui.work import Context, notify_error, run_db


class DetailTable(DataTable[Text]):
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "state--live",
        "state--committed",
        "state--failed",
        "status--bad",
        "status--good",
    }


class DetailScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("c", "cancel_reservation", "Cancel"),
        Binding("f", "compensate", "Compensate"),
        Binding("w", "retry_webhook", "Retry webhook"),
        Binding("n", "reconcile", "Reconcile"),
    ]

    def __init__(self, ctx: Context, reservation_id: str) -> None:
        super().__init__()
        self.ctx = ctx
        self.reservation_id = reservation_id
        self.detail: ReservationDetail | None = None
        self.busy = False
        self._countdown = ""
        self.sub_title = reservation_id

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(id="detail-summary"):
            yield Static(Text(f"{self.reservation_id}  loading…"), id="detail-head")
            yield Static("", id="countdown")
            yield Static("", id="detail-parties")
            yield Static("", id="detail-slot")
            yield Static("", id="detail-payments")
        with VerticalScroll(id="detail-sections"):
            yield Static("State history", classes="section-title", id="history-title")
            yield DetailTable(id="history", cursor_type="row", classes="section")
            yield Static("Compensation actions", classes="section-title", id="comp-title")
            yield DetailTable(id="compensations", cursor_type="row", classes="section")
            yield Static("Webhook deliveries", classes="section-title", id="deliveries-title")
            yield DetailTable(id="deliveries", cursor_type="row", classes="section")
        yield Footer()

    def on_mount(self) -> None:
        columns = {
            "history": ("at (UTC)", "from", "to", "actor", "reason"),
            "compensations": ("party", "action", "amount", "status", "attempts", "last error"),
            "deliveries": ("event", "type", "partner", "status", "attempts", "last error"),
        }
        for table_id, labels in columns.items():
            self.query_one(f"#{table_id}", DetailTable).add_columns(*labels)
        self.reload()
        self.set_interval(self.ctx.refresh_interval, self.reload)
        self.set_interval(self.ctx.tick_interval, self.tick)

    @property
    def loaded(self) -> bool:
        return self.detail is not None

    # -- reading -----------------------------------------------------------------------------

    def reload(self) -> None:
        run_db(
            self,
            lambda: self.ctx.queries.detail(self.reservation_id),
            self._show,
            group="detail",
            exclusive=True,
            failed=self._failed,
        )

    def _failed(self, exc: BaseException) -> None:
        if self.detail is None:
            self.query_one("#detail-head", Static).update(
                Text(f"{self.reservation_id}: could not be loaded")
            )
        notify_error(self, exc, title="Could not load the reservation")

    def tick(self) -> None:
        """The countdown moves with the clock; no database read."""
        widget = self.query_one("#countdown", Static)
        if self.detail is None:
            return
        deadline = parse(self.detail.document["stateDeadline"])
        left, late = countdown(deadline, self.ctx.clock.now())
        line = (
            "Deadline: none (this state does not expire)"
            if deadline is None
            else f"Deadline {short_instant(deadline)} UTC: {left}"
        )
        if line != self._countdown:
            self._countdown = line
            widget.update(Text(line))
            widget.set_class(late, "-overdue")

    def _show(self, detail: ReservationDetail) -> None:
        if detail == self.detail:
            return  # unchanged since the last read
        self.detail = detail
        doc = detail.document
        head = Text(f"{detail.id}  ")
        head.append(
            detail.state,
            style=self.query_one("#history", DetailTable).get_component_rich_style(
                state_class(detail.state), partial=True
            ),
        )
        self.query_one("#detail-head", Static).update(head)
        self.tick()
        partner = doc["partnerId"] or "none (operator)"
        parties = (
            f"Vendor {detail.vendor_name} ({doc['vendorId']})  Requester {doc['requesterId']}"
            f"  Partner {partner}"
        )
        if doc.get("cancelNote"):  # the canceller's own words, kept apart from the log
            parties += f"\nCancel note: {doc['cancelNote']}"
        self.query_one("#detail-parties", Static).update(Text(parties))
        start, end = parse(doc["slotStartTime"]), parse(doc["slotEndTime"])
        assert start is not None and end is not None
        local, utc = slot_in(start, end, detail.zone)
        self.query_one("#detail-slot", Static).update(Text(f"Slot {local}\n     {utc}"))
        payment = doc["payment"]
        lines = []
        for party, key in (("vendor", "vendorDeposit"), ("requester", "requesterPayment")):
            held = payment[key]
            lines.append(
                f"{PARTY_MONEY[party].capitalize():<18}"
                f"{money(int(held['amount']), payment['currency']):>12}  {held['state']:<11}"
                f" {held['paymentIntentId'] or '-'}"
            )
        self.query_one("#detail-payments", Static).update(Text("\n".join(lines)))
        self._tables(detail)

    def _tables(self, detail: ReservationDetail) -> None:
        doc = detail.document
        history = self.query_one("#history", DetailTable)
        rows: list[tuple[Any, ...]] = []
        for step in reversed(doc["stateHistory"]):  # newest first, like the feed
            style = history.get_component_rich_style(state_class(step["to"]), partial=True)
            at = parse(step["at"])
            rows.append(
                (
                    Text(at.strftime("%Y-%m-%d %H:%M:%S") if at else "-"),
                    Text(step["from"] or "∅"),
                    Text(step["to"], style=style),
                    Text(step["actor"]),
                    Text(step["reason"]),
                )
            )
        self._fill(history, rows)
        self.query_one("#history-title", Static).update(
            f"State history ({len(rows)} transitions, newest first)"
        )

        comps = self.query_one("#compensations", DetailTable)
        bad = comps.get_component_rich_style("status--bad", partial=True)
        good = comps.get_component_rich_style("status--good", partial=True)
        rows = []
        for action in doc["compensationActions"]:
            status = action["status"]
            failing = status == "failed" or (status == "pending" and action["lastError"])
            rows.append(
                (
                    Text(action["party"]),
                    Text(action["action"]),
                    Text(money(int(action["amount"]), doc["payment"]["currency"])),
                    Text(status, style=bad if failing else good if status == "done" else ""),
                    Text(str(action["attempts"])),
                    Text(action["lastError"] or "-"),
                )
            )
        self._fill(comps, rows)
        self.query_one("#comp-title", Static).update(f"Compensation actions ({len(rows)})")

        deliveries = self.query_one("#deliveries", DetailTable)
        rows = []
        for d in detail.deliveries:
            last = d.last_error or (f"HTTP {d.last_status}" if d.last_status else "-")
            status_style = bad if d.status == "dead" else good if d.status == "delivered" else ""
            rows.append(
                (
                    Text(d.event_id),
                    Text(d.event_type or "-"),
                    Text(d.partner_id),
                    Text(d.status, style=status_style),
                    Text(str(d.attempts)),
                    Text(last),
                )
            )
        self._fill(deliveries, rows, keys=[d.id for d in detail.deliveries])
        self.query_one("#deliveries-title", Static).update(
            f"Webhook deliveries ({len(rows)})"
            + ("" if rows else ": none (no partner webhook for this reservation)")
        )

    @staticmethod
    def _fill(
        table: DetailTable, rows: list[tuple[Any, ...]], *, keys: list[str] | None = None
    ) -> None:
        cursor = table.cursor_row
        table.clear()
        for index, row in enumerate(rows):
            table.add_row(*row, key=keys[index] if keys else None)
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1), animate=False)

    # -- acting ------------------------------------------------------------------------------

    def action_back(self) -> None:
        self.dismiss(None)

    def _ready(self) -> ReservationDetail | None:
        if self.busy:
            self.app.notify("An action is still running", severity="warning", markup=False)
            return None
        if self.detail is None:
            self.app.notify("The reservation is still loading", severity="warning", markup=False)
        return self.detail

    def _ask(self, make_plan: Callable[[], Plan], act: Callable[[Plan], Outcome]) -> None:
        """Plan (in a worker), confirm (a dialog), act (in a worker), report (a notification)."""
        self.busy = True

        def confirm(plan: Plan) -> None:
            def answered(yes: bool | None) -> None:
                if not yes:
                    self.busy = False
                    self.app.notify("Nothing was changed", markup=False)
                    return
                run_db(self, lambda: act(plan), self._done, group="action", failed=self._fail)

            self.app.push_screen(ConfirmScreen(plan), answered)

        run_db(self, make_plan, confirm, group="action", failed=self._fail)

    def _done(self, outcome: Outcome) -> None:
        self.busy = False
        message = "\n".join([outcome.message, *outcome.details[:5]])
        self.app.notify(message, severity=outcome.severity, markup=False, timeout=8)
        self.reload()

    def _fail(self, exc: BaseException) -> None:
        self.busy = False
        notify_error(self, exc)
        self.reload()

    def action_cancel_reservation(self) -> None:
        detail = self._ready()
        if detail is not None:
            actions = self.ctx.actions
            self._ask(lambda: actions.cancel_plan(detail), lambda _: actions.cancel(detail.id))

    def action_compensate(self) -> None:
        detail = self._ready()
        if detail is not None:
            actions = self.ctx.actions
            self._ask(
                lambda: actions.compensation_plan(detail),
                lambda plan: actions.force_compensate(detail.id, refund=plan.refund),
            )

    def selected_delivery(self) -> DeliveryView | None:
        detail = self.detail
        if detail is None or not detail.deliveries:
            return None
        table = self.query_one("#deliveries", DetailTable)
        if table.has_focus and table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            return next((d for d in detail.deliveries if d.id == key), None)
        # Not chosen in the table: the first one that gave up, else the highlighted one.
        dead = [d for d in detail.deliveries if d.status == "dead"]
        return (
            dead[0]
            if dead
            else detail.deliveries[min(table.cursor_row, len(detail.deliveries) - 1)]
        )

    def action_retry_webhook(self) -> None:
        detail = self._ready()
        if detail is None:
            return
        delivery = self.selected_delivery()
        if delivery is None:
            self.app.notify(
                f"{detail.id} has no webhook delivery to retry", severity="warning", markup=False
            )
            return
        actions = self.ctx.actions
        self._ask(
            lambda: actions.webhook_plan(detail, delivery),
            lambda _: actions.retry_webhook(delivery),
        )

    def action_reconcile(self) -> None:
        if self._ready() is not None:
            actions = self.ctx.actions
            self._ask(actions.reconcile_plan, lambda _: actions.reconcile())
