"""`bookiji partners`, `apikeys`, `webhooks` and `reconcile` as an operator meets their edges:
bounds on durations, conflicts (exit 1) apart from bad input (exit 2), Ctrl-C, progress."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from bookiji.cli import output as cli_output
from bookiji.domain.timeutil import parse_instant
from bookiji.services.webhooks import WebhookService
from bookiji.store.database import Database
from bookiji.store.models import Partner
from bookiji.store.uow import UnitOfWork
from tests.cli.support import Cli

FRACTION = re.compile(r"\d\.\d+Z")  # 12:53:20.153252Z


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], database_url: str) -> Cli:
    run = Cli(capsys, database_url)
    run("partners", "add", "acme", "--name", "Acme", expect=0)
    return run


def keys(cli: Cli) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = cli("apikeys", "list", "--json", expect=0).json()
    return listed


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["apikeys", "create", "--partner", "acme", "--expires-in", "999999999d"], "--expires-in"),
        (["apikeys", "create", "--partner", "acme", "--expires-in", "3651d"], "--expires-in"),
        (["apikeys", "rotate", "KEY", "--overlap", "999999999d"], "--overlap"),
        (["apikeys", "rotate", "KEY", "--overlap", "366d"], "--overlap"),
    ],
)
def test_a_duration_past_its_bound_is_one_line_and_changes_nothing(
    cli: Cli, command: list[str], option: str
) -> None:
    """999999999d built a timedelta, then overflowed adding it to now: a traceback."""
    key = cli("apikeys", "create", "--partner", "acme", "--json", expect=0).json()
    before = keys(cli)
    result = cli(*[key["id"] if part == "KEY" else part for part in command], expect=2)
    assert option in result.error and "too long" in result.error and result.out == ""
    assert keys(cli) == before


def test_the_longest_durations_are_accepted(cli: Cli) -> None:
    key = cli("apikeys", "create", "--partner", "acme", "--expires-in", "3650d", "--json",
              expect=0).json()  # fmt: skip
    cli("apikeys", "rotate", key["id"], "--overlap", "365d", expect=0)


def test_conflicts_with_what_is_stored_exit_1_not_2(cli: Cli) -> None:
    """A partner that exists, a key already rotated or revoked, a partner with no webhook
    URL: the input is fine, the state refuses it (409 `conflict`, exit 1)."""
    again = cli("partners", "add", "acme", "--name", "Acme", expect=1)
    assert "already exists" in again.error and "[conflict]" in again.error
    envelope = cli("partners", "add", "acme", "--name", "Acme", "--json", expect=1).json()
    assert envelope["error"]["code"] == "conflict"

    key = cli("apikeys", "create", "--partner", "acme", "--json", expect=0).json()
    successor = cli("apikeys", "rotate", key["id"], "--json", expect=0).json()
    rotated = cli("apikeys", "rotate", key["id"], expect=1)
    assert "already rotated" in rotated.error and "[conflict]" in rotated.error
    cli("apikeys", "revoke", successor["id"], expect=0)
    revoked = cli("apikeys", "rotate", successor["id"], expect=1)
    assert "is revoked" in revoked.error and "[conflict]" in revoked.error

    hookless = cli("webhooks", "test", "--partner", "acme", expect=1)
    assert "no webhook URL" in hookless.error and "[conflict]" in hookless.error
    # Bad input is still bad input.
    assert "validation_error" in cli("partners", "add", "Not An Id", "--name", "X", expect=2).error


def test_times_in_key_messages_are_whole_seconds(cli: Cli) -> None:
    created = cli("apikeys", "create", "--partner", "acme", "--expires-in", "90d", expect=0)
    [key] = keys(cli)
    assert re.search(r"expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)", created.out)
    rotated = cli("apikeys", "rotate", str(key["id"]), "--overlap", "1h", expect=0)
    assert f"{key['id']} keeps working until " in rotated.out
    revoked = cli("apikeys", "revoke", str(key["id"]), expect=0)
    for out in (created.out, rotated.out, revoked.out):
        assert not FRACTION.search(out), out
    # JSON stays exact.
    assert FRACTION.search(cli("apikeys", "list", "--json", expect=0).out)


def test_a_key_rotated_with_no_overlap_stops_working_at_once(cli: Cli) -> None:
    cli("apikeys", "create", "--partner", "acme", expect=0)
    [key] = keys(cli)
    rotated = cli("apikeys", "rotate", str(key["id"]), "--overlap", "0", expect=0)
    assert f"{key['id']} no longer works" in rotated.out
    statuses = {str(k["id"]): k["status"] for k in keys(cli)}
    assert statuses.pop(str(key["id"])) == "expired"
    assert list(statuses.values()) == ["active"]


def test_ctrl_c_says_interrupted_and_exits_130(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Typer turned Ctrl-C into a silent exit 130 before main() could say anything."""

    def wait_forever(self: WebhookService, partner_id: str) -> int:
        raise KeyboardInterrupt  # what SIGINT raises while the endpoint never answers

    monkeypatch.setattr(WebhookService, "send_test", wait_forever)
    result = cli("webhooks", "test", "--partner", "acme", expect=130)
    assert result.error == "error: interrupted" and result.out == ""


def test_reconcile_shows_its_progress_on_a_terminal_and_never_with_json(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(
        cli_output, "err_console", Console(file=terminal, force_terminal=True, width=100)
    )
    cli("reconcile", "--once", expect=0)
    assert "reconciling: " in terminal.getvalue() and "/10" in terminal.getvalue()
    terminal.truncate(0)
    cli("reconcile", "--once", "--json", expect=0).json()
    assert terminal.getvalue().strip("\x00") == ""
    piped = io.StringIO()  # stderr into a file or a pipe: no bar, not even a blank line
    monkeypatch.setattr(cli_output, "err_console", Console(file=piped, width=100))
    cli("reconcile", "--once", expect=0)
    assert piped.getvalue() == ""


def test_create_help_names_the_state_a_hold_rests_in(cli: Cli) -> None:
    text = " ".join(cli("reservations", "create", "--help", expect=0).out.split())
    assert "HELD -> AWAITING_VENDOR_CONFIRMATION" in text


@pytest.mark.parametrize(
    "url",
    [
        "http://:8632/h",
        "http://127.0.0.1:99999/h",
        "http://[::1/h",
        # host names DNS cannot carry: the sender only failed when connecting, for a day
        "http://a..b:80/hooks",
        "http://xn--zz/h",
        f"https://{'a' * 64}.example/h",
    ],
)
def test_a_webhook_url_delivery_could_never_use_is_refused_when_set(cli: Cli, url: str) -> None:
    refused = cli("partners", "add", "beta", "--name", "Beta", "--webhook-url", url, expect=2)
    assert "webhook URL must be an absolute http(s) URL" in refused.error
    assert url not in refused.error
    assert [p["id"] for p in cli("partners", "list", "--json", expect=0).json()] == ["acme"]


def test_a_partner_s_webhook_url_can_be_changed_and_the_partner_disabled(cli: Cli) -> None:
    url = "https://hooks.acme.example/bookiji?token=SEKRIT"
    changed = cli("partners", "set-webhook-url", "acme", url, "--json", expect=0).json()
    assert changed["webhookUrl"] == "https://hooks.acme.example/bookiji?…"  # no token shown
    assert "SEKRIT" not in cli("partners", "list", expect=0).out
    assert cli("partners", "set-webhook-url", "acme", "ftp://x/y", expect=2).code == 2
    cleared = cli("partners", "set-webhook-url", "acme", "--none", "--json", expect=0).json()
    assert cleared["webhookUrl"] is None
    assert cli("partners", "disable", "acme", "--json", expect=0).json()["disabledAt"]
    assert cli("partners", "enable", "acme", "--json", expect=0).json()["disabledAt"] is None
    assert cli("partners", "disable", "nobody", expect=1).code == 1


def secrets_of(db: Database, partner_id: str) -> tuple[str | None, str | None, datetime | None]:
    """(webhook secret, previous secret, until when the previous one signs) as stored."""
    with UnitOfWork(db, readonly=True) as uow:
        partner = uow.session.get(Partner, partner_id)
        assert partner is not None
        return (
            partner.webhook_secret,
            partner.previous_webhook_secret,
            partner.previous_webhook_secret_until,
        )


def test_rotate_webhook_secret_prints_the_new_secret_and_until_when_the_old_signs(
    cli: Cli, db: Database
) -> None:
    first, _, _ = secrets_of(db, "acme")
    started = datetime.now(UTC).replace(microsecond=0)
    rotated = cli("partners", "rotate-webhook-secret", "acme", "--overlap", "2h", expect=0)
    second, previous, until = secrets_of(db, "acme")
    assert previous == first and second not in (None, first) and until is not None
    assert started + timedelta(hours=2) <= until <= datetime.now(UTC) + timedelta(hours=2)
    shown = re.search(r"the old secret also signs deliveries until (\S+Z)", rotated.out)
    assert shown is not None and parse_instant(shown[1], field="until") == until.replace(
        microsecond=0
    )
    assert rotated.out.splitlines().count(str(second)) == 1 and "shown only now" in rotated.err
    assert first is not None and first not in rotated.out + rotated.err
    listed = cli("partners", "list", "--json", expect=0)
    assert listed.json()[0]["previousWebhookSecretUntil"] is not None
    assert str(second) not in listed.out and first not in listed.out

    # The default is 24h; "0" (or "0s") is no overlap: the old secret no longer signs.
    cli("partners", "rotate-webhook-secret", "acme", expect=0)
    _, previous, until = secrets_of(db, "acme")
    assert previous == second and until is not None
    assert until > datetime.now(UTC) + timedelta(hours=23)
    for zero in ("0", "0s"):
        done = cli("partners", "rotate-webhook-secret", "acme", "--overlap", zero, "--json",
                   expect=0).json()  # fmt: skip
        assert done["previousWebhookSecretUntil"] is None
        assert secrets_of(db, "acme") == (done["webhookSecret"], None, None)
    plain = cli("partners", "rotate-webhook-secret", "acme", "--overlap", "0", expect=0)
    assert "the old secret no longer signs deliveries" in plain.out


@pytest.mark.parametrize("bad", ["1y", "-1h", "24", "1.5h", "", "366d", "999999999d"])
def test_a_bad_webhook_secret_overlap_is_one_line_and_changes_nothing(
    cli: Cli, db: Database, bad: str
) -> None:
    cli("partners", "rotate-webhook-secret", "acme", "--overlap", "1h", expect=0)
    before = secrets_of(db, "acme")
    refused = cli("partners", "rotate-webhook-secret", "acme", "--overlap", bad, expect=2)
    assert "--overlap" in refused.error and refused.out == ""
    assert secrets_of(db, "acme") == before
