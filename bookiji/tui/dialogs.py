"""Modal screens: the confirmation every action goes through, and the key help."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from bookiji.tui.actions import Plan


class ConfirmScreen(ModalScreen[bool]):
    """Says exactly what will happen; `y` (or the red button) does it, `n`/esc does not.
    The safe button has the focus, so a stray enter changes nothing."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes, do it"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(self.plan.title), id="dialog-title")
            with VerticalScroll(id="dialog-body"):
                for line in self.plan.lines:
                    yield Static(Text(line), classes="dialog-line")
            with Horizontal(id="dialog-buttons"):
                yield Button(f"{self.plan.confirm} (y)", variant="error", id="yes")
                yield Button("Keep as is (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")


HELP = """\
[b]Main screen[/b]
  f            live feed (on a small terminal: show it)
  r            reservations table (on a small terminal: show it)
  p            pause / resume the feed (new rows are counted meanwhile)
  /            search reservations by any part of the id or requester
  tab          next filter or table
  enter        open the highlighted reservation (feed or table); a click twice too
[b]Reservation screen[/b]
  c            cancel it
  f            force compensation (release or refund its money)
  w            retry the highlighted webhook delivery (a dead letter)
  n            run reconciliation now (every job once)
  esc          back
[b]Everywhere[/b]
  ?            this help          q   quit
Every action asks first and says exactly what it will do: y does it, n or esc does not.

[b]Feed colours[/b]
  [$text-primary]progress[/]      a reservation moved along the workflow
  [$text-success]committed[/]     booked: both captured
  [$text-error]failure[/]       failed, expired or cancelled
  [$text-warning]compensation[/]  a failed commit or forced unwind: money is released or refunded
[b]Stuck[/b]  (highlighted in the overview)
  past deadline      a waiting reservation reconciliation has not expired yet
  commit too long    COMMIT_IN_PROGRESS past its deadline or without progress
  refunds failing    compensation actions that failed or keep failing
  dead letters       partner webhooks that gave up; w on the reservation retries
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static("Bookiji support dashboard: keys", id="help-title")
            yield Static(HELP, id="help-body")

    def action_close(self) -> None:
        self.dismiss(None)
