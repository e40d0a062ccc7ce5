"""Database I/O off the UI thread: every read and every action of the dashboard runs in a
Textual thread worker, and its result (or its error, as a notification) comes back to the
UI thread. Nothing a worker raises can end the app."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError
from textual.dom import DOMNode
from textual.worker import get_current_worker

from bookiji.domain.errors import BookijiError
from bookiji.services.clock import Clock
from bookiji.tui.actions import SupportActions
from bookiji.tui.queries import DashboardQueries

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """What every screen of the dashboard needs."""

    queries: DashboardQueries
    actions: SupportActions
    clock: Clock
    poll_interval: float = 0.5  # the feed: new transitions show within a second
    refresh_interval: float = 2.0  # overview, reservations table, open reservation
    tick_interval: float = 1.0  # countdowns (no I/O)
    feed_limit: int = 300  # rows kept in the feed


def describe(exc: BaseException) -> str:
    """One line for a notification, like the CLI's error line (no driver text, which can
    echo connection strings)."""
    if isinstance(exc, BookijiError):
        return f"{exc.message} [{exc.code}]"
    if isinstance(exc, SQLAlchemyError):
        return (
            f"database error ({exc.__class__.__name__}); "
            "check the database URL and that the server is reachable"
        )
    return f"{exc.__class__.__name__}: {exc}"


def notify_error(node: DOMNode, exc: BaseException, *, title: str = "Failed") -> None:
    node.app.notify(describe(exc), title=title, severity="error", markup=False, timeout=10)


def run_db(
    owner: DOMNode,
    call: Callable[[], T],
    done: Callable[[T], object],
    *,
    group: str,
    failed: Callable[[BaseException], object] | None = None,
    exclusive: bool = False,
) -> None:
    """Run `call` in a thread worker of `owner`; then `done(result)` or `failed(error)` on
    the UI thread, unless the worker was cancelled (its screen closed, a newer query)."""
    app = owner.app

    def deliver(callback: Callable[[], object]) -> None:
        worker = get_current_worker()
        if worker.is_cancelled:
            return
        with suppress(RuntimeError):  # the app is shutting down
            app.call_from_thread(callback)

    def work() -> None:
        try:
            result = call()
        except Exception as exc:
            on_error = failed or partial(notify_error, owner)
            deliver(partial(on_error, exc))
            return
        deliver(partial(done, result))

    owner.run_worker(
        work, thread=True, group=group, exclusive=exclusive, exit_on_error=False, name=group
    )
