"""`bookiji availability` and `bookiji calendars`, as an operator runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bookiji.domain.timeutil import format_instant
from tests.calendars.conformance import EventSpec
from tests.calendars.ics_support import ics_text
from tests.calendars.outlook_support import (
    APP_CLIENT_ID,
    APP_CLIENT_SECRET,
    act_as_browser,
    start_microsoft_server,
)
from tests.cli.support import DAY, Cli, at, vendor_toml, write_vendors
from tests.fakes.google_server import GoogleServer

SCRIPT = str(Path(sys.executable).parent / "bookiji")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], database_url: str, tmp_path: Path) -> Cli:
    """The CLI with one vendor open 09:00-17:00 UTC, 60-min slots every 30 min."""
    run = Cli(capsys, database_url)
    path = write_vendors(
        tmp_path / "vendors.toml",
        vendor_toml("shop", hours="09:00-17:00", slot_interval_minutes=30),
    )
    run("vendors", "import", path, expect=0)
    return run


def window(*extra: str) -> tuple[str, ...]:
    return ("availability", "shop", "--start", at("00:00"), "--end", at("23:59"), *extra)


def outlook_config(
    tmp_path: Path, database_url: str, server: Any, *, secret: str = APP_CLIENT_SECRET
) -> Path:
    """A settings file whose Outlook adapter talks to the Microsoft test server."""
    config = tmp_path / "bookiji.toml"
    config.write_text(
        f'database_url = "{database_url}"\n[calendars.outlook]\n'
        f'authority_base = "{server.authority_base}"\n'
        f'graph_base_url = "{server.graph_base_url}"\n'
        f'tenant_id = "{server.tenant_id}"\nclient_id = "{APP_CLIENT_ID}"\n'
        f'client_secret = "{secret}"\nca_bundle = "{server.ca_path}"\n'
    )
    return config


def test_json_is_the_partner_document_and_holds_agree(cli: Cli) -> None:
    document = cli(*window("--json"), expect=0).json()
    assert document["vendorId"] == "shop" and document["timezone"] == "UTC"
    assert document["slotDuration"] == 60 and document["cached"] is False
    starts = [s["startTime"] for s in document["slots"]]
    assert starts[0] == at("09:00") and starts[-1] == at("16:00") and len(starts) == 15
    assert starts == sorted(starts) and all(s.endswith("Z") for s in starts)
    assert all(0 <= s["confidence"] <= 1 and s["reasons"] for s in document["slots"])

    cli.hold("10:00", "11:00", vendor="shop")
    after = [s["startTime"] for s in cli(*window("--json"), expect=0).json()["slots"]]
    assert at("10:00") not in after and at("09:30") not in after and at("11:00") in after
    refused = cli.create("09:30", "10:30", vendor="shop")
    assert refused.code == 1 and "slot_unavailable" in refused.error
    off_grid = cli.create("11:10", "12:10", vendor="shop")
    assert off_grid.code == 1 and "not a slot start" in off_grid.error


def test_the_table_groups_slots_by_local_day(cli: Cli) -> None:
    out = cli(
        "availability", "shop", "--start", at("00:00"),
        "--end", format_instant(DAY + timedelta(days=2)) or "",
        "--slot-minutes", "120",
    ).out  # fmt: skip
    assert "day (UTC)" in out and "slots of 120 min" in out
    assert DAY.strftime("%a %Y-%m-%d") in out
    assert (DAY + timedelta(days=1)).strftime("%a %Y-%m-%d") in out
    assert "shop: 26 slots of 120 min" in out  # 09:00-15:00 every 30 min, two days
    assert "09:00 09:30 10:00" in out


def test_there_is_no_interval_of_ones_own_that_holds_would_refuse(cli: Cli) -> None:
    """Starts step by the vendor's interval, the grid a hold is judged on: listing others
    would offer slots that `reservations create` then refuses."""
    refused = cli("availability", "shop", "--start", at("00:00"), "--end", at("23:00"),
                  "--interval-minutes", "15", expect=2)  # fmt: skip
    assert "--interval-minutes" in refused.error


def test_explain_says_which_rule_blocks(cli: Cli) -> None:
    cli.hold("12:00", "13:00", vendor="shop")
    closed = cli("availability", "shop", "--explain", at("18:00"), expect=0).out
    assert "not bookable" in closed and "opening hours 09:00-17:00" in closed
    held = cli("availability", "shop", "--explain", at("12:30"), "--json", expect=0).json()
    assert held["bookable"] is False
    assert [r["rule"] for r in held["reasons"]] == ["hold"]
    fine = cli("availability", "shop", "--explain", at("14:00"), "--json", expect=0).json()
    assert fine == {**fine, "bookable": True, "reasons": []}


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("--start", "2026-12-02T10:00:00Z", "--end", "2026-12-02T09:00:00Z"), 2, "after"),
        (("--start", "2026-12-01T00:00:00Z", "--end", "2027-04-01T00:00:00Z"), 2, "93 days"),
        (
            (
                "--start",
                "2026-12-01T00:00:00Z",
                "--end",
                "2026-12-02T00:00:00Z",
                "--slot-minutes",
                "4",
            ),
            2,
            "slotDuration",
        ),
        (
            (
                "--start",
                "2026-12-01T00:00:00Z",
                "--end",
                "2026-12-02T00:00:00Z",
                "--slot-minutes",
                "1441",
            ),
            2,
            "slotDuration",
        ),
        (("--start", "yesterday", "--end", "2026-12-02T00:00:00Z"), 2, "RFC 3339"),
        (("--end", "2026-12-02T00:00:00Z"), 2, "--start and --end"),
        # Far instants overflowed datetime (a traceback); now a usage error naming the range.
        (("--start", "0001-01-01T00:00:00+01:00", "--end", "2026-12-02T00:00:00Z"), 2, "range"),
        (("--start", "9999-12-30T00:00:00Z", "--end", "9999-12-31T23:00:00Z"), 2, "range"),
        (("--explain", "9999-12-31T23:00:00Z"), 2, "between 1970-01-01T00:00:00Z and 9000"),
    ],
)
def test_bad_queries_fail_with_one_line(
    cli: Cli, args: tuple[str, ...], code: int, fragment: str
) -> None:
    result = cli("availability", "shop", *args, expect=code)
    assert fragment in result.error


def test_an_operator_may_type_times_loosely(cli: Cli) -> None:
    """Unlike the API (strict RFC 3339), the CLI takes the ISO 8601 forms an operator types:
    a space for 'T', no seconds, `+0000`."""
    day = at("00:00")[:10]
    loose = cli("availability", "shop", "--start", f"{day} 00:00Z", "--end",
                f"{day}T23:59+0000", "--json", expect=0).json()  # fmt: skip
    strict = cli(*window("--json"), expect=0).json()
    assert (loose["startTime"], loose["endTime"]) == (strict["startTime"], strict["endTime"])
    assert [s["startTime"] for s in loose["slots"]] == [s["startTime"] for s in strict["slots"]]


def test_unknown_vendor_is_not_found(cli: Cli) -> None:
    result = cli("availability", "ghost", "--start", at("00:00"), "--end", at("12:00"), expect=1)
    assert "not_found" in result.error


def vendors_file_with_feed(tmp_path: Path, source: str | None = None) -> Path:
    """`shop` with one ICS calendar: `source`, or a local feed with a 09:00-11:00 delivery."""
    if source is None:
        feed = tmp_path / "shop.ics"
        events = [EventSpec(DAY.replace(hour=9), DAY.replace(hour=11), "Delivery")]
        feed.write_text(ics_text(events))
        source = str(feed)
    path = tmp_path / "with-calendar.toml"
    path.write_text(
        vendor_toml("shop", hours="09:00-17:00", slot_interval_minutes=30)
        + f'[[vendors.calendars]]\nprovider = "ics"\nsource = "{source}"\nname = "deliveries"\n'
    )
    return path


def test_calendars_from_the_vendors_file_list_sync_and_disconnect(cli: Cli, tmp_path: Path) -> None:
    imported = cli("vendors", "import", vendors_file_with_feed(tmp_path), expect=0).out
    assert imported.rstrip().endswith(", 1 calendar added")
    [listed] = cli("calendars", "list", "--json", expect=0).json()
    assert (listed["provider"], listed["status"], listed["name"]) == (
        "ics",
        "never_synced",
        "deliveries",
    )

    [synced] = cli("calendars", "sync", "--json", expect=0).json()
    assert (synced["status"], synced["busyPeriods"]) == ("ok", 1)
    document = cli(*window("--json"), expect=0).json()
    assert document["slots"][0]["startTime"] == at("11:00")
    assert document["sources"][0]["status"] == "ok"
    explained = cli("availability", "shop", "--explain", at("10:00"), expect=0).out
    assert "ics:deliveries 'Delivery'" in explained

    (tmp_path / "shop.ics").unlink()
    failed = cli("calendars", "sync", expect=1)
    assert "degraded" in failed.out and "shop.ics" in failed.out
    # Not "1 calendars synced" for a sync that failed.
    assert "0 calendars synced, 1 failed (their last good data is kept)" in failed.out
    # Exit 1 says so on stderr too, as every failing command does.
    assert failed.error == "error: 1 calendar failed to sync; their last good data is kept"
    assert "nope" in cli("calendars", "sync", "--vendor", "nope", expect=1).error
    assert (
        "leave out --start/--end"
        in cli(
            "availability", "shop", "--explain", at("10:00"), "--start", at("09:00"), expect=2
        ).error
    )
    assert cli(*window("--json"), expect=0).json()["slots"][0]["startTime"] == at("11:00")

    cli("calendars", "disconnect", listed["id"], expect=0)
    assert cli("calendars", "list", "--json", expect=0).json() == []
    assert cli(*window("--json"), expect=0).json()["slots"][0]["startTime"] == at("09:00")
    assert "not_found" in cli("calendars", "disconnect", listed["id"], expect=1).error


# -- OAuth connect, end to end with the real console script ------------------------------


def _run_connect(config: Path, provider: str, browse: Any, *extra: str) -> tuple[int, str, str]:
    """Run `bookiji calendars connect --json` as a process; act as the browser on the URL it
    shows on stderr. stdout is the JSON document alone (the URL used to come first)."""
    proc = subprocess.Popen(
        [SCRIPT, "--config", str(config), "calendars", "connect", provider,
         "--vendor", "shop", "--no-browser", "--timeout", "30", "--json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    killer = threading.Timer(60, proc.kill)  # never hang the suite
    killer.start()
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline() == "Open this URL to grant access:\n"
        url = proc.stderr.readline().strip()
        assert url.startswith("https://") or url.startswith("http://"), url
        browse(url)
        out, err = proc.communicate(timeout=45)
    finally:
        killer.cancel()
    return proc.returncode, out, url + "\n" + err


@pytest.fixture
def google() -> Iterator[GoogleServer]:
    with GoogleServer() as server:
        yield server


def google_config(database_url: str, tmp_path: Path, google: GoogleServer) -> Path:
    client_id, client_secret = google.register_client()
    secrets = tmp_path / "client.json"
    secrets.write_text(
        json.dumps(
            {
                "installed": {
                    "client_id": client_id,
                    "client_secret": client_secret,
                    "auth_uri": google.auth_uri,
                    "token_uri": google.token_uri,
                    "redirect_uris": ["http://localhost"],
                }
            }
        )
    )
    config = tmp_path / "bookiji.toml"
    config.write_text(
        f'database_url = "{database_url}"\n[calendars.google]\n'
        f'api_base_url = "{google.api_base_url}"\ntoken_uri = "{google.token_uri}"\n'
        f'client_secrets_file = "{secrets}"\n'
    )
    return config


def browse_google(url: str) -> None:
    with httpx.Client(follow_redirects=True, timeout=10, trust_env=False) as browser:
        assert browser.get(url).status_code == 200


def test_connect_google_stores_a_refresh_token_that_sync_uses(
    cli: Cli, database_url: str, tmp_path: Path, google: GoogleServer
) -> None:
    config = google_config(database_url, tmp_path, google)
    code, out, err = _run_connect(config, "google", browse_google)
    assert code == 0, err
    connection = json.loads(out)
    assert connection["provider"] == "google" and connection["hasCredentials"] is True
    [issued] = [r.form for r in google.token_requests("authorization_code")]
    assert issued  # the code was exchanged
    google.add_calendar("primary", [EventSpec(DAY.replace(hour=13), DAY.replace(hour=14), "Call")])
    [synced] = cli("calendars", "sync", "--json", expect=0).json()
    assert (synced["status"], synced["busyPeriods"]) == ("ok", 1)
    for text in (out, err, json.dumps(cli("calendars", "list", "--json", expect=0).json())):
        assert "1//" not in text  # Google refresh tokens start with 1//; never printed


def test_connecting_a_second_google_account_needs_replace(
    cli: Cli, database_url: str, tmp_path: Path, google: GoogleServer
) -> None:
    """Both accounts' calendar is `primary`: the second consent used to overwrite the
    first connection without a word."""
    config = google_config(database_url, tmp_path, google)
    code, out, err = _run_connect(config, "google", browse_google)
    assert code == 0, err
    first = json.loads(out)
    cli.database_url = None
    refused = cli(
        "--config", config, "calendars", "connect", "google", "--vendor", "shop",
        "--no-browser", "--timeout", "5", expect=1,
    )  # fmt: skip
    assert first["id"] in refused.error and "--replace" in refused.error
    assert "[conflict]" in refused.error and refused.out == ""
    assert len(google.token_requests("authorization_code")) == 1  # nobody was asked again
    code, out, err = _run_connect(config, "google", browse_google, "--replace")
    assert code == 0, err
    assert json.loads(out)["id"] == first["id"]
    assert len(cli("--config", config, "calendars", "list", "--json", expect=0).json()) == 1


def test_connect_outlook_stores_a_refresh_token_that_sync_uses(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    server = start_microsoft_server()
    try:
        server.consent_user = "owner@shop.example"
        server.set_events(
            "owner@shop.example", [EventSpec(DAY.replace(hour=15), DAY.replace(hour=16), "Audit")]
        )
        config = outlook_config(tmp_path, database_url, server)
        code, out, err = _run_connect(config, "outlook", lambda url: act_as_browser(server, url))
        assert code == 0, err
        connection = json.loads(out)
        assert (connection["provider"], connection["source"]) == ("outlook", "owner@shop.example")
        tokens = server.issued_refresh_tokens()
        assert tokens and not any(t in out + err for t in tokens)
        cli.database_url = None
        result = cli("--config", config, "calendars", "sync", "--json")
        assert result.code == 0, result.out
        synced = result.json()
        assert (synced[0]["status"], synced[0]["busyPeriods"]) == ("ok", 1)
    finally:
        server.close()


def test_connect_checks_the_vendor_and_the_port_before_asking_for_consent(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --vendor nosuch, the consent URL was printed and awaited, and the vendor refused
    only after the grant; --port 99999 was an OverflowError from bind()."""
    from bookiji.integrations import google_oauth

    secrets = tmp_path / "client.json"
    secrets.write_text(json.dumps({"installed": {"client_id": "c", "client_secret": "s"}}))
    monkeypatch.setenv("BOOKIJI_CALENDARS__GOOGLE__CLIENT_SECRETS_FILE", str(secrets))

    def consent(*args: object, **kwargs: object) -> dict[str, object]:
        raise AssertionError("asked for consent")

    monkeypatch.setattr(google_oauth, "run_google_consent", consent)
    refused = cli("calendars", "connect", "google", "--vendor", "nosuch", "--no-browser", expect=1)
    assert "unknown vendor 'nosuch'" in refused.error and refused.out == ""
    port = cli("calendars", "connect", "google", "--vendor", "shop", "--port", "99999", expect=2)
    assert "--port" in port.error and "65535" in port.error


def test_calendars_list_of_an_unknown_vendor_is_not_found(cli: Cli) -> None:
    """It printed "0 calendar connections" and exited 0, where sync says not_found."""
    refused = cli("calendars", "list", "--vendor", "nosuch", expect=1)
    assert "unknown vendor 'nosuch'" in refused.error and "[not_found]" in refused.error


def test_a_failing_sync_says_so_in_one_line_on_stderr(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    """icalendar's GloballyUniqueTZIDGuessed warnings and the Outlook adapter's WARNING log
    line came before the red line."""
    feed = tmp_path / "moz.ics"
    feed.write_text(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:u1\r\n"
        "DTSTAMP:20260101T000000Z\r\n"
        'DTSTART;TZID="/mozilla.org/20050126_1/America/New_York":20270104T100000\r\n'
        'DTEND;TZID="/mozilla.org/20050126_1/America/New_York":20270104T110000\r\n'
        "SUMMARY:Guessed zone\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    server = start_microsoft_server()
    try:
        server.set_events("owner@shop.example", [])
        config = outlook_config(tmp_path, database_url, server, secret="not-the-secret")
        vendors = vendors_file_with_feed(tmp_path, str(feed))
        vendors.write_text(
            vendors.read_text()
            + '[[vendors.calendars]]\nprovider = "outlook"\nsource = "owner@shop.example"\n'
        )
        cli("vendors", "import", vendors, expect=0)
        proc = subprocess.run(
            [SCRIPT, "--config", str(config), "calendars", "sync"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        server.close()
    assert proc.returncode == 1, proc.stderr
    assert "ok, 1 busy periods" in proc.stdout and "invalid_client" in proc.stdout
    assert proc.stderr.splitlines() == [
        "error: 1 calendar failed to sync; their last good data is kept"
    ]


@pytest.mark.parametrize(
    "content",
    [b"[]", b'{"installed": "x"}', b'"client"', b"\xff\xfe not text"],
    ids=["array", "installed-not-an-object", "string", "not-utf8"],
)
def test_a_client_secrets_file_that_is_not_a_client_is_one_red_line(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    """JSON that is not an object crashed `connect` with a traceback."""
    secrets = tmp_path / "client.json"
    secrets.write_bytes(content)
    monkeypatch.setenv("BOOKIJI_CALENDARS__GOOGLE__CLIENT_SECRETS_FILE", str(secrets))
    refused = cli("calendars", "connect", "google", "--vendor", "shop", "--no-browser", expect=2)
    assert "OAuth client file" in refused.error and str(secrets) in refused.error
    assert refused.out == ""


def test_calendar_urls_are_shown_without_their_secrets(cli: Cli, tmp_path: Path) -> None:
    """A published feed's password and private token were printed whole."""
    feed = "https://user:hunter2@calendar.example/calendar/ical/x/private-SECRETTOKEN123/basic.ics"
    cli("vendors", "import", vendors_file_with_feed(tmp_path, feed), expect=0)
    shown = "https://calendar.example/calendar/ical/x/private-…/basic.ics"
    assert cli("calendars", "list", "--json", expect=0).json()[0]["source"] == shown
    assert cli("vendors", "show", "shop", "--json", expect=0).json()["calendars"][0]["source"] == (
        shown
    )
    for args in (("calendars", "list"), ("vendors", "show", "shop")):
        for out in (cli(*args, expect=0).out, cli(*args, "--json", expect=0).out):
            assert "calendar.example" in out
            assert "hunter2" not in out and "SECRETTOKEN123" not in out


def test_fetched_times_are_whole_seconds(cli: Cli, tmp_path: Path) -> None:
    cli("vendors", "import", vendors_file_with_feed(tmp_path), expect=0)
    cli("calendars", "sync", expect=0)
    out = cli(*window(), expect=0).out
    assert re.search(
        r"calendar ics:deliveries: ok, fetched \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", out, re.M
    )
