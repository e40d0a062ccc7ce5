"""Secrets that were only hidden in output are sealed at rest: calendar sources, partner and
vendor webhook URLs. What a user sees still works (sync, notifications, one connection per
source), old plain rows read as they are and `pii rotate` seals them, and a calendar's
last error never names a credentials file. SQLite and Postgres."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import inspect, text
from sqlalchemy.exc import StatementError
from sqlmodel import select

from bookiji.config import Settings
from bookiji.domain.errors import EncryptionKeyProblem
from bookiji.domain.states import StageTTLs
from bookiji.integrations.calendar_sources import source_builder
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.availability import AvailabilityService
from bookiji.services.calendars import CalendarService
from bookiji.services.clock import ManualClock
from bookiji.services.confirmation import ConfirmationService, installation_key
from bookiji.services.pii import PiiService
from bookiji.services.ports import VendorNotification
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.services.vendors import VendorService
from bookiji.store import crypto, migrate
from bookiji.store.database import Database
from bookiji.store.models import CalendarConnection, Partner, Vendor, VendorNotificationRow
from bookiji.store.uow import UnitOfWork
from tests.calendars.conformance import EventSpec
from tests.calendars.ics_support import LoopbackCalendarServer, ics_text, loopback_server
from tests.factories import add_vendor, vendor_spec

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
DAY = datetime(2026, 12, 2, tzinfo=UTC)

PARTNER_URL = "https://hooks.partner.example/bookiji?token=ptok-7f3a9c"
VENDOR_URL = "https://notify:vpass-51d2@salon.example/hold-hook"
FEED_TOKEN = "private-0e1f2a3b4c5d"
GOOGLE_CALENDAR = "ana.schedule@salon.example"
#: What must never be found in the database's own bytes.
SECRETS = ("ptok-7f3a9c", "vpass-51d2", FEED_TOKEN, GOOGLE_CALENDAR)


def at(hour: float) -> datetime:
    return DAY + timedelta(hours=hour)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def feeds() -> Iterator[LoopbackCalendarServer]:
    with loopback_server() as server:
        yield server


def feed_url(feeds: LoopbackCalendarServer, events: list[EventSpec]) -> str:
    return feeds.serve(f"/calendar/ical/{FEED_TOKEN}/basic.ics", ics_text(events).encode())


@dataclass
class Inbox:
    channel: str
    sent: list[tuple[str, VendorNotification]] = field(default_factory=list)

    def send(self, destination: str, notification: VendorNotification) -> None:
        self.sent.append((destination, notification))


def holds_asking(db: Database, clock: ManualClock, inbox: Inbox) -> ReservationService:
    """Holds that ask the vendor at once, over `inbox` as its webhook."""
    ttls = StageTTLs()
    confirmation = ConfirmationService(
        db, clock, ttls, {"webhook": inbox, "console": Inbox("console")},
        lambda: installation_key(db, clock),
    )  # fmt: skip
    return ReservationService(
        db,
        clock,
        ttls,
        ask_vendor=confirmation.plan_ask,
        deliver=lambda ids: [confirmation.deliver(i) for i in ids],
    )


def calendar_service(db: Database, clock: ManualClock) -> CalendarService:
    return CalendarService(db, clock, source_builder(Settings(database_url="sqlite://")))


def raw_rows(db: Database, *tables: str) -> str:
    """Every column of every row of these tables, as the database hands them out."""
    with db.engine.connect() as conn:
        return "\n".join(
            repr(tuple(row))
            for table in tables
            for row in conn.execute(text(f"SELECT * FROM {table}"))
        )


SECRET_TABLES = ("vendors", "partners", "calendar_connections", "vendor_notifications")


def test_webhook_urls_and_calendar_sources_are_sealed_at_rest(
    db: Database, clock: ManualClock, feeds: LoopbackCalendarServer
) -> None:
    feed = feed_url(feeds, [EventSpec(at(10), at(11), "Dentist")])
    ApiKeyService(db, clock).add_partner("acme", "Acme", webhook_url=PARTNER_URL)
    VendorService(db, clock).import_specs(
        [
            vendor_spec(
                "salon",
                slot_interval_minutes=60,
                notify={"webhook": VENDOR_URL},
                calendars=[{"provider": "ics", "source": feed, "name": "work"}],
            )
        ]
    )
    calendars = calendar_service(db, clock)
    calendars.connect("salon", "google", GOOGLE_CALENDAR)
    inbox = Inbox("webhook")
    holds_asking(db, clock, inbox).create_hold(
        HoldRequest("salon", at(14), at(15), "req-1"), actor="test"
    )

    stored = raw_rows(db, *SECRET_TABLES)
    for secret in SECRETS:
        assert secret not in stored, secret
    assert stored.count("gAAAAA") >= 4
    if db.is_sqlite:  # nor anywhere in the files on disk (database and write-ahead log)
        path = Path(db.engine.url.database or "")
        blob = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        for secret in SECRETS:
            assert secret.encode() not in blob, secret

    # The application sees them as they were given, and uses them.
    [(destination, note)] = inbox.sent
    assert destination == VENDOR_URL and note.vendor_id == "salon"
    with UnitOfWork(db, readonly=True) as uow:
        partner = uow.session.get(Partner, "acme")
        vendor = uow.session.get(Vendor, "salon")
        sources = {c.provider: c.source for c in uow.session.exec(select(CalendarConnection))}
        [notification] = uow.session.exec(select(VendorNotificationRow)).all()
    assert partner is not None and partner.webhook_url == PARTNER_URL
    assert vendor is not None and vendor.notify_webhook_url == VENDOR_URL
    assert sources == {"ics": feed, "google": GOOGLE_CALENDAR}
    assert (notification.channel, notification.destination) == ("webhook", "")

    # The ICS feed behind the sealed URL is still read, and blocks its hour.
    [ics] = [c for c in calendars.connections("salon") if c.provider == "ics"]
    result = calendars.sync_one(ics.id)
    assert (result.status, result.busy_periods) == ("ok", 1)
    assert [r.path for r in feeds.requests] == [f"/calendar/ical/{FEED_TOKEN}/basic.ics"]
    answer = AvailabilityService(db, clock).availability("salon", at(9), at(13))
    assert [s["startTime"][11:16] for s in answer["slots"]] == ["09:00", "11:00", "12:00"]


def test_a_vendor_webhook_goes_to_the_url_the_vendor_has_when_it_is_sent(
    db: Database, clock: ManualClock
) -> None:
    """The notification does not keep a copy of the URL: a retry goes to the current one,
    and a vendor that dropped its webhook is not asked at an address it gave up."""
    add_vendor(db, "salon", notify={"webhook": VENDOR_URL})
    inbox = Inbox("webhook")
    ttls = StageTTLs()
    confirmation = ConfirmationService(
        db, clock, ttls, {"webhook": inbox, "console": Inbox("console")},
        lambda: installation_key(db, clock),
    )  # fmt: skip
    reservations = ReservationService(db, clock, ttls, ask_vendor=confirmation.plan_ask)
    first = reservations.create_hold(HoldRequest("salon", at(10), at(11), "r"), actor="t")
    second = reservations.create_hold(HoldRequest("salon", at(12), at(13), "r"), actor="t")
    moved = "https://salon.example/new-hook?key=k2"
    add_vendor(db, "salon", notify={"webhook": moved})
    with UnitOfWork(db, readonly=True) as uow:
        rows = {
            r.reservation_id: r.id for r in uow.session.exec(select(VendorNotificationRow)).all()
        }
    assert confirmation.deliver(rows[first.reservation_id]).status == "sent"
    assert [d for d, _ in inbox.sent] == [moved]
    add_vendor(db, "salon")  # no webhook any more
    dropped = confirmation.deliver(rows[second.reservation_id])
    assert dropped.status == "failed" and "no webhook URL" in (dropped.error or "")
    assert len(inbox.sent) == 1


def test_one_connection_per_vendor_and_source_and_the_same_source_for_two_vendors(
    db: Database, clock: ManualClock, tmp_path: Path
) -> None:
    add_vendor(db, "v1")
    add_vendor(db, "v2")
    calendars = calendar_service(db, clock)
    first = calendars.connect("v1", "google", GOOGLE_CALENDAR, credentials_ref="json:{}")
    # Again, as before sealing: the one connection is kept and its credentials replaced
    # (other credentials for a connected source only when asked to).
    again = calendars.connect(
        "v1", "google", GOOGLE_CALENDAR, credentials_ref='json:{"a": 1}', replace=True
    )
    assert again.id == first.id
    other = calendars.connect("v2", "google", GOOGLE_CALENDAR)
    assert other.id != first.id
    feed = "https://calendar.example/ical/" + FEED_TOKEN + "/basic.ics"
    spec = vendor_spec("v1", calendars=[{"provider": "ics", "source": feed}])
    assert VendorService(db, clock).import_specs([spec]).calendars_added == 1
    assert VendorService(db, clock).import_specs([spec]).calendars_added == 0
    calendars.connect("v1", "ics", feed)  # what the file added is the same connection
    with UnitOfWork(db, readonly=True) as uow:
        rows = uow.session.exec(select(CalendarConnection)).all()
    assert sorted((c.vendor_id, c.provider, c.source) for c in rows) == [
        ("v1", "google", GOOGLE_CALENDAR),
        ("v1", "ics", feed),
        ("v2", "google", GOOGLE_CALENDAR),
    ]
    [kept] = [c for c in rows if c.id == first.id]
    assert kept.credentials_ref == 'json:{"a": 1}'


def test_two_adds_of_one_source_at_once_make_one_connection(
    db: Database, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database no longer compares sources; the lock on the vendor's row does. Each
    add waits (up to a second) for the other to have read too: with the lock, the second
    cannot read before the first has committed."""
    add_vendor(db, "v1")
    calendars = calendar_service(db, clock)
    both_read = threading.Barrier(2, timeout=1.0)
    read = CalendarService._connections_of

    def read_then_wait(uow: UnitOfWork, vendor_id: str, provider: str) -> Any:
        found = read(uow, vendor_id, provider)
        with contextlib.suppress(threading.BrokenBarrierError):  # the other one could not
            both_read.wait()
        return found

    monkeypatch.setattr(CalendarService, "_connections_of", staticmethod(read_then_wait))
    ids: list[str] = []
    errors: list[BaseException] = []

    def add() -> None:
        try:
            ids.append(calendars.connect("v1", "google", GOOGLE_CALENDAR).id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=add) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == [] and len(ids) == 2
    with UnitOfWork(db, readonly=True) as uow:
        rows = uow.session.exec(select(CalendarConnection)).all()
    assert [c.id for c in rows] == [ids[0]] and ids[0] == ids[1]


def test_plain_rows_from_before_read_as_they_are_and_rotate_seals_them(
    db: Database, clock: ManualClock
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    crypto.configure([old])
    ApiKeyService(db, clock).add_partner("acme", "Acme", webhook_url="https://acme.example/x")
    add_vendor(db, "salon", notify={"webhook": "https://salon.example/y"})
    calendars = calendar_service(db, clock)
    connection = calendars.connect("salon", "ics", "https://feeds.example/z.ics")
    # Rows from before sealing: plain text in the columns.
    with db.engine.begin() as conn:
        for statement in (
            f"UPDATE partners SET webhook_url = '{PARTNER_URL}'",
            f"UPDATE vendors SET notify_webhook_url = '{VENDOR_URL}'",
            f"UPDATE calendar_connections SET source = 'https://cal.example/{FEED_TOKEN}.ics'",
        ):
            conn.execute(text(statement))
    crypto.configure([new, old])
    with UnitOfWork(db, readonly=True) as uow:
        partner = uow.session.get(Partner, "acme")
        vendor = uow.session.get(Vendor, "salon")
    assert partner is not None and partner.webhook_url == PARTNER_URL
    assert vendor is not None and vendor.notify_webhook_url == VENDOR_URL
    legacy = f"https://cal.example/{FEED_TOKEN}.ics"
    assert calendars.connect("salon", "ics", legacy).id == connection.id  # compared as plain

    PiiService(db).begin_rotation()
    result = PiiService(db, batch_size=1).rotate()
    assert result.resealed["partners.webhook_url"] == 1
    assert result.resealed["vendors.notify_webhook_url"] == 1
    assert result.resealed["calendar_connections.source"] == 1
    stored = raw_rows(db, *SECRET_TABLES)
    for secret in ("ptok-7f3a9c", "vpass-51d2", FEED_TOKEN):
        assert secret not in stored, secret
    crypto.configure([new])  # the old key is gone: everything still opens
    with UnitOfWork(db, readonly=True) as uow:
        partner = uow.session.get(Partner, "acme")
        vendor = uow.session.get(Vendor, "salon")
        [row] = uow.session.exec(select(CalendarConnection)).all()
    assert partner is not None and partner.webhook_url == PARTNER_URL
    assert vendor is not None and vendor.notify_webhook_url == VENDOR_URL
    assert row.source == legacy
    assert sum(PiiService(db).rotate().resealed.values()) == 0


def test_without_a_key_a_webhook_url_or_a_calendar_is_refused_and_nothing_is_written(
    db: Database, clock: ManualClock
) -> None:
    add_vendor(db, "v1")
    crypto.configure([])
    calendars = calendar_service(db, clock)
    attempts = [
        lambda: calendars.connect("v1", "ics", f"https://cal.example/{FEED_TOKEN}.ics"),
        lambda: add_vendor(db, "v2", notify={"webhook": VENDOR_URL}),
        lambda: add_vendor(
            db, "v3", calendars=[{"provider": "ics", "source": "https://cal.example/c.ics"}]
        ),
        lambda: ApiKeyService(db, clock).add_partner("acme", "Acme", webhook_url=PARTNER_URL),
    ]
    for attempt in attempts:
        with pytest.raises(StatementError) as caught:
            attempt()
        assert isinstance(caught.value.orig, EncryptionKeyProblem)
        assert "BOOKIJI_PII_KEYS" in str(caught.value.orig)
        assert FEED_TOKEN not in str(caught.value) and "vpass" not in str(caught.value)
    with UnitOfWork(db, readonly=True) as uow:
        assert uow.session.exec(select(CalendarConnection)).all() == []
        assert [v.id for v in uow.session.exec(select(Vendor)).all()] == ["v1"]
        assert uow.session.exec(select(Partner)).all() == []
    add_vendor(db, "v4", notify={"email": "ana@salon.example"})  # nothing to seal: no key


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "not found"), ("{not json", "not readable JSON"), ("[]", "JSON object")],
)
def test_a_google_credentials_file_that_does_not_work_is_not_named_in_the_stored_error(
    db: Database, clock: ManualClock, tmp_path: Path, content: str | None, problem: str
) -> None:
    secret_dir = tmp_path / "vault-ana"
    secret_dir.mkdir()
    path = secret_dir / "google-service-account.json"
    if content is not None:
        path.write_text(content)
    add_vendor(db, "v1")
    calendars = calendar_service(db, clock)
    connection = calendars.connect("v1", "google", "primary", credentials_ref=str(path))
    [result] = calendars.sync()
    assert result.status == "degraded" and result.retryable is False
    [row] = calendars.connections("v1")
    for message in (result.error or "", row.last_error or ""):
        assert problem in message and "Google credentials file" in message
        assert connection.id in message and "`credentials` in the vendors file" in message
        assert "vault-ana" not in message and "google-service-account" not in message
    assert "vault-ana" not in raw_rows(db, "calendar_connections")


def test_the_migration_keeps_the_cache_empties_copied_urls_and_goes_back(
    empty_database_url: str, clock: ManualClock
) -> None:
    """From 0011 with rows written before sealing, up to 0012 and back down. The rows are
    written by today's code at head and taken down to 0011 (today's code cannot write the
    schema of 0011: later revisions add columns), then set as the code before 0012 wrote them."""
    db = Database(empty_database_url)
    try:
        migrate.upgrade(db)
        add_vendor(db, "salon", notify={"webhook": VENDOR_URL})
        calendars = calendar_service(db, clock)
        connection = calendars.connect("salon", "ics", "https://cal.example/feed.ics")
        inbox = Inbox("webhook")
        holds_asking(db, clock, inbox).create_hold(
            HoldRequest("salon", at(14), at(15), "req-1"), actor="test"
        )
        migrate.downgrade(db, "0011")
        with db.engine.begin() as conn:  # as the code before 0012 wrote them
            for statement in (
                f"UPDATE vendors SET notify_webhook_url = '{VENDOR_URL}'",
                f"UPDATE calendar_connections SET source = 'https://cal.example/{FEED_TOKEN}'",
                f"UPDATE vendor_notifications SET destination = '{VENDOR_URL}'",
                "INSERT INTO busy_intervals (connection_id, vendor_id, start_at, end_at, "
                f"tentative, fetched_at) VALUES ('{connection.id}', 'salon', "
                "'2026-12-02 10:00:00+00:00', '2026-12-02 11:00:00+00:00', false, "
                "'2026-12-01 08:00:00+00:00')",
            ):
                conn.execute(text(statement))
        assert "uq_calendar_connections_source" in unique_constraints(db)

        migrate.upgrade(db)
        assert migrate.is_at_head(db)
        assert "uq_calendar_connections_source" not in unique_constraints(db)
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM busy_intervals")).scalar() == 1
            assert conn.execute(text("SELECT destination FROM vendor_notifications")).all() == [
                ("",)
            ]
        assert raw_rows(db, "vendors").count(VENDOR_URL) == 1  # still plain, until rotate
        [legacy] = calendars.connections("salon")
        assert legacy.source == f"https://cal.example/{FEED_TOKEN}"
        PiiService(db).rotate()
        assert VENDOR_URL not in raw_rows(db, "vendors")
        assert FEED_TOKEN not in raw_rows(db, "calendar_connections")

        migrate.downgrade(db, "0011")
        assert "uq_calendar_connections_source" in unique_constraints(db)
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT source FROM calendar_connections")).all() == [
                (f"https://cal.example/{FEED_TOKEN}",)
            ]
            assert conn.execute(text("SELECT notify_webhook_url FROM vendors")).all() == [
                (VENDOR_URL,)
            ]
            assert conn.execute(text("SELECT destination FROM vendor_notifications")).all() == [
                (VENDOR_URL,)
            ]
            assert conn.execute(text("SELECT count(*) FROM busy_intervals")).scalar() == 1
    finally:
        db.dispose()


def unique_constraints(db: Database) -> set[str | None]:
    return {u["name"] for u in inspect(db.engine).get_unique_constraints("calendar_connections")}
