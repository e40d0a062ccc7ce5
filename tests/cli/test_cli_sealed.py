"""Calendar sources and webhook URLs are sealed: without a PII key the CLI refuses to store
one in one line, as it does for every sealed value, and stores nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.support import Cli, vendor_toml, write_vendors

FEED = "https://calendar.example/ical/private-5e6f7a8b/basic.ics"
HOOK = "https://hooks.example/bookiji?token=tok-93ab"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], database_url: str) -> Cli:
    return Cli(capsys, database_url)


def test_without_a_key_a_calendar_or_a_webhook_url_is_refused_in_one_line(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BOOKIJI_PII_KEYS")
    with_feed = write_vendors(
        tmp_path / "feed.toml",
        vendor_toml("shop") + f'[[vendors.calendars]]\nprovider = "ics"\nsource = "{FEED}"\n',
    )
    with_hook = write_vendors(
        tmp_path / "hook.toml", vendor_toml("salon") + f'[vendors.notify]\nwebhook = "{HOOK}"\n'
    )
    refusals = [
        cli("vendors", "import", with_feed, expect=1),
        cli("vendors", "import", with_hook, expect=1),
        cli("partners", "add", "acme", "--name", "Acme", "--webhook-url", HOOK, expect=1),
    ]
    for refused in refusals:
        assert "no PII encryption key" in refused.error  # one line, no traceback
        assert "[encryption_key_problem]" in refused.error
        assert "private-5e6f7a8b" not in refused.err + refused.out
        assert "tok-93ab" not in refused.err + refused.out
    assert cli("vendors", "list", "--json", expect=0).json() == []
    assert cli("calendars", "list", "--json", expect=0).json() == []
    assert cli("partners", "list", "--json", expect=0).json() == []
    # Nothing to seal, no key needed.
    cli("vendors", "import", write_vendors(tmp_path / "plain.toml", vendor_toml("shop")), expect=0)
