"""The dashboard's tests share a container (every service, as `bookiji` wires them) on a
fresh database per backend, a clock that moves only when told, and the seeded day."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_textual_snapshot

from bookiji.bootstrap import Container, build
from bookiji.config import Settings
from bookiji.services.clock import ManualClock
from tests.tui.seed import NOW, Seeded, seed

# pytest-textual-snapshot 1.0 names its SVG files through `_file_extension`, which syrupy 5+
# no longer reads (it reads `file_extension`): without this the SVGs are saved as `.raw`.
pytest_textual_snapshot.SVGImageExtension.file_extension = "svg"


def pytest_configure(config: pytest.Config) -> None:
    """The HTML report of mismatched snapshots goes to the temp dir, not the checkout."""
    if config.getoption("--snapshot-report") == "snapshot_report.html":
        config.option.snapshot_report = str(
            Path(tempfile.gettempdir()) / "bookiji-snapshot-report.html"
        )


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No stray ./bookiji.toml or BOOKIJI_* settings."""
    monkeypatch.chdir(tmp_path)
    for name in ("BOOKIJI_CONFIG", "BOOKIJI_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def now_clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def container(database_url: str, now_clock: ManualClock) -> Iterator[Container]:
    built = build(Settings(database_url=database_url), clock=now_clock)
    yield built
    built.close()


@pytest.fixture
def seeded(container: Container) -> Seeded:
    return seed(container.db)
