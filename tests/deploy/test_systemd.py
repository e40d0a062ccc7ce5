"""The systemd units in deploy/systemd: the directives the operator guide promises, a stop
timeout longer than the daemon's drain, and (where systemd-analyze exists) a clean
`systemd-analyze verify` with ExecStart pointed at this checkout's `bookiji`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bookiji.config import Settings

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
INSTALLED = "/opt/bookiji/.venv/bin/bookiji"
CONFIG = "--config /etc/bookiji/bookiji.toml"


def directives(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_daemon_unit() -> None:
    unit = directives("bookiji.service")
    expected = {
        "User": "bookiji",
        "EnvironmentFile": "/etc/bookiji/env",
        "ExecStart": f"{INSTALLED} {CONFIG} daemon",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": "15",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/bookiji",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }
    assert {key: unit.get(key, [None])[-1] for key in expected} == expected
    # systemd must not kill a daemon that is still draining within its grace period.
    assert int(unit["TimeoutStopSec"][0]) > Settings().daemon.shutdown_grace_seconds
    # Bad settings (exit 2) would fail the same way on every restart.
    assert unit["RestartPreventExitStatus"] == ["2"]


def test_reconcile_service_and_timer() -> None:
    service = directives("bookiji-reconcile.service")
    assert service["Type"] == ["oneshot"]
    assert service["User"] == ["bookiji"]
    assert service["EnvironmentFile"] == ["/etc/bookiji/env"]
    assert service["ExecStart"] == [f"{INSTALLED} {CONFIG} reconcile --once"]
    assert service["ProtectSystem"] == ["strict"] and service["NoNewPrivileges"] == ["yes"]
    timer = directives("bookiji-reconcile.timer")
    assert timer["Unit"] == ["bookiji-reconcile.service"]
    assert timer["OnUnitActiveSec"] == ["1min"] and timer["WantedBy"] == ["timers.target"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    script = str(Path(sys.executable).parent / "bookiji")
    for unit in UNITS.iterdir():
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, script))
    names = sorted(str(p) for p in tmp_path.iterdir())
    result = subprocess.run(
        [analyze, "verify", *names], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
