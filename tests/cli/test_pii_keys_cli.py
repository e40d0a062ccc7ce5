"""The CLI with the PII keys: a command run with a wrong key, or with a key the database does
not know listed first, is refused before it seals anything; `pii check` tells before a
deploy; a rotation begins only with `pii begin-rotation`; and `requesters forget` says
whether SQLite's write-ahead log was emptied. In-process, SQLite and Postgres."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests import sealed
from tests.cli.support import Cli, vendor_toml, write_vendors

RIGHT = Fernet.generate_key().decode()
CONTACT = ("--contact-email", "zelda.q@example.org")


def key_records(database_url: str) -> int:
    return sealed.on(database_url, sealed.key_records)


def opened_by(database_url: str, key: str) -> int:
    return sealed.on(database_url, sealed.opened_by, key)


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    monkeypatch.setenv("BOOKIJI_PII_KEYS", RIGHT)
    run = Cli(capsys, database_url)
    run("vendors", "import", write_vendors(tmp_path / "v.toml", vendor_toml("studio-a")), expect=0)
    return run


def test_a_wrong_key_refuses_the_command_and_seals_nothing(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    right, wrong = RIGHT, Fernet.generate_key().decode()
    # A fresh database: nothing sealed yet (the vendors import recorded the key it ran with).
    checked = cli("pii", "check", "--json", expect=0).json()
    assert checked == {"ok": True, "keyRecords": 1, "sampledValues": 0}
    held = cli.hold("10:00", "11:00", "--contact-email", "zelda.q@example.org")
    checked = cli("pii", "check", "--json", expect=0).json()
    assert checked == {"ok": True, "keyRecords": 1, "sampledValues": 1}

    monkeypatch.setenv("BOOKIJI_PII_KEYS", wrong)
    refused = cli.create("12:00", "13:00", "--contact-email", "zelda.q@example.org")
    assert refused.code == 1
    assert "do not open data stored in this database" in refused.error
    assert wrong not in refused.err and right not in refused.err
    assert "encryption_key_problem" in cli("pii", "check", expect=1).error
    monkeypatch.setenv("BOOKIJI_PII_KEYS", right)
    assert cli.ids() == [held["reservationId"]]  # the refused hold was never written


def test_a_new_key_listed_first_refuses_the_command_and_writes_nothing(
    cli: Cli, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped key put ahead of the right one opens everything (the right key is listed)
    but would seal all new data: refused in one red line, as a wrong key is; `pii check`
    fails (exit 1) with the same remedy, and `pii rotate` does not begin a rotation."""
    typo = Fernet.generate_key().decode()
    held = cli.hold("10:00", "11:00", *CONTACT)
    monkeypatch.setenv("BOOKIJI_PII_KEYS", f"{typo},{RIGHT}")
    refusals = [
        cli.create("12:00", "13:00", *CONTACT),
        cli("pii", "check", expect=1),
        cli("pii", "rotate", expect=1),
    ]
    for refused in refusals:
        assert refused.code == 1
        line = refused.error  # one line, no traceback
        assert "newest configured PII key (the first listed) is new to this database" in line
        assert "run `bookiji pii begin-rotation`" in line
        assert line.endswith("[encryption_key_problem]")
        assert typo not in refused.err + refused.out and RIGHT not in refused.err + refused.out
    envelope = cli("pii", "check", "--json", expect=1).json()
    assert envelope["error"]["code"] == "encryption_key_problem"
    assert key_records(database_url) == 1  # no record for the typo
    assert opened_by(database_url, typo) == 0  # nothing sealed with it
    monkeypatch.setenv("BOOKIJI_PII_KEYS", RIGHT)
    assert cli.ids() == [held["reservationId"]]  # the refused hold was never written


def test_a_rotation_begins_with_begin_rotation_and_ends_with_rotate(
    cli: Cli, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = RIGHT, Fernet.generate_key().decode()
    first = cli.hold("10:00", "11:00", *CONTACT)
    monkeypatch.setenv("BOOKIJI_PII_KEYS", new)  # the old key left out: refused, not recorded
    assert "do not open" in cli("pii", "begin-rotation", expect=1).error
    monkeypatch.setenv("BOOKIJI_PII_KEYS", f"{new},{old}")
    begun = cli("pii", "begin-rotation", "--json", expect=0).json()
    assert begun == {"registered": 1, "keyRecords": 1}
    assert "already recorded" in cli("pii", "begin-rotation", expect=0).out
    checked = cli("pii", "check", "--json", expect=0).json()
    assert checked == {"ok": True, "keyRecords": 2, "sampledValues": 1}
    second = cli.hold("12:00", "13:00", *CONTACT)  # sealed with the new key
    assert opened_by(database_url, new) == 2  # its record and the new hold
    rotated = cli("pii", "rotate", "--json", expect=0).json()
    assert rotated["resealed"]["reservations.requester_contact"] == 1
    assert key_records(database_url) == 1  # the old key's record retired
    monkeypatch.setenv("BOOKIJI_PII_KEYS", new)
    assert sorted(cli.ids()) == sorted([first["reservationId"], second["reservationId"]])
    assert cli.show(first["reservationId"])["requester"]["email"] == "zelda.q@example.org"
    assert opened_by(database_url, old) == 0


def test_forget_reports_the_write_ahead_log(cli: Cli, backend: str) -> None:
    held = cli.hold("10:00", "11:00")
    erased = cli("requesters", "forget", held["requesterId"], "--yes", "--json", expect=0).json()
    assert erased["walTruncated"] is (True if backend == "sqlite" else None)


def test_init_over_a_database_sealed_with_another_key_is_refused(
    cli: Cli, capsys: pytest.CaptureFixture[str], database_url: str, backend: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`init` in another directory writes a new key file: before, the database then held
    data under two keys; now it is refused and the new key file taken back."""
    if backend != "sqlite":
        pytest.skip("init's key file is for the embedded default")
    cli.hold("10:00", "11:00", "--contact-email", "zelda.q@example.org")
    monkeypatch.delenv("BOOKIJI_PII_KEYS")  # so init writes a key file of its own
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    refused = Cli(capsys, None)("--database", database_url, "init", expect=1)
    assert "do not open data stored in this database" in refused.error
    assert sorted(os.listdir(elsewhere)) == []
