"""Driving the dashboard in tests: what is on the screen, and waiting without sleeping."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import DataTable, Static
from textual.widgets._toast import Toast

from bookiji.bootstrap import Container
from bookiji.tui.app import DashboardApp

#: Fast timers for tests; the feed keeps the production interval where timing is the point.
FAST = {"poll_interval": 0.3, "refresh_interval": 1.0, "tick_interval": 0.2}
#: For pictures: draw once from the first loads and never refresh, so a capture can never
#: land in the middle of a periodic reload on a busy machine.
STILL = {"poll_interval": 3600.0, "refresh_interval": 3600.0, "tick_interval": 3600.0}


def make_app(container: Container, **options: Any) -> DashboardApp:
    return DashboardApp(container, source="test database", **{**FAST, **options})


async def wait_for(
    pilot: Pilot[Any], condition: Callable[[], object], what: str, timeout: float = 5.0
) -> None:
    """Let the app run until `condition()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def loaded(pilot: Pilot[Any]) -> None:
    await wait_for(pilot, lambda: getattr(pilot.app.screen, "loaded", False), "first load")


async def settled(pilot: Pilot[Any], timeout: float = 15.0, quiet: float = 0.5) -> None:
    """Wait until no database worker is running and what is drawn has not changed for
    `quiet` seconds since (tables size their columns after the rows arrive; on a busy machine
    a worker's answer can come late), so a screenshot shows the finished screen."""
    deadline = time.monotonic() + timeout
    previous, since = "", time.monotonic()
    while True:
        if time.monotonic() > deadline:
            raise AssertionError("the screen did not settle")
        await pilot.pause(0.05)
        current = pilot.app.export_screenshot()
        working = any(not worker.is_finished for worker in pilot.app.workers)
        if current != previous or working:
            previous, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def screen_text(app: DashboardApp) -> str:
    """The terminal's text, as the user reads it."""
    width, height = app.size
    console = Console(
        width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
        color_system="truecolor", legacy_windows=False, safe_box=False,
    )  # fmt: skip
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text(styles=False)


def text(app: DashboardApp, selector: str) -> str:
    """A Static's content as plain text."""
    return str(app.screen.query_one(selector, Static).render())


def rows(app: DashboardApp, selector: str) -> list[list[str]]:
    table = app.screen.query_one(selector, DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def column(app: DashboardApp, selector: str, index: int) -> list[str]:
    return [row[index] for row in rows(app, selector)]


def notifications(app: DashboardApp) -> list[str]:
    return [str(toast.render()) for toast in app.screen.query(Toast)]


def dialog(app: DashboardApp) -> str:
    """The open confirmation dialog: its title and lines, one per line."""
    parts = [text(app, "#dialog-title")]
    parts += [str(line.render()) for line in app.screen.query(".dialog-line").results(Static)]
    return "\n".join(parts)
