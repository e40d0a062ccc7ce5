"""The dashboard's tests share a container (every service, as `bookiji` wires them) on a
fresh database per backend, a clock that moves only when told, and the seeded day."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bookiji.bootstrap import Container, build
from bookiji.config import Settings
from bookiji.services.clock import ManualClock
from tests.tui.seed import NOW, Seeded, seed


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
