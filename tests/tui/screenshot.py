"""The README's picture of the dashboard: the seeded day at a fixed instant.

    .venv/bin/python -m tests.tui.screenshot            # rewrites docs/dashboard.svg

`test_the_readme_screenshot_is_current` fails when the dashboard changed and this was not
run again."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from bookiji.bootstrap import build
from bookiji.config import Settings
from bookiji.services.clock import ManualClock
from bookiji.store import migrate
from bookiji.store.database import Database
from bookiji.tui.app import DashboardApp
from tests.tui.seed import NOW, seed
from tests.tui.support import STILL, loaded, settled

TARGET = Path(__file__).resolve().parents[2] / "docs" / "dashboard.svg"
SIZE = (140, 42)


async def render(size: tuple[int, int] = SIZE) -> str:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bookiji.db'}"
        db = Database(url)
        migrate.upgrade(db)
        seed(db)
        db.dispose()
        container = build(Settings(database_url=url), clock=ManualClock(NOW))
        try:
            app = DashboardApp(container, source="sqlite:///bookiji.db", **STILL)
            async with app.run_test(size=size) as pilot:
                await loaded(pilot)
                await settled(pilot)
                return app.export_screenshot(title="bookiji tui")
        finally:
            container.close()


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(asyncio.run(render()), encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
