"""`bookiji tui`: the command starts the dashboard on the database it is given, and refuses a
bad one the way every command does (one red line, non-zero exit, no traceback)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from bookiji.store.database import normalize_url, redact
from bookiji.tui.app import DashboardApp
from tests.cli.support import Cli
from tests.tui.seed import IDS, Seeded

SCRIPT = shutil.which("bookiji", path=str(Path(sys.executable).parent)) or shutil.which("bookiji")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys, None)


def test_help_shows_the_database_option_and_where_the_keys_are(cli: Cli) -> None:
    result = cli("tui", "--help", expect=0)
    assert "--database URL" in result.out
    assert "press ? for the keys" in result.out


@pytest.mark.parametrize(
    ("url", "code", "says"),
    [
        ("mysql://db/bookiji", 2, "database_url must be a sqlite:/// or postgresql:// URL"),
        ("postgresql://support:s3cret@127.0.0.1:1/none", 1, "database error (OperationalError)"),
    ],
    ids=["unsupported", "unreachable"],
)
def test_a_bad_database_url_is_one_red_line(cli: Cli, url: str, code: int, says: str) -> None:
    result = cli("tui", "--database", url)
    assert result.code == code
    assert says in result.error and "s3cret" not in result.err
    assert result.out == ""


def test_a_database_without_the_schema_gets_the_usual_hint(cli: Cli, tmp_path: Path) -> None:
    result = cli("tui", "--database", f"sqlite:///{tmp_path / 'new.db'}")
    assert result.code == 1 and "run 'bookiji init'" in result.error


def test_the_dashboard_runs_on_the_database_given(
    cli: Cli, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[DashboardApp] = []
    monkeypatch.setattr(DashboardApp, "run", lambda self, *a, **k: started.append(self))
    cli("tui", "--database", database_url, expect=0)
    (app,) = started
    assert app.container.db.url == normalize_url(database_url)
    assert app.sub_title == redact(normalize_url(database_url))  # never a password


def _read_until(fd: int, needles: list[bytes], seen: bytearray, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(needle in seen for needle in needles):
        left = deadline - time.monotonic()
        assert left > 0, f"never drew {needles!r}; got {bytes(seen[-2000:])!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen.extend(os.read(fd, 65536))
            except OSError:  # the process closed the terminal
                break


@pytest.mark.skipif(SCRIPT is None, reason="the bookiji console script is not installed")
def test_in_a_real_terminal_it_draws_the_dashboard_and_q_quits(
    database_url: str, seeded: Seeded
) -> None:
    assert SCRIPT is not None
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [SCRIPT, "tui", "--database", database_url],
        stdin=terminal, stdout=terminal, stderr=terminal, env=env, start_new_session=True,
    )  # fmt: skip
    os.close(terminal)
    seen = bytearray()
    try:
        _read_until(main, [b"Bookiji support", b"Live feed", IDS.held.encode()], seen, 30)
        os.write(main, b"q")
        deadline = time.monotonic() + 15
        while proc.poll() is None:  # keep draining the terminal so the app can exit
            assert time.monotonic() < deadline, "q did not quit"
            if select.select([main], [], [], 0.1)[0]:
                try:
                    seen.extend(os.read(main, 65536))
                except OSError:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        assert proc.returncode == 0, bytes(seen[-2000:])
        assert b"Traceback" not in seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
