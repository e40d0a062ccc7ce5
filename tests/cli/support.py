"""Running the `bookiji` CLI in-process from tests, and writing vendors files for it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from bookiji.cli.main import main
from bookiji.domain.timeutil import format_instant

DAY = datetime.combine(datetime.now(UTC).date() + timedelta(days=2), time(0), tzinfo=UTC)
WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def at(hhmm: str) -> str:
    """'10:30' on the test day, as RFC 3339 UTC the way the CLI prints it."""
    hours, minutes = (int(part) for part in hhmm.split(":"))
    return format_instant(DAY + timedelta(hours=hours, minutes=minutes)) or ""


def vendor_toml(vendor_id: str, hours: str = "00:00-24:00", **fields: Any) -> str:
    """One [[vendors]] table: open all week, no notice, zero buffers unless given."""
    values: dict[str, Any] = {
        "id": vendor_id,
        "name": vendor_id.replace("-", " ").title(),
        "timezone": "UTC",
        "slot_minutes": 60,
        "slot_interval_minutes": 15,
        "min_notice_minutes": 0,
        "max_advance_days": 365,
        "currency": "eur",
        "price": 5000,
        "deposit": 1000,
        **fields,
    }
    lines = ["[[vendors]]", *(f"{key} = {json.dumps(value)}" for key, value in values.items())]
    lines += ["[vendors.hours]", *(f'{day} = ["{hours}"]' for day in WEEK)]
    return "\n".join(lines) + "\n"


def write_vendors(path: Path, *tables: str) -> Path:
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def error(self) -> str:
        """The single error line on stderr; fails if there are more lines or a traceback."""
        lines = self.err.splitlines()
        assert len(lines) == 1, f"expected one stderr line, got {self.err!r}"
        assert lines[0].startswith("error: ") and "Traceback" not in self.err
        return lines[0]


class Cli:
    """`cli("vendors", "list", expect=0)` runs `bookiji [--database URL] vendors list`."""

    def __init__(self, capsys: pytest.CaptureFixture[str], database_url: str | None) -> None:
        self.capsys = capsys
        self.database_url = database_url

    def __call__(self, *args: str | Path, expect: int | None = None) -> Result:
        argv = [str(a) for a in args]
        if self.database_url is not None:
            argv = ["--database", self.database_url, *argv]
        self.capsys.readouterr()
        code = main(argv)
        captured = self.capsys.readouterr()
        if expect is not None:
            assert code == expect, f"bookiji {' '.join(argv)} -> {code}: {captured.err}"
        return Result(code, captured.out, captured.err)

    def create(self, start: str, end: str, *extra: str, vendor: str = "studio-a") -> Result:
        return self(
            "reservations", "create", "--vendor", vendor, "--start", at(start), "--end", at(end),
            "--requester", "alice", *extra,
        )  # fmt: skip

    def hold(self, start: str, end: str, *extra: str, vendor: str = "studio-a") -> dict[str, Any]:
        """Create a reservation and return its document."""
        result = self.create(start, end, *extra, "--json", vendor=vendor)
        assert result.code == 0, result.err
        return result.json()

    def show(self, reservation_id: str) -> dict[str, Any]:
        return self("reservations", "show", reservation_id, "--json", expect=0).json()

    def ids(self, *args: str) -> list[str]:
        rows = self("reservations", "list", *args, "--json", expect=0).json()
        return [row["reservationId"] for row in rows]
