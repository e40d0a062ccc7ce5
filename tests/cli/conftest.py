"""Every CLI test runs in its own directory with no BOOKIJI_* settings leaking in."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No stray ./bookiji.toml or BOOKIJI_* settings; output as when piped (no COLUMNS)."""
    monkeypatch.chdir(tmp_path)
    for name in ("BOOKIJI_CONFIG", "BOOKIJI_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
