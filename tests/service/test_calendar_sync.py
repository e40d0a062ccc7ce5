"""Calendar sync on real databases: the busy cache, degraded connections, confidence,
and the production wiring from a stored connection to a real client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bookiji.config import Settings
from bookiji.domain.errors import Conflict
from bookiji.domain.vendors import VendorFileInvalid
from bookiji.integrations.calendar_sources import source_builder, stored_json
from bookiji.services.availability import AvailabilityService
from bookiji.services.calendars import CalendarService
from bookiji.services.clock import ManualClock
from bookiji.services.vendors import VendorService
from bookiji.store.database import Database
from tests.calendars.conformance import EventSpec
from tests.calendars.google_support import authorized_user_info
from tests.calendars.ics_support import ics_text
from tests.factories import add_vendor
from tests.fakes.google_server import GoogleServer

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
DAY = datetime(2026, 12, 2, tzinfo=UTC)


def at(hour: float) -> datetime:
    return DAY + timedelta(hours=hour)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


def services(
    db: Database, clock: ManualClock, settings: Settings | None = None
) -> tuple[CalendarService, AvailabilityService]:
    settings = settings or Settings(database_url="sqlite://")
    return (
        CalendarService(db, clock, source_builder(settings)),
        AvailabilityService(db, clock, cache_ttl=timedelta(minutes=5)),
    )


def starts(document: dict[str, object]) -> list[str]:
    return [s["startTime"][11:16] for s in document["slots"]]  # type: ignore[index,union-attr]


def outlook_settings(server: Any) -> Settings:  # a MicrosoftServer
    """Settings whose Outlook adapter talks to the Microsoft test server."""
    from tests.calendars.outlook_support import APP_CLIENT_ID, APP_CLIENT_SECRET

    outlook = {
        "authority_base": server.authority_base,
        "graph_base_url": server.graph_base_url,
        "tenant_id": server.tenant_id,
        "client_id": APP_CLIENT_ID,
        "client_secret": APP_CLIENT_SECRET,
        "ca_bundle": server.ca_path,
    }
    return Settings(database_url="sqlite://", calendars={"outlook": outlook})


def test_an_ics_calendar_blocks_slots_and_a_failed_sync_keeps_its_data(
    db: Database, clock: ManualClock, tmp_path: Path
) -> None:
    add_vendor(db, "v1", slot_interval_minutes=60)
    feed = tmp_path / "work.ics"
    feed.write_text(
        ics_text(
            [
                EventSpec(at(10), at(11), "Dentist"),
                EventSpec(at(14), at(15), "Maybe lunch", status="tentative"),
            ]
        )
    )
    calendars, availability = services(db, clock)
    connection = calendars.connect("v1", "ics", str(feed), name="work")
    never = availability.availability("v1", at(9), at(17))
    assert never["sources"][0]["status"] == "never_synced"
    assert never["slots"][0]["confidence"] == 0.5

    [result] = calendars.sync("v1")
    assert (result.status, result.busy_periods) == ("ok", 2)
    synced = availability.availability("v1", at(9), at(17))
    assert synced["cached"] is False  # the sync bumped the vendor's schedule version
    assert starts(synced) == ["09:00", "11:00", "12:00", "13:00", "15:00", "16:00"]
    assert synced["sources"][0]["status"] == "ok"
    assert synced["sources"][0]["fetchedAt"] == "2026-12-01T08:00:00Z"
    by_start = {s["startTime"][11:16]: s for s in synced["slots"]}
    assert by_start["09:00"]["confidence"] == 1.0
    assert by_start["15:00"]["confidence"] == 0.9  # a tentative event right before it
    assert "tentative event nearby" in by_start["15:00"]["reasons"][0]

    feed.unlink()  # the feed disappears: keep the old busy times, lower confidence
    clock.advance(timedelta(minutes=1))
    [failed] = calendars.sync("v1")
    assert failed.status == "degraded" and "work.ics" in (failed.error or "")
    degraded = availability.availability("v1", at(9), at(17))
    assert starts(degraded) == starts(synced)
    assert degraded["slots"][0]["confidence"] == 0.8
    assert "last sync failed" in degraded["slots"][0]["reasons"][0]
    [listed] = calendars.connections("v1")
    assert listed.status == "degraded" and listed.last_synced_at == NOW

    calendars.disconnect(connection.id)
    reopened = availability.availability("v1", at(9), at(17))
    assert starts(reopened) == [f"{h:02d}:00" for h in range(9, 17)]
    assert reopened["sources"] == []


def test_calendars_declared_in_the_vendors_file_are_synced(
    db: Database, clock: ManualClock, tmp_path: Path
) -> None:
    feed = tmp_path / "salon.ics"
    feed.write_text(ics_text([EventSpec(at(9), at(12), "Training")]))
    vendors_file = tmp_path / "vendors.toml"
    vendors_file.write_text(
        f"""
[[vendors]]
id = "salon"
name = "Salon"
timezone = "UTC"
slot_minutes = 60
max_advance_days = 30
[vendors.hours]
wed = ["09:00-17:00"]
[[vendors.calendars]]
provider = "ics"
source = "{feed}"
name = "salon"
"""
    )
    VendorService(db, clock).import_file(vendors_file)
    VendorService(db, clock).import_file(vendors_file)  # re-import adds no duplicate
    calendars, availability = services(db, clock)
    assert [c.source for c in calendars.connections("salon")] == [str(feed)]
    calendars.sync()
    assert starts(availability.availability("salon", at(0), at(24)))[0] == "12:00"
    explained = availability.explain("salon", at(10))
    assert any("ics:salon 'Training'" in r["message"] for r in explained["reasons"])


@pytest.fixture
def google() -> Iterator[GoogleServer]:
    with GoogleServer() as server:
        yield server


def test_a_google_connection_made_by_consent_syncs_through_the_real_client(
    db: Database, clock: ManualClock, google: GoogleServer
) -> None:
    add_vendor(db, "v1", slot_interval_minutes=60)
    google.add_calendar(
        "primary", [EventSpec(at(13), at(14), "Client call")], time_zone="Europe/London"
    )
    settings = Settings(
        database_url="sqlite://",
        calendars={"google": {"api_base_url": google.api_base_url, "token_uri": google.token_uri}},
    )
    calendars, availability = services(db, clock, settings)
    info = authorized_user_info(google)
    calendars.connect("v1", "google", "primary", credentials_ref=stored_json(info))
    [result] = calendars.sync("v1")
    assert (result.status, result.busy_periods) == ("ok", 1), result.error
    assert "13:00" not in starts(availability.availability("v1", at(9), at(17)))

    google.revoke_refresh_token(info["refresh_token"])
    google.expire_access_tokens()
    [failed] = calendars.sync("v1")
    assert failed.status == "degraded" and failed.retryable is False
    assert info["refresh_token"] not in json.dumps(failed.__dict__)


def test_a_connection_without_credentials_is_degraded_with_a_hint(
    db: Database, clock: ManualClock
) -> None:
    add_vendor(db, "v1")
    calendars, _ = services(db, clock)
    calendars.connect("v1", "google", "primary")
    [result] = calendars.sync()
    assert result.status == "degraded"
    assert "bookiji calendars connect google --vendor v1" in (result.error or "")


def test_an_outlook_mailbox_syncs_through_msal_and_graph(db: Database, clock: ManualClock) -> None:
    from tests.calendars.outlook_support import (
        new_mailbox,
        start_microsoft_server,
    )

    server = start_microsoft_server()
    try:
        mailbox = new_mailbox()
        server.set_events(mailbox, [EventSpec(at(10), at(12), "Site visit")])
        add_vendor(db, "v1", slot_interval_minutes=60)
        settings = outlook_settings(server)
        calendars, availability = services(db, clock, settings)
        calendars.connect("v1", "outlook", mailbox)
        [result] = calendars.sync("v1")
        assert (result.status, result.busy_periods) == ("ok", 1), result.error
        document = availability.availability("v1", at(9), at(13))
        assert starts(document) == ["09:00", "12:00"]
    finally:
        server.close()


def test_events_a_long_buffer_reaches_are_synced(
    db: Database, clock: ManualClock, tmp_path: Path
) -> None:
    """A slot near the horizon, with a day's turnaround after it, must see an event just
    past the horizon; and a day's preparation before the first slots, an event earlier
    than a day ago."""
    add_vendor(
        db, "rent", slot_minutes=240, slot_interval_minutes=60, max_advance_days=30,
        buffer_before_minutes=2880, buffer_after_minutes=1440,
        hours={d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
    )  # fmt: skip
    horizon = NOW + timedelta(days=30)
    late = (horizon + timedelta(hours=20), horizon + timedelta(hours=21))
    early = (NOW - timedelta(hours=40), NOW - timedelta(hours=39))
    feed = tmp_path / "rent.ics"
    feed.write_text(ics_text([EventSpec(*late, "Rental"), EventSpec(*early, "Rental")]))
    calendars, availability = services(db, clock)
    calendars.connect("rent", "ics", str(feed))
    [result] = calendars.sync()
    assert (result.status, result.busy_periods) == ("ok", 2), result.error
    last = horizon.replace(minute=0) - timedelta(hours=4)  # its turnaround reaches `late`
    first = (NOW + timedelta(hours=1)).replace(minute=0)  # its preparation reaches `early`
    for slot in (last, first):
        explained = availability.explain("rent", slot)
        assert explained["bookable"] is False
        assert any("'Rental'" in r["message"] for r in explained["reasons"]), explained


def stored_refresh_token(calendars: CalendarService, vendor_id: str) -> str:
    [connection] = calendars.connections(vendor_id)
    assert connection.credentials_ref is not None
    token: str = json.loads(connection.credentials_ref.removeprefix("json:"))["refresh_token"]
    return token


def test_an_outlook_connection_keeps_the_refresh_token_entra_rotated(
    db: Database, clock: ManualClock
) -> None:
    """Entra hands back a new refresh token on every redemption; only the one from the
    consent was ever stored, so the calendar fell off once that one expired."""
    from tests.calendars.outlook_support import (
        consent_as,
        start_microsoft_server,
    )

    server = start_microsoft_server()
    try:
        mailbox = "owner@contoso.example"
        server.set_events(mailbox, [EventSpec(at(10), at(12), "Site visit")])
        info = consent_as(server, mailbox)
        add_vendor(db, "v1", slot_interval_minutes=60)
        settings = outlook_settings(server)
        calendars, _ = services(db, clock, settings)
        calendars.connect("v1", "outlook", mailbox, credentials_ref=stored_json(info))
        [first] = calendars.sync("v1")
        assert (first.status, first.busy_periods) == ("ok", 1), first.error
        rotated = stored_refresh_token(calendars, "v1")
        assert rotated != info["refresh_token"]
        assert rotated == server.issued_refresh_tokens()[-1]

        server.expire_refresh_token(info["refresh_token"])  # its lifetime ran out
        [second] = calendars.sync("v1")
        assert (second.status, second.busy_periods) == ("ok", 1), second.error
        assert stored_refresh_token(calendars, "v1") == server.issued_refresh_tokens()[-1]
    finally:
        server.close()


def test_a_google_connection_keeps_a_refresh_token_google_rotated(
    db: Database, clock: ManualClock, google: GoogleServer
) -> None:
    add_vendor(db, "v1", slot_interval_minutes=60)
    google.add_calendar("primary", [EventSpec(at(13), at(14), "Client call")])
    google.rotate_refresh_tokens = True  # and the one redeemed stops working
    settings = Settings(
        database_url="sqlite://",
        calendars={"google": {"api_base_url": google.api_base_url, "token_uri": google.token_uri}},
    )
    calendars, _ = services(db, clock, settings)
    info = authorized_user_info(google)
    calendars.connect("v1", "google", "primary", credentials_ref=stored_json(info))
    for _ in range(2):
        [result] = calendars.sync("v1")
        assert (result.status, result.busy_periods) == ("ok", 1), result.error
        assert stored_refresh_token(calendars, "v1") != info["refresh_token"]


def test_a_second_account_does_not_silently_replace_the_first(
    db: Database, clock: ManualClock, google: GoogleServer
) -> None:
    """`primary` is every account's own calendar: a second consent used to take the first
    one's place without a word."""
    add_vendor(db, "v1")
    calendars, _ = services(db, clock)
    personal, work = authorized_user_info(google), authorized_user_info(google)
    first = calendars.connect(
        "v1", "google", "primary", name="personal", credentials_ref=stored_json(personal)
    )
    with pytest.raises(Conflict) as refused:
        calendars.connect("v1", "google", "primary", credentials_ref=stored_json(work))
    assert first.id in refused.value.message and "--replace" in refused.value.message
    [kept] = calendars.connections("v1")
    assert (kept.name, kept.credentials_ref) == ("personal", stored_json(personal))

    # the same credentials again change nothing; --replace replaces them, in place
    calendars.connect("v1", "google", "primary", credentials_ref=stored_json(personal))
    replaced = calendars.connect(
        "v1", "google", "primary", credentials_ref=stored_json(work), replace=True
    )
    assert replaced.id == first.id
    [kept] = calendars.connections("v1")
    assert kept.credentials_ref == stored_json(work)


def test_calendar_paths_in_the_vendors_file_are_relative_to_it(
    db: Database, clock: ManualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`source = "ana.ics"` was stored as given, so sync found the file or not depending on
    the directory it ran in; a file:// URL was taken and then never read."""
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "ana.ics").write_text(ics_text([EventSpec(at(9), at(12), "Training")]))
    (folder / "bo.ics").write_text(ics_text([EventSpec(at(13), at(14), "Inventory")]))
    vendors_file = folder / "vendors.toml"
    table = '[[vendors]]\nid = "{id}"\nname = "N"\ntimezone = "UTC"\nslot_minutes = 60\n'
    calendar = '[[vendors.calendars]]\nprovider = "ics"\nsource = "{source}"\n'
    vendors_file.write_text(
        table.format(id="ana")
        + calendar.format(source="ana.ics")
        + table.format(id="bo")
        + calendar.format(source=(folder / "bo.ics").as_uri())
    )
    monkeypatch.chdir(folder)
    VendorService(db, clock).import_file(Path("vendors.toml"))
    monkeypatch.chdir(tmp_path)  # the daemon, or cron, runs elsewhere
    calendars, _ = services(db, clock)
    results = calendars.sync()
    assert [(r.vendor_id, r.status, r.busy_periods) for r in results] == [
        ("ana", "ok", 1),
        ("bo", "ok", 1),
    ], [r.error for r in results]
    assert {c.source for c in calendars.connections()} == {
        str(folder / "ana.ics"),
        str(folder / "bo.ics"),
    }

    vendors_file.write_text(
        table.format(id="cy") + calendar.format(source="file://files.example/cy.ics")
    )
    with pytest.raises(VendorFileInvalid) as refused:
        VendorService(db, clock).import_file(vendors_file)
    assert "calendars[0].source" in refused.value.message
    assert "file:///path" in refused.value.message


def test_reimporting_a_changed_calendar_name_or_credentials_updates_them(
    db: Database, clock: ManualClock, tmp_path: Path
) -> None:
    """A changed `name` or `credentials` of a known calendar read "unchanged" and the old
    values stayed."""
    vendors_file = tmp_path / "vendors.toml"
    template = (
        '[[vendors]]\nid = "salon"\nname = "Salon"\ntimezone = "UTC"\n'
        '[[vendors.calendars]]\nprovider = "google"\nsource = "salon@example.com"\n'
        'name = "{name}"\ncredentials = "{credentials}"\n'
    )
    vendors = VendorService(db, clock)
    vendors_file.write_text(template.format(name="old", credentials="old-key.json"))
    assert vendors.import_file(vendors_file).created == ["salon"]
    vendors_file.write_text(template.format(name="front desk", credentials="new-key.json"))
    report = vendors.import_file(vendors_file)
    assert (report.updated, report.unchanged, report.calendars_added) == (["salon"], [], 0)
    [connection] = CalendarService(db, clock, source_builder(Settings())).connections("salon")
    assert connection.name == "front desk"
    assert connection.credentials_ref == str(tmp_path / "new-key.json")
    again = vendors.import_file(vendors_file)
    assert (again.updated, again.unchanged) == ([], ["salon"])


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('name = "{long}"\n', "name"),
        ('name = "N"\n[[vendors.calendars]]\nprovider = "google"\nsource = "x"\nname = "{long}"\n',
         "calendars[0].name"),
        ('name = "N"\n[vendors.notify]\nemail = "{long}@example.com"\n', "notify.email"),
    ],
    ids=["vendor-name", "calendar-name", "notify-email"],
)  # fmt: skip
def test_texts_longer_than_their_columns_are_refused_as_invalid(
    db: Database, clock: ManualClock, tmp_path: Path, extra: str, field: str
) -> None:
    """A 201-character name passed validation; Postgres then refused it with a DataError,
    reported as a retryable outage."""
    vendors_file = tmp_path / "vendors.toml"
    long = "x" * (201 if field != "notify.email" else 310)
    vendors_file.write_text(
        '[[vendors]]\nid = "salon"\ntimezone = "UTC"\n' + extra.format(long=long)
    )
    with pytest.raises(VendorFileInvalid) as refused:
        VendorService(db, clock).import_file(vendors_file)
    assert f"vendor 'salon': {field}: must be at most" in refused.value.message
    assert VendorService(db, clock).all() == []
