"""The CLI with the PII keys: a command run with a wrong key is refused before it seals
anything, `pii check` tells before a deploy, and `requesters forget` says whether SQLite's
write-ahead log was emptied. In-process, SQLite and Postgres."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.cli.support import Cli, vendor_toml, write_vendors

RIGHT = Fernet.generate_key().decode()


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
    right, new, wrong = RIGHT, Fernet.generate_key().decode(), Fernet.generate_key().decode()
    # A fresh database: nothing sealed yet (the vendors import recorded the key it ran with).
    assert cli("pii", "check", "--json", expect=0).json() == {
        "ok": True, "keyRecords": 1, "sampledValues": 0, "newestKeyInUse": True,
    }  # fmt: skip
    held = cli.hold("10:00", "11:00", "--contact-email", "zelda.q@example.org")
    checked = cli("pii", "check", "--json", expect=0).json()
    assert checked == {"ok": True, "keyRecords": 1, "sampledValues": 1, "newestKeyInUse": True}

    monkeypatch.setenv("BOOKIJI_PII_KEYS", wrong)
    refused = cli.create("12:00", "13:00", "--contact-email", "zelda.q@example.org")
    assert refused.code == 1
    assert "do not open data stored in this database" in refused.error
    assert wrong not in refused.err and right not in refused.err
    assert "encryption_key_problem" in cli("pii", "check", expect=1).error
    monkeypatch.setenv("BOOKIJI_PII_KEYS", right)
    assert cli.ids() == [held["reservationId"]]  # the refused hold was never written

    # Before a deploy with a new key in front: it passes, and says a rotation would begin.
    monkeypatch.setenv("BOOKIJI_PII_KEYS", f"{new},{right}")
    out = cli("pii", "check", expect=0).out
    assert "1 key record, 1 sampled value" in out and "newest key is new" in out
    monkeypatch.setenv("BOOKIJI_PII_KEYS", right)  # `pii check` wrote no record for it
    assert cli("pii", "check", "--json", expect=0).json()["keyRecords"] == 1


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
