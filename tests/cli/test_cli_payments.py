"""`reservations authorize|commit`, `compensate` and `audit`, as an operator runs them
(LocalGateway, the embedded default)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.cli.support import Cli, vendor_toml, write_vendors

PAYMENT = '[vendors.payment]\npayment_method = "pm_card_visa"\ncustomer = "cus_shop"\n'


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], database_url: str, tmp_path: Path) -> Cli:
    run = Cli(capsys, database_url)
    path = write_vendors(tmp_path / "v.toml", vendor_toml("shop") + PAYMENT)
    run("vendors", "import", path, expect=0)
    return run


def test_confirm_authorizes_the_deposit_and_the_requester_commits(cli: Cli) -> None:
    rid = cli.hold("10:00", "11:00", vendor="shop")["reservationId"]
    confirmed = cli("reservations", "confirm", rid, "--json", expect=0).json()
    assert confirmed["state"] == "AWAITING_REQUESTER_AUTH"
    assert confirmed["payment"]["vendorDeposit"]["state"] == "authorized"
    paid = cli(
        "reservations", "authorize", rid, "--party", "requester",
        "--payment-method", "pm_card_visa", "--json", expect=0,
    ).json()  # fmt: skip
    assert paid["state"] == "COMMITTED"
    assert paid["payment"]["requesterPayment"]["state"] == "captured"
    assert paid["payment"]["requesterPayment"]["paymentIntentId"].startswith("lpi_")
    assert "COMMITTED" in cli("reservations", "commit", rid, expect=0).out
    assert cli("audit", "--json", expect=0).json() == {"clean": True, "breaches": []}


def test_a_declined_card_fails_and_shows_the_compensation(cli: Cli) -> None:
    rid = cli.hold("10:00", "11:00", vendor="shop")["reservationId"]
    cli("reservations", "confirm", rid, expect=0)
    out = cli(
        "reservations", "authorize", rid, "--party", "requester",
        "--payment-method", "pm_card_chargeDeclined", expect=0,
    ).out  # fmt: skip
    assert "FAILED_REQUESTER_AUTH" in out
    assert "compensation cmp_" in out and "vendor cancel_authorization done" in out
    assert "audit clean" in cli("audit", expect=0).out


def test_bad_authorize_input_is_refused(cli: Cli) -> None:
    rid = cli.hold("10:00", "11:00", vendor="shop")["reservationId"]
    assert "--party" in cli("reservations", "authorize", rid, "--party", "bank", expect=2).error
    early = cli("reservations", "authorize", rid, "--party", "requester", "--payment-method",
                "pm_card_visa", expect=1)  # fmt: skip
    assert "invalid_transition" in early.error


def test_compensate_asks_first_is_safe_twice_and_guards_committed(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = cli.hold("10:00", "11:00", vendor="shop")["reservationId"]
    cli("reservations", "confirm", stuck, expect=0)
    # Without --yes it asks; answering no changes nothing.
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    refused = cli("compensate", stuck)
    assert refused.code == 1 and "will cancel authorization for the vendor" in refused.out
    assert cli.show(stuck)["state"] == "AWAITING_REQUESTER_AUTH"
    done = cli("compensate", stuck, "--yes", "--json", expect=0).json()
    assert done["plan"][0]["action"] == "cancel_authorization"
    assert done["reservation"]["state"] == "CANCELLED"
    assert done["reservation"]["payment"]["vendorDeposit"]["state"] == "released"
    again = cli("compensate", stuck, "--yes", "--json", expect=0).json()
    assert again["plan"] == [] and again["reservation"]["state"] == "CANCELLED"

    booked = cli.hold("13:00", "14:00", vendor="shop")["reservationId"]
    cli("reservations", "confirm", booked, expect=0)
    cli("reservations", "authorize", booked, "--party", "requester", "--payment-method",
        "pm_card_visa", expect=0)  # fmt: skip
    guarded = cli("compensate", booked, "--yes", expect=1)
    assert "--refund" in guarded.error
    refunded = cli("compensate", booked, "--yes", "--refund", "--json", expect=0).json()
    payment = refunded["reservation"]["payment"]
    assert payment["vendorDeposit"]["state"] == payment["requesterPayment"]["state"] == "refunded"
    assert cli("audit", expect=0).out.startswith("audit clean")


def test_reconcile_json_lists_every_job(cli: Cli) -> None:
    report = cli("reconcile", "--once", "--json", expect=0).json()
    assert report["ok"] is True and report["skipped"] == []
    assert set(report["jobs"]) == {
        "calendar_sync",
        "webhooks",
        "expiry",
        "vendor_notifications",
        "vendor_authorizations",
        "pending_authentications",
        "stuck_commits",
        "stale_authorizations",
        "compensations",
        "money_sweep",
    }
