"""The `bookiji` CLI as an operator uses it, on SQLite and Postgres.

Commands run in-process through `bookiji.cli.main.main` (exit code returned, output captured);
a few run the installed console script to prove the real process exit codes. The CLI reads the
system clock, so slots sit on the day after tomorrow (UTC) and the test vendors are open
around the clock with no minimum notice.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bookiji.domain.states import StageTTLs
from bookiji.domain.timeutil import format_instant
from bookiji.services.clock import ManualClock
from bookiji.services.documents import load_reservation_document
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.store import database as database_module
from bookiji.store import migrate
from bookiji.store.database import Database, sqlite_file
from tests.cli.support import DAY, WEEK, Cli, Result, at, vendor_toml, write_vendors

AWAITING = "AWAITING_VENDOR_CONFIRMATION"  # where a new hold rests once the vendor is asked


def history(document: dict[str, Any]) -> list[str]:
    return [step["to"] for step in document["stateHistory"]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Cli:
    """The CLI without --database: settings come from --config or ./bookiji.toml."""
    return Cli(capsys, None)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], database_url: str) -> Cli:
    """The CLI against a fresh database at head."""
    return Cli(capsys, database_url)


@pytest.fixture
def vendors_file(tmp_path: Path) -> Path:
    """studio-a: zero buffers; studio-b: 15 minutes of buffer after each slot."""
    return write_vendors(
        tmp_path / "vendors.toml",
        vendor_toml("studio-a"),
        vendor_toml("studio-b", buffer_after_minutes=15, currency="gbp", price=7000),
    )


@pytest.fixture
def ready(cli: Cli, vendors_file: Path) -> Cli:
    """The CLI with both test vendors imported."""
    cli("vendors", "import", vendors_file, expect=0)
    return cli


# -- init and the schema ---------------------------------------------------------------------


def test_init_writes_config_and_brings_the_database_to_head(
    run: Cli, empty_database_url: str, tmp_path: Path
) -> None:
    first = run("--database", empty_database_url, "init", "--json", expect=0).json()
    assert first["configWritten"] is True and first["from"] is None and first["to"]
    config = tomllib.loads((tmp_path / "bookiji.toml").read_text())
    assert config["database_url"] == empty_database_url

    # Later commands find the database through ./bookiji.toml alone.
    current = run("db", "current", "--json", expect=0).json()
    assert current == {**current, "current": first["to"], "head": first["to"], "atHead": True}
    assert run("vendors", "list", "--json", expect=0).json() == []

    again = run("init", "--json", expect=0).json()
    assert again["configWritten"] is False and again["from"] == again["to"] == first["to"]
    assert "kept as it was" in run("init", expect=0).out


def test_an_unmigrated_database_is_refused_with_a_hint_to_init(
    run: Cli, empty_database_url: str
) -> None:
    cli = Cli(run.capsys, empty_database_url)
    for command in (
        ["vendors", "list"],
        ["reservations", "list"],
        ["reservations", "show", "res_x"],
        ["reconcile", "--once"],
    ):
        result = cli(*command, expect=1)
        assert "run 'bookiji init'" in result.error and "schema_not_ready" in result.error
    current = cli("db", "current", "--json", expect=0).json()
    assert current["current"] is None and current["atHead"] is False
    upgraded = cli("db", "upgrade", "--json", expect=0).json()
    assert upgraded["from"] is None and upgraded["to"] == current["head"]
    assert cli("db", "current", "--json", expect=0).json()["atHead"] is True
    assert cli("vendors", "list", "--json", expect=0).json() == []


def test_a_mistyped_sqlite_path_is_refused_and_nothing_is_created(run: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "bookiji.db"
    for command in (["vendors", "list"], ["reservations", "list", "--json"], ["daemon"],
                    ["db", "current"]):  # fmt: skip
        error = run("--database", f"sqlite:///{missing}", *command, expect=1).error
        assert f"no database file at {missing.resolve()}: run 'bookiji init'" in error
    assert not missing.parent.exists()
    # `init` is how a database file comes to be.
    run("--database", f"sqlite:///{missing}", "init", expect=0)
    assert (
        run("--database", f"sqlite:///{missing}", "vendors", "list", "--json", expect=0).json()
        == []
    )


def test_a_bad_settings_file_is_a_usage_error(run: Cli, tmp_path: Path) -> None:
    assert "config file not found" in run("--config", "nowhere.toml", "db", "current").error
    bad = tmp_path / "bad.toml"
    bad.write_text('database_url = "mysql://db/bookiji"\n')
    result = run("--config", bad, "vendors", "list", expect=2)
    assert "bad.toml" in result.error and "database_url" in result.error


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://u:s3cret@h:notaport/db", "not a valid URL"),
        ("postgresql://u:s3cret@[::1/db", "not a valid URL"),
        ("postgresql://u:s3cret@h:70000/db", "the port must be 1-65535"),
        ("sqlite://", "a SQLite URL names a file"),
        ("sqlite:///", "a SQLite URL names a file"),
        ("postgresql+psycopg2://u:s3cret@h/db", "reached through psycopg 3"),
        ("", "database_url must be a sqlite:/// or postgresql:// URL"),
    ],
    ids=["port-word", "open-bracket", "port-range", "in-memory", "no-path", "psycopg2", "empty"],
)
def test_a_database_url_that_cannot_work_is_one_line_before_any_connection(
    run: Cli, tmp_path: Path, url: str, says: str
) -> None:
    """These were driver tracebacks (exit 1); an empty --database was ignored, and the
    command ran on ./bookiji.toml's database instead."""
    (tmp_path / "bookiji.toml").write_text(f'database_url = "sqlite:///{tmp_path}/b.db"\n')
    result = run("--database", url, "vendors", "list", "--json", expect=2)
    assert result.json()["error"]["code"] == "invalid_settings"
    assert says in result.error and "s3cret" not in result.err + result.out
    assert not (tmp_path / "b.db").exists()


def test_empty_options_are_refused_not_taken_as_left_out(run: Cli, tmp_path: Path) -> None:
    (tmp_path / "bookiji.toml").write_text(f'database_url = "sqlite:///{tmp_path}/b.db"\n')
    assert "--config: the path is empty" in run("--config", "", "vendors", "list", expect=2).error
    assert "--host: the address is empty" in run("daemon", "--host", " ", expect=2).error


def test_a_file_that_is_not_a_database_is_named_as_such_and_not_retryable(
    run: Cli, tmp_path: Path
) -> None:
    """It was "database error (DatabaseError); check the URL and that the server is
    reachable", marked retryable: the real cause hidden, and a script retrying forever."""
    (tmp_path / "notes.db").write_text("hello\n")
    url = f"sqlite:///{tmp_path / 'notes.db'}"
    result = run("--database", url, "vendors", "list", "--json", expect=1)
    assert result.json()["error"] == {
        "code": "database_unusable",
        "message": "the SQLite database cannot be used: file is not a database",
        "retryable": False,
        "details": {},
    }
    assert (tmp_path / "notes.db").read_text() == "hello\n"


def test_a_bad_setting_names_where_it_came_from_never_its_value(
    run: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--database was blamed on bookiji.toml, and a variable on "EnvSettingsSource"."""
    (tmp_path / "bookiji.toml").write_text(f'database_url = "sqlite:///{tmp_path}/b.db"\n')
    given = run("--database", "bogus://secret@x", "vendors", "list", expect=2).error
    assert "--database: database_url must be a sqlite:/// or postgresql:// URL" in given
    assert "bookiji.toml" not in given and "secret" not in given
    monkeypatch.setenv("BOOKIJI_TTL", "notjson")
    env = run("vendors", "list", expect=2).error
    assert "BOOKIJI_TTL: a table in one variable must be a JSON object" in env
    for wrong in ("bookiji.toml", "EnvSettingsSource", "notjson"):
        assert wrong not in env
    monkeypatch.setenv("BOOKIJI_TTL", '{"hold_minutes": 0}')
    assert "BOOKIJI_TTL: hold_minutes: " in run("vendors", "list", expect=2).error


def test_init_writes_an_absolute_database_url(
    run: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative one named another database once a command ran from elsewhere."""
    run("--config", "sub/b.toml", "init", expect=0)
    config = tomllib.loads((tmp_path / "sub" / "b.toml").read_text())
    assert config["database_url"] == f"sqlite:///{tmp_path.resolve() / 'bookiji.db'}"
    monkeypatch.chdir(tmp_path / "sub")
    assert run("--config", "b.toml", "db", "current", "--json", expect=0).json()["atHead"]


def test_a_failed_init_names_the_path_and_leaves_nothing_behind(
    run: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BOOKIJI_PII_KEYS")  # so init would write a key file
    (tmp_path / "taken").write_text("a file, not a directory")
    database = tmp_path / "taken" / "x.db"
    refused = run("--database", f"sqlite:///{database}", "init", expect=2)
    assert f"cannot create the database {database}: " in refused.error
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    envelope = run("--database", f"sqlite:///{database}", "init", "--json", expect=2).json()
    assert envelope["error"]["code"] == "invalid_settings"

    # A failure after the settings were written takes them back too.
    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "bookiji.db"))

    monkeypatch.setattr(migrate, "upgrade", disk_full)
    failed = run("init", expect=1)
    assert "No space left on device" in failed.error and "bookiji.db" in failed.error
    assert not (tmp_path / "bookiji.toml").exists()
    assert not (tmp_path / "bookiji-pii.keys").exists()
    # And the directories it made for them: a retry finds the tree as it was.
    run("--config", "new/dir/x.toml", "--database", f"sqlite:///{tmp_path}/db/sub/x.db",
        "init", expect=1)  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["taken"]


# -- the schema and the database -------------------------------------------------------------


def test_db_upgrade_refuses_an_unknown_revision_and_says_when_nothing_applied(
    cli: Cli, run: Cli, tmp_path: Path
) -> None:
    head = cli("db", "current", "--json", expect=0).json()["head"]
    bogus = cli("db", "upgrade", "bogus", expect=2)
    assert "no migration 'bogus'" in bogus.error and bogus.out == ""
    assert cli("db", "upgrade", "bogus", "--json", expect=2).json()["error"]["details"] == {
        "revision": "bogus"
    }
    older = cli("db", "upgrade", "0001", expect=0).out
    assert f"at {head}, already past 0001; nothing applied" in older
    assert "migrations only go forward" in older
    assert f"already at {head}; nothing to apply" in cli("db", "upgrade", expect=0).out
    assert cli("db", "current", "--json", expect=0).json()["current"] == head
    # Checked before a SQLite file is made.
    missing = tmp_path / "new" / "x.db"
    run("--database", f"sqlite:///{missing}", "db", "upgrade", "bogus", expect=2)
    assert not missing.parent.exists()


def test_db_upgrade_step_by_step(run: Cli, empty_database_url: str) -> None:
    cli = Cli(run.capsys, empty_database_url)
    assert "empty -> 0005" in cli("db", "upgrade", "0005", expect=0).out
    head = cli("db", "current", "--json", expect=0).json()["head"]
    assert f"0005 -> {head}" in cli("db", "upgrade", expect=0).out


def test_reads_never_wait_for_a_writer_and_a_blocked_write_says_locked(
    ready: Cli, database_url: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schema check ran a write-mode BEGIN: every read queued behind any writer, then
    failed as if the database were unreachable."""
    if backend != "sqlite":
        pytest.skip("SQLite's write lock")
    monkeypatch.setattr(database_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    path = sqlite_file(database_url)
    assert path is not None
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process writing
    try:
        assert ready("reservations", "list", "--json", expect=0).json() == []
        assert "2 vendors" in ready("vendors", "list", expect=0).out
        blocked = ready.create("10:00", "11:00", "--json")
        assert blocked.code == 1
        assert "the database is locked by another writer" in blocked.error
        assert blocked.json()["error"]["code"] == "service_unavailable"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert ready.ids() == []


# -- vendors ---------------------------------------------------------------------------------


def test_vendors_import_then_list_and_show(cli: Cli, vendors_file: Path) -> None:
    report = cli("vendors", "import", vendors_file, "--json", expect=0).json()
    assert report == {
        "created": ["studio-a", "studio-b"],
        "updated": [],
        "unchanged": [],
        "calendarsAdded": 0,
    }
    listed = cli("vendors", "list", "--json", expect=0).json()
    assert [v["vendorId"] for v in listed] == ["studio-a", "studio-b"]
    b = listed[1]
    assert (b["timezone"], b["currency"], b["price"], b["deposit"]) == ("UTC", "gbp", 7000, 1000)
    assert (b["bufferBeforeMinutes"], b["bufferAfterMinutes"], b["maxAdvanceDays"]) == (0, 15, 365)

    table = cli("vendors", "list", expect=0).out
    assert "2 vendors" in table and "studio-a" in table and "7000 gbp" in table

    shown = cli("vendors", "show", "studio-b", "--json", expect=0).json()
    assert shown == {**b, "calendars": []}
    assert shown["hours"] == {day: ["00:00-24:00"] for day in WEEK}
    text = cli("vendors", "show", "studio-b", expect=0).out
    assert "Studio B (studio-b)" in text and "buffers 0 before / 15 after" in text
    assert "not_found" in cli("vendors", "show", "nobody", expect=1).error


def test_reimport_reports_created_updated_and_unchanged(cli: Cli, tmp_path: Path) -> None:
    path = write_vendors(tmp_path / "v.toml", vendor_toml("studio-a"), vendor_toml("studio-b"))
    cli("vendors", "import", path, expect=0)
    write_vendors(
        path, vendor_toml("studio-a"), vendor_toml("studio-b", price=9900), vendor_toml("studio-c")
    )
    report = cli("vendors", "import", path, "--json", expect=0).json()
    assert (report["created"], report["updated"], report["unchanged"]) == (
        ["studio-c"],
        ["studio-b"],
        ["studio-a"],
    )
    assert cli("vendors", "show", "studio-b", "--json", expect=0).json()["price"] == 9900
    text = cli("vendors", "import", path, expect=0).out
    assert "0 created, 0 updated, 3 unchanged" in text


@pytest.mark.parametrize(
    ("fields", "field", "detail"),
    [
        ({"hours": "17:00-09:00"}, "hours", "17:00-09:00"),
        ({"timezone": "Mars/Olympus"}, "timezone", "Mars/Olympus"),
    ],
)
def test_an_invalid_vendor_file_imports_nothing(
    cli: Cli, tmp_path: Path, fields: dict[str, str], field: str, detail: str
) -> None:
    path = write_vendors(
        tmp_path / "broken.toml", vendor_toml("studio-ok"), vendor_toml("studio-bad", **fields)
    )
    error = cli("vendors", "import", path, expect=2).error
    for part in ("broken.toml", "vendor 'studio-bad'", field, detail, "invalid_vendor_file"):
        assert part in error
    assert cli("vendors", "list", "--json", expect=0).json() == []  # not even studio-ok


def test_json_lists_every_problem_of_an_invalid_vendor_file(cli: Cli, tmp_path: Path) -> None:
    path = write_vendors(
        tmp_path / "broken.toml",
        vendor_toml("studio-a", timezone="Mars/Olympus", price=12.5),
        vendor_toml("studio-b", hours="17:00-09:00"),
    )
    people = cli("vendors", "import", path, expect=2)
    assert people.out == "" and len(people.err.strip().splitlines()) == 1
    # the timezone, the price, and the hours of each of studio-b's seven days
    assert "(and 8 more problems; --json lists them all)" in people.error
    script = cli("vendors", "import", path, "--json", expect=2)
    error = script.json()["error"]
    assert error["code"] == "invalid_vendor_file" and error["retryable"] is False
    found = {(p["vendor"], p["field"]) for p in error["details"]["problems"]}
    days = {
        ("studio-b", f"hours.{day}[0]") for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    }
    assert found == {("studio-a", "timezone"), ("studio-a", "price"), *days}
    assert len(script.err.strip().splitlines()) == 1  # people still read one line
    assert cli("vendors", "list", "--json", expect=0).json() == []


# -- reservations ----------------------------------------------------------------------------


def test_create_prints_the_reservation(ready: Cli) -> None:
    before = datetime.now(UTC)
    text = ready.create("10:00", "11:00", "--metadata", '{"note": "window seat"}')
    after = datetime.now(UTC)
    assert text.code == 0 and text.out.startswith("held: res_")
    reservation_id = text.out.split()[1]
    assert f"{reservation_id} AWAITING_VENDOR_CONFIRMATION" in text.out and "5000 eur" in text.out
    # No channel configured: the vendor is asked on the console, with the operator's commands.
    assert f"bookiji reservations confirm {reservation_id}" in text.err

    doc = ready.show(reservation_id)
    assert (doc["state"], doc["vendorId"], doc["requesterId"]) == (
        "AWAITING_VENDOR_CONFIRMATION",
        "studio-a",
        "alice",
    )
    assert (doc["slotStartTime"], doc["slotEndTime"]) == (at("10:00"), at("11:00"))
    assert doc["metadata"] == {"note": "window seat"} and doc["idempotencyKey"] is None
    assert doc["payment"]["currency"] == "eur"
    assert doc["payment"]["vendorDeposit"]["amount"] == 1000
    assert doc["payment"]["requesterPayment"]["amount"] == 5000
    # The hold lasts the default 10 minutes, and expiresAt says the same.
    deadline = datetime.fromisoformat(doc["stateDeadline"])
    assert before + timedelta(minutes=10) <= deadline <= after + timedelta(minutes=10)
    assert doc["expiresAt"] == doc["stateDeadline"] and doc["stateDeadline"].endswith("Z")
    assert [(s["from"], s["to"], s["actor"]) for s in doc["stateHistory"]] == [
        (None, "INTENT_CREATED", "operator:cli"),
        ("INTENT_CREATED", "HELD", "operator:cli"),
        ("HELD", "AWAITING_VENDOR_CONFIRMATION", "system:notify"),
    ]


def test_show_json_is_the_service_document(ready: Cli, db: Database) -> None:
    reservation_id = ready.hold("10:00", "11:00", "--metadata", '{"n": 1}')["reservationId"]
    ready("reservations", "confirm", reservation_id, expect=0)
    shown = ready("reservations", "show", reservation_id, "--json", expect=0).json()
    assert shown == load_reservation_document(db, reservation_id)
    assert shown["state"] == "CONFIRMED_BY_VENDOR"


def test_an_overlapping_hold_is_refused(ready: Cli) -> None:
    first = ready.hold("10:00", "11:00")
    refused = ready.create("10:30", "11:30")
    assert refused.code == 1 and "slot_unavailable" in refused.error
    assert ready.ids() == [first["reservationId"]]


def test_adjacent_slots_without_buffers_both_hold(ready: Cli) -> None:
    first = ready.hold("10:00", "11:00")
    second = ready.hold("11:00", "12:00")
    assert first["blockEndTime"] == second["blockStartTime"] == at("11:00")
    assert {first["state"], second["state"]} == {"AWAITING_VENDOR_CONFIRMATION"}


def test_a_buffer_keeps_the_next_slot_free(ready: Cli) -> None:
    first = ready.hold("10:00", "11:00", vendor="studio-b")
    assert first["blockEndTime"] == at("11:15")
    assert "slot_unavailable" in ready.create("11:00", "12:00", vendor="studio-b").error
    assert ready.hold("11:15", "12:15", vendor="studio-b")["state"] == AWAITING


def test_idempotency_key_replays_and_refuses_a_different_body(ready: Cli) -> None:
    first = ready.hold("10:00", "11:00", "--idempotency-key", "k-1")
    replay = ready.create("10:00", "11:00", "--idempotency-key", "k-1")
    assert replay.code == 0 and f"replayed (same idempotency key): {first['reservationId']}" in (
        replay.out
    )
    again = ready.hold("10:00", "11:00", "--idempotency-key", "k-1")
    assert again["reservationId"] == first["reservationId"]
    assert again["idempotencyKey"] == "k-1"
    refused = ready.create("13:00", "14:00", "--idempotency-key", "k-1")
    assert refused.code == 1 and "idempotency_key_reused" in refused.error
    assert ready.ids() == [first["reservationId"]]


def test_list_filters_by_state_and_vendor_newest_first(ready: Cli) -> None:
    r1 = ready.hold("10:00", "11:00")["reservationId"]
    r2 = ready.hold("12:00", "13:00")["reservationId"]
    r3 = ready.hold("10:00", "11:00", vendor="studio-b")["reservationId"]
    ready("reservations", "confirm", r2, expect=0)

    assert ready.ids() == [r3, r2, r1]
    assert ready.ids("--state", AWAITING) == [r3, r1]
    assert ready.ids("--state", "confirmed_by_vendor") == [r2]
    assert ready.ids("--vendor", "studio-b") == [r3]
    assert ready.ids("--vendor", "studio-a", "--state", AWAITING) == [r1]
    assert ready.ids("--limit", "2") == [r3, r2]
    assert ready.ids("--vendor", "nobody") == []
    rows = ready("reservations", "list", "--json", expect=0).json()
    assert rows[0]["slotStartTime"] == at("10:00") and rows[0]["vendorId"] == "studio-b"

    table = ready("reservations", "list", "--state", AWAITING, expect=0).out
    assert "2 reservations" in table and r1 in table and r3 in table and r2 not in table
    refused = ready("reservations", "list", "--state", "soon", expect=2)
    assert "unknown state 'soon'" in refused.error


def test_listings_never_cut_an_id_short_on_a_narrow_terminal(
    ready: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator copies ids from a table into the next command: on an 80-column
    terminal cells wrap, but no id is shortened and no cell ends in an ellipsis."""
    held = ready.hold("10:00", "11:00")["reservationId"]
    ready("partners", "add", "acme", "--name", "Acme", expect=0)
    key_id = ready("apikeys", "create", "--partner", "acme", "--json", expect=0).json()["id"]
    monkeypatch.setenv("COLUMNS", "80")
    for args, whole in (
        (("reservations", "list"), held),
        (("apikeys", "list"), key_id),
        (("vendors", "list"), "studio-a"),
        (("reservations", "show", held), "AWAITING_VEN"),  # the history table
    ):
        out = ready(*args, expect=0).out
        table = [line for line in out.splitlines() if line[:1] in "┏┃┡│└"]
        assert table and max(len(line) for line in table) <= 80, args
        assert whole in out, args
        assert "…" not in out, args


def test_counts_read_right_for_one(ready: Cli) -> None:
    held = ready.hold("10:00", "11:00")
    assert "1 reservation\n" in ready("reservations", "list", expect=0).out
    erased = ready("requesters", "forget", held["requesterId"], "--yes", expect=0).out
    assert erased.startswith("erased: 1 reservation, 0 bookings, 0 stored answers;")


def test_a_piped_listing_keeps_each_row_on_one_line(ready: Cli) -> None:
    held = ready.hold("10:00", "11:00")["reservationId"]
    (row,) = [line for line in ready("reservations", "list", expect=0).out.splitlines()
              if held in line]  # fmt: skip
    # Times to the second, pasteable into --start/--end.
    assert AWAITING in row and "studio-a" in row and at("10:00") in row


def test_confirm_then_cancel_walks_the_history(ready: Cli) -> None:
    rid = ready.hold("10:00", "11:00")["reservationId"]
    assert f"confirmed: {rid}" in ready("reservations", "confirm", rid, expect=0).out
    confirmed = ready.show(rid)
    assert history(confirmed) == [
        "INTENT_CREATED",
        "HELD",
        "AWAITING_VENDOR_CONFIRMATION",
        "CONFIRMED_BY_VENDOR",
    ]
    assert f"already confirmed: {rid}" in ready("reservations", "confirm", rid, expect=0).out
    assert ready.show(rid)["stateHistory"] == confirmed["stateHistory"]

    cancelled = ready(
        "reservations", "cancel", rid, "--reason", "requester changed plans", "--json", expect=0
    ).json()
    assert cancelled["state"] == "CANCELLED"
    last = cancelled["stateHistory"][-1]
    assert (last["from"], last["to"], last["reason"], last["actor"]) == (
        "CONFIRMED_BY_VENDOR",
        "CANCELLED",
        "cancelled",
        "operator:cli",
    )
    # The operator's words are the cancel note (sealed, erasable), not the log's reason.
    assert cancelled["cancelNote"] == "requester changed plans"
    assert "cancel note: requester changed plans" in ready("reservations", "show", rid).out
    # Cancelling again changes nothing and is not an error.
    again = ready("reservations", "cancel", rid, expect=0)
    assert f"already cancelled: {rid}" in again.out
    assert ready.show(rid)["stateHistory"] == cancelled["stateHistory"]
    # The slot is free again.
    assert ready.hold("10:00", "11:00")["state"] == AWAITING


def test_decline_cancels_and_frees_the_slot(ready: Cli) -> None:
    rid = ready.hold("10:00", "11:00")["reservationId"]
    declined = ready("reservations", "decline", rid, "--json", expect=0).json()
    assert declined["state"] == "CANCELLED"
    last = declined["stateHistory"][-1]
    assert (last["from"], last["reason"], last["details"]) == (
        AWAITING,
        "declined by vendor",
        {"decision": "decline"},
    )
    assert ready.hold("10:00", "11:00")["state"] == AWAITING


def test_decline_after_confirm_is_an_invalid_transition(ready: Cli) -> None:
    rid = ready.hold("10:00", "11:00")["reservationId"]
    ready("reservations", "confirm", rid, expect=0)
    refused = ready("reservations", "decline", rid, expect=1)
    assert "invalid_transition" in refused.error and "CONFIRMED_BY_VENDOR" in refused.error
    assert refused.out == ""
    assert ready.show(rid)["state"] == "CONFIRMED_BY_VENDOR"


@pytest.mark.parametrize("action", ["show", "confirm", "decline", "cancel"])
def test_an_unknown_reservation_is_not_found(ready: Cli, action: str) -> None:
    error = ready("reservations", action, "res_missing", expect=1).error
    assert "res_missing" in error and "not_found" in error


def test_a_refusal_with_json_prints_the_error_envelope(ready: Cli) -> None:
    """Scripts read the same envelope as API partners, on stdout, with the same exit code."""
    refused = ready("reservations", "show", "res_missing", "--json", expect=1)
    assert refused.json() == {
        "error": {
            "code": "not_found",
            "message": "no reservation 'res_missing'",
            "retryable": False,
            "details": {"reservationId": "res_missing"},
        }
    }
    assert "not_found" in refused.error
    assert ready("reservations", "show", "res_missing", expect=1).out == ""


def test_an_unknown_vendor_is_not_found(ready: Cli) -> None:
    refused = ready.create("10:00", "11:00", vendor="nobody")
    assert refused.code == 1 and "unknown vendor 'nobody'" in refused.error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "tomorrow", "--end", at("11:00")], "--start"),
        (["--start", at("10:00")[:-1], "--end", at("11:00")], "no UTC offset"),
        (["--start", at("10:00"), "--end", "11:00"], "--end"),
        (["--start", at("11:00"), "--end", at("10:00")], "slotEndTime must be after"),
        (["--start", at("10:00"), "--end", at("11:00"), "--metadata", "{oops"], "--metadata"),
        (["--start", at("10:00"), "--end", at("11:00"), "--metadata", "[1]"], "JSON object"),
        (["--start", at("10:00"), "--end", at("11:00"), "--colour", "red"], "--colour"),
        (["--start", at("10:00")], "--end"),
        (["--start", "9999-12-31T23:00:00Z", "--end", "9999-12-31T23:30:00Z"], "out of range"),
    ],
    ids=[
        "word-time", "naive-time", "bare-end", "end-before-start",
        "metadata-not-json", "metadata-not-object", "unknown-option", "missing-end",
        "out-of-range",
    ],
)  # fmt: skip
def test_bad_input_is_a_usage_error_and_holds_nothing(
    ready: Cli, args: list[str], message: str
) -> None:
    result = ready(
        "reservations", "create", "--vendor", "studio-a", "--requester", "alice", *args, expect=2
    )
    assert message in result.error and result.out == ""
    assert ready.ids() == []


def test_control_characters_never_reach_the_tables(ready: Cli, tmp_path: Path) -> None:
    """A requester id, a partner name or a vendor name with a line break or an escape
    sequence was stored, then printed raw: colours and cursor moves in the operator's
    terminal, and a piped table row split in two."""
    escape = "a\x1b[31mred"
    window = ["--start", at("10:00"), "--end", at("11:00")]
    for bad in (escape, "two\nlines"):
        refused = ready("reservations", "create", "--vendor", "studio-a", "--requester", bad,
                        *window, expect=2)  # fmt: skip
        assert "requesterId must not contain control characters" in refused.error
        assert (
            "must not contain control characters"
            in ready("partners", "add", "p1", "--name", bad, expect=2).error
        )
    vendors = write_vendors(tmp_path / "bad.toml", vendor_toml("studio-c", name=escape))
    assert (
        "name: must not contain control characters"
        in ready("vendors", "import", vendors, expect=2).error
    )
    assert ready.ids() == [] and "studio-c" not in ready("vendors", "list", expect=0).out


def test_every_refusal_with_json_prints_the_envelope(ready: Cli, run: Cli, tmp_path: Path) -> None:
    """Bad times, metadata, states, a prompt --json cannot answer, settings and database
    errors printed only the red line: a script read nothing on stdout."""
    rid = ready.hold("10:00", "11:00")["reservationId"]
    window = ["--start", at("10:00")[:-1], "--end", at("11:00")]
    cases: list[tuple[Cli, list[str], int, str]] = [
        (ready, ["availability", "studio-a", *window], 2, "validation_error"),
        (ready, ["reservations", "create", "--vendor", "studio-a", "--requester", "al", *window],
         2, "validation_error"),
        (ready, ["reservations", "create", "--vendor", "studio-a", "--requester", "al",
                 "--start", at("12:00"), "--end", at("13:00"), "--metadata", "[1]"],
         2, "validation_error"),
        (ready, ["reservations", "list", "--state", "bogus"], 2, "validation_error"),
        (ready, ["reservations", "list", "--bogus"], 2, "validation_error"),
        (ready, ["compensate", rid], 2, "validation_error"),
        (run, ["--config", "nowhere.toml", "vendors", "list"], 2, "invalid_settings"),
        (run, ["--database", "postgresql://u:pw@127.0.0.1:1/none", "vendors", "list"],
         1, "service_unavailable"),
    ]  # fmt: skip
    for cli, args, code, error in cases:
        result = cli(*args, "--json", expect=code)
        assert result.json()["error"]["code"] == error, args
        assert result.error  # still one red line for people
        if args[0] != "compensate":  # which would ask instead
            assert cli(*args, expect=code).out == ""  # nothing on stdout without --json
    assert "has no UTC offset" in ready("availability", "studio-a", *window, expect=2).error
    assert ready.ids() == [rid]


# -- reconcile -------------------------------------------------------------------------------


def test_reconcile_once_expires_holds_whose_deadline_passed(ready: Cli, db: Database) -> None:
    # A hold placed an hour ago (through the service, on a clock set back) is 50 minutes late.
    then = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    old = ReservationService(db, ManualClock(then), StageTTLs()).create_hold(
        HoldRequest("studio-a", DAY + timedelta(hours=9), DAY + timedelta(hours=10), "bob"),
        actor="test",
    )
    fresh = ready.hold("10:00", "11:00")["reservationId"]
    # Until the job runs, the late hold still holds its slot, and `show` says why.
    late = ready("reservations", "show", old.reservation_id, expect=0).out
    deadline = format_instant(then + timedelta(minutes=10))
    assert f"deadline {deadline} (passed; the daemon or" in late
    assert "(passed" not in ready("reservations", "show", fresh, expect=0).out

    report = ready("reconcile", "--once", "--json", expect=0).json()
    assert report["jobs"]["expiry"] == {
        "processed": 1,
        "errors": [],
        "items": [
            {
                "reservationId": old.reservation_id,
                "from": "HELD",
                "to": "FAILED_VENDOR_TIMEOUT",
                "deadline": format_instant(then + timedelta(minutes=10)),
            }
        ],
    }
    expired = ready.show(old.reservation_id)
    assert expired["state"] == "FAILED_VENDOR_TIMEOUT"
    assert expired["stateHistory"][-1]["actor"] == "system:expiry"
    assert ready.show(fresh)["state"] == AWAITING
    # Nothing is expired twice; the freed slot can be held again.
    assert "expiry: 0 processed" in ready("reconcile", "--once", expect=0).out
    assert ready.hold("09:00", "10:00")["state"] == AWAITING


def test_reconcile_without_once_is_a_usage_error(ready: Cli) -> None:
    assert "--once" in ready("reconcile", expect=2).error


# -- demo ------------------------------------------------------------------------------------


def test_demo_walks_the_workflow(run: Cli) -> None:
    out = run("demo", expect=0).out
    assert "replayed" in out and "refused, slot_unavailable" in out
    assert "audit: clean" in out and "COMMITTED" in out
    assert out.rstrip().splitlines()[-1].strip("─ ") == "done"


def test_demo_json_prints_only_the_final_ledger(run: Cli) -> None:
    ledger = json.loads(run("demo", "--json", expect=0).out)
    assert ledger["auditClean"] is True and ledger["breaches"] == []
    states = sorted(r["state"] for r in ledger["reservations"])
    assert states == [
        "CANCELLED",
        "CANCELLED",
        "COMMITTED",
        "FAILED_COMMIT",
        "FAILED_REQUESTER_AUTH",
        "FAILED_VENDOR_TIMEOUT",
    ]


# -- the real console script -----------------------------------------------------------------

SCRIPT = shutil.which("bookiji", path=str(Path(sys.executable).parent)) or shutil.which("bookiji")


def bookiji(database_url: str, *args: str | Path) -> Result:
    assert SCRIPT is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKIJI_")}
    proc = subprocess.run(
        [SCRIPT, "--database", database_url, *map(str, args)],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if k != "COLUMNS"},
        timeout=120,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.skipif(SCRIPT is None, reason="the bookiji console script is not installed")
def test_console_script_success_and_refusal(database_url: str, vendors_file: Path) -> None:
    def create(start: str, end: str, *extra: str) -> Result:
        return bookiji(
            database_url, "reservations", "create", "--vendor", "studio-a",
            "--start", at(start), "--end", at(end), "--requester", "al", *extra,
        )  # fmt: skip

    assert bookiji(database_url, "vendors", "import", vendors_file).code == 0
    held = create("10:00", "11:00", "--json")
    assert held.code == 0 and held.json()["state"] == AWAITING
    assert "was asked to confirm" in held.err and "Traceback" not in held.err
    taken = create("10:30", "11:30")
    assert taken.code == 1 and "slot_unavailable" in taken.error and taken.out == ""
    missing = bookiji(database_url, "reservations", "cancel", "res_missing")
    assert missing.code == 1 and "not_found" in missing.error


@pytest.mark.skipif(SCRIPT is None, reason="the bookiji console script is not installed")
@pytest.mark.parametrize(
    "args",
    [
        ["no-such-command"],
        ["reservations", "list", "--bogus"],
        ["reservations", "create", "--vendor", "v", "--start", "tomorrow",
         "--end", "2026-12-01T10:00:00Z", "--requester", "r"],
    ],
    ids=["unknown-command", "unknown-option", "malformed-time"],
)  # fmt: skip
def test_console_script_usage_errors_exit_2_on_one_line(database_url: str, args: list[str]) -> None:
    result = bookiji(database_url, *args)
    assert result.code == 2 and result.error and result.out == ""
