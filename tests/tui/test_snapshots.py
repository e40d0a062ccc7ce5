"""What the dashboard looks like, small and large, on the seeded day at a fixed instant.

`pytest tests/tui/test_snapshots.py --snapshot-update` accepts a deliberate change; the
report of a mismatch is written to snapshot_report.html."""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot

from bookiji.bootstrap import Container
from bookiji.tui.detail import DetailScreen
from tests.tui.seed import IDS, Seeded
from tests.tui.support import column, loaded, make_app, settled, wait_for

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


@pytest.fixture
def backend() -> str:
    return "sqlite"


async def main_screen(pilot: Pilot[Any]) -> None:
    await loaded(pilot)
    await settled(pilot)


async def detail_screen(pilot: Pilot[Any]) -> None:
    """The failed commit: money refunded and released, a failing refund, a dead letter."""
    await loaded(pilot)
    await pilot.press("slash", *"7f9b", "enter")
    await wait_for(
        pilot, lambda: column(pilot.app, "#reservations", 0) == [IDS.failed_commit], "search"
    )
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, DetailScreen), "detail")
    await loaded(pilot)
    await settled(pilot)


@pytest.mark.parametrize("size", SIZES)
def test_main_screen(snap_compare: Any, container: Container, seeded: Seeded, size: Any) -> None:
    assert snap_compare(make_app(container), terminal_size=size, run_before=main_screen)


@pytest.mark.parametrize("size", SIZES)
def test_detail_screen(snap_compare: Any, container: Container, seeded: Seeded, size: Any) -> None:
    assert snap_compare(make_app(container), terminal_size=size, run_before=detail_screen)
