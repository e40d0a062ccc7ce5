"""How listings fit a terminal: ids whole while the other columns can still be read."""

from __future__ import annotations

import pytest
from rich.console import Console

from bookiji.cli import output

EVENT, RESERVATION = "evt_ceecd34452ab403f6a0685d1", "res_ba0ac0740540fb2440935bfa"
COLUMNS = ("event", "type", "partner", "reservation", "status", "attempts", "next", "last")
ROW = (EVENT, "reservation.failed_vendor_timeout", "acme", RESERVATION, "delivered", "1", "", "204")


def rendered(width: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    terminal = Console(width=width, force_terminal=True, color_system=None)
    monkeypatch.setattr(output, "console", terminal)
    table = output.listing("deliveries", COLUMNS, [ROW], keys=("event", "reservation"))
    with terminal.capture() as captured:
        terminal.print(table)
    return captured.get().splitlines()


def test_every_key_stays_whole_when_the_terminal_has_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = rendered(120, monkeypatch)
    assert any(EVENT in line and RESERVATION in line for line in lines)
    assert max(len(line) for line in lines) <= 120


def test_on_a_narrow_terminal_a_later_key_folds_instead_of_crushing_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """80 columns hold both ids only by squeezing the six other columns to nothing (their
    headers vanished): the first id stays whole, the reservation id folds like any cell."""
    lines = rendered(80, monkeypatch)
    assert max(len(line) for line in lines) <= 80
    assert any(EVENT in line for line in lines)
    header = " ".join(lines[:6])
    assert all(name[:3] in header for name in ("type", "status", "last"))
    assert "".join(line.split("│")[4].strip() for line in lines if line.startswith("│")) == (
        RESERVATION
    )
