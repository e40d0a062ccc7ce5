"""The feed is live: what another process commits shows within a second, on both
databases, while the dashboard (reading, never holding the write lock) keeps watching."""

from __future__ import annotations

import asyncio
import gc
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bookiji.bootstrap import Container
from bookiji.tui.app import DashboardApp
from tests.tui.seed import IDS, Seeded
from tests.tui.support import loaded, rows, wait_for

pytestmark = pytest.mark.anyio
SCRIPT = shutil.which("bookiji", path=str(Path(sys.executable).parent)) or shutil.which("bookiji")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_full_collection_of_the_suites_heap() -> Iterator[None]:
    """A dashboard's process holds the dashboard; this one holds what a thousand tests
    left behind, and a full garbage collection of that (a second and more) landing in the
    measured second would time the test suite, not the feed."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def test_transitions_committed_by_another_process_show_within_a_second(
    container: Container, seeded: Seeded, database_url: str
) -> None:
    assert SCRIPT is not None
    app = DashboardApp(container, source="test database")  # the production poll interval
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        # Another OS process: the operator CLI cancels a reservation.
        writer = await asyncio.create_subprocess_exec(
            SCRIPT, "--database", database_url, "reservations", "cancel", IDS.held,
            "--reason", "customer called", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert writer.stdout is not None
        first = await writer.stdout.readline()  # printed once the cancel has committed
        committed = time.monotonic()
        assert first.decode().startswith(f"cancelled: {IDS.held}"), first

        def shown() -> bool:
            return (
                [
                    IDS.held,
                    "HELD → CANCELLED",
                    "studio-a",
                    "cancelled",  # the log's words; the note is sealed apart
                    "operator:cli",
                ]
                in [row[1:6] for row in rows(app, "#feed")]
            )

        await wait_for(pilot, shown, "the other process's transition in the feed", timeout=1.0)
        assert time.monotonic() - committed < 1.0
        assert rows(app, "#feed")[0][1:3] == [IDS.held, "HELD → CANCELLED"]  # newest on top
        _, errors = await writer.communicate()
        assert writer.returncode == 0, errors
