"""Partner webhooks end to end: outbox -> deliveries -> a real HTTP receiver on 127.0.0.1.

The receiver checks every request with `standardwebhooks.Webhook(secret).verify`, which
compares `webhook-timestamp` with the real wall clock (5 minutes of tolerance). The
ManualClock therefore starts at the real current second, and tests only move it by the
few seconds of their backoffs. Every wait is bounded: receiver delays end when it closes,
threads are joined with a timeout, worker loops have deadlines.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
from sqlmodel import col, select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from typer.testing import CliRunner

from bookiji.cli.context import CliState
from bookiji.cli.webhooks import app as webhooks_cli
from bookiji.domain.errors import Conflict, NotFound, ValidationFailed
from bookiji.domain.states import StageTTLs
from bookiji.domain.timeutil import format_instant
from bookiji.integrations.webhook_sender import HttpWebhookSender
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.clock import ManualClock, SystemClock
from bookiji.services.events import event_data
from bookiji.services.ports import WebhookSendFailed
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.services.webhooks import DeliveryResult, WebhookService, backoff_delay
from bookiji.store import crypto
from bookiji.store.database import Database
from bookiji.store.models import OutboxEvent, Partner, WebhookDelivery
from bookiji.store.uow import UnitOfWork
from tests.factories import add_vendor
from tests.webhook_doubles import StatusSender


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


SECRET = new_secret()


# -------------------------------------------------------------------------- the receiver


@dataclass
class Request:
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A partner endpoint: verifies the signature (401 if it does not hold), fails the
    verified requests the test says to fail (500), answers 204 otherwise, records all."""

    def __init__(
        self,
        secret: str = SECRET,
        *,
        fail_first: int = 0,
        fail_nth: frozenset[int] = frozenset(),
        delay_first: float = 0.0,
        delay_each: float = 0.0,
        fail_status: int = 500,
    ) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.fail_nth = fail_nth  # indexes among verified requests, 0-based
        self.delay_first = delay_first
        self.delay_each = delay_each
        self.fail_status = fail_status
        self.requests: list[Request] = []
        #: While set, a request is held unanswered until `recover()` (or the end), then its
        #: connection is closed without an answer (recorded with status 0).
        self.hanging = False
        self._verified = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._recovered = threading.Event()

    def __enter__(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._recovered.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}/hooks/bookiji?token=partner-tok"

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        with self._lock:
            first = not self.requests
            hung = self.hanging
            if hung:
                status = 0
            elif not verified:
                status = 401
            else:
                index = self._verified
                self._verified += 1
                failing = index < self.fail_first or index in self.fail_nth
                status = self.fail_status if failing else 204
            self.requests.append(
                Request(headers.get("webhook-id", ""), headers, body, verified, status)
            )
        if hung:
            self._recovered.wait(30)
            handler.close_connection = True  # no answer at all
            return
        delay = self.delay_each + (self.delay_first if first else 0.0)
        if delay:
            self._closing.wait(delay)
        try:
            handler.send_response(status)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        except (ConnectionError, TimeoutError):
            handler.close_connection = True

    def recover(self) -> None:
        """Stop hanging: held requests are dropped unanswered, new ones answered again."""
        with self._lock:
            self.hanging = False
        self._recovered.set()

    def fail_next(self) -> None:
        """Answer the next verified request with the failure status."""
        with self._lock:
            self.fail_nth = self.fail_nth | {self._verified}

    def accepted(self) -> list[str]:
        """Webhook ids answered 2xx, in arrival order."""
        with self._lock:
            return [r.webhook_id for r in self.requests if 200 <= r.status < 300]


# -------------------------------------------------------------------------- fixtures


@pytest.fixture
def live_clock() -> ManualClock:
    """A manual clock at the real current second (see the module docstring)."""
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def sender() -> Iterator[HttpWebhookSender]:
    with HttpWebhookSender(timeout=5.0) as s:
        yield s


def add_partner(
    db: Database,
    clock: ManualClock,
    partner_id: str,
    url: str | None,
    *,
    secret: str = SECRET,
    disabled: bool = False,
) -> None:
    with UnitOfWork(db) as uow:
        uow.session.add(
            Partner(
                id=partner_id,
                name=f"Partner {partner_id}",
                webhook_url=url,
                webhook_secret=secret,
                created_at=clock.now(),
                disabled_at=clock.now() if disabled else None,
            )
        )
        uow.commit()


def set_disabled(db: Database, partner_id: str, disabled_at: datetime | None) -> None:
    with UnitOfWork(db) as uow:
        partner = uow.session.get(Partner, partner_id)
        assert partner is not None
        partner.disabled_at = disabled_at
        uow.commit()


class Bookings:
    """Creates reservations for partners through the real service (outbox included)."""

    def __init__(self, db: Database, clock: ManualClock) -> None:
        add_vendor(db, "v1")
        self.service = ReservationService(db, clock, StageTTLs())
        start = clock.now().replace(minute=0, second=0) + timedelta(days=1)
        self._slots = (start + timedelta(hours=2 * i) for i in range(10_000))

    def hold(self, partner_id: str | None) -> str:
        start = next(self._slots)
        outcome = self.service.create_hold(
            HoldRequest("v1", start, start + timedelta(hours=1), "alice", partner_id=partner_id),
            actor=f"partner:{partner_id}",
        )
        return outcome.reservation_id


def events(db: Database, partner_id: str | None = None) -> list[OutboxEvent]:
    with UnitOfWork(db, readonly=True) as uow:
        stmt = select(OutboxEvent).order_by(col(OutboxEvent.id))
        if partner_id is not None:
            stmt = stmt.where(col(OutboxEvent.partner_id) == partner_id)
        return list(uow.session.exec(stmt).all())


def deliveries(db: Database) -> list[WebhookDelivery]:
    with UnitOfWork(db, readonly=True) as uow:
        stmt = select(WebhookDelivery).order_by(col(WebhookDelivery.event_seq))
        return list(uow.session.exec(stmt).all())


def delivery(db: Database, event_id: str) -> WebhookDelivery:
    (row,) = [d for d in deliveries(db) if d.event_id == event_id]
    return row


def drive(service: WebhookService, clock: ManualClock, *, rounds: int = 60) -> None:
    """Fan out and deliver until nothing is pending, jumping the clock to the next retry."""
    for _ in range(rounds):
        service.fan_out()
        service.deliver_due()
        pending = service.list(status="pending", limit=10_000)
        if not pending:
            return
        # Rows behind an earlier pending event are due but not claimable: wait for the
        # earliest retry in the future, not for them.
        waits = [
            d.next_attempt_at
            for d in pending
            if d.next_attempt_at and d.next_attempt_at > clock.now()
        ]
        if waits:
            clock.set(min(waits))
    raise AssertionError(f"still pending after {rounds} rounds")


# -------------------------------------------------------------------------- the sender


def test_sender_signs_per_standard_webhooks(
    receiver: Receiver, sender: HttpWebhookSender, live_clock: ManualClock
) -> None:
    now = live_clock.now()
    payload: dict[str, object] = {"type": "reservation.held", "id": "evt_1", "data": {"é": 1}}
    assert (
        sender.send(receiver.url, SECRET, message_id="evt_1", timestamp=now, payload=payload) == 204
    )
    # An instant with another offset is the same instant: signed as UTC, still verifies.
    paris = now.astimezone(timezone(timedelta(hours=2)))
    sender.send(receiver.url, SECRET, message_id="evt_2", timestamp=paris, payload=payload)

    first, second = receiver.requests
    assert first.verified and second.verified
    assert first.headers["content-type"] == "application/json"
    assert first.headers["webhook-id"] == "evt_1"
    assert first.headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert second.headers["webhook-timestamp"] == first.headers["webhook-timestamp"]
    assert first.headers["webhook-signature"].startswith("v1,")
    assert first.payload == payload

    with pytest.raises(ValueError, match="timezone-aware"):
        sender.send(
            receiver.url, SECRET, message_id="x", timestamp=now.replace(tzinfo=None), payload={}
        )


def test_sender_returns_any_status_and_refuses_what_cannot_work(
    sender: HttpWebhookSender, live_clock: ManualClock
) -> None:
    with Receiver(fail_first=1, fail_status=410) as gone:
        status = sender.send(
            gone.url, SECRET, message_id="evt_1", timestamp=live_clock.now(), payload={}
        )
    assert status == 410
    with pytest.raises(WebhookSendFailed) as bad_url:
        sender.send(
            "ftp://example.test/x", SECRET, message_id="e", timestamp=live_clock.now(), payload={}
        )
    assert bad_url.value.retryable is False
    for host in ("a..b", "xn--zz"):  # stored before the URL check named them
        with pytest.raises(WebhookSendFailed) as no_host:
            sender.send(
                f"http://{host}:9/x", SECRET, message_id="e", timestamp=live_clock.now(), payload={}
            )
        assert no_host.value.retryable is False and "not usable" in no_host.value.message
    bad_secret = "whsec_abcde"
    with pytest.raises(WebhookSendFailed) as refused:
        sender.send(
            "http://127.0.0.1:9/x",
            bad_secret,
            message_id="e",
            timestamp=live_clock.now(),
            payload={},
        )
    assert refused.value.retryable is False
    assert "abcde" not in refused.value.message


def test_timeouts_and_refused_connections_are_retryable(live_clock: ManualClock) -> None:
    with Receiver(delay_first=3.0) as slow, HttpWebhookSender(timeout=0.3) as sender:
        started = time.monotonic()
        with pytest.raises(WebhookSendFailed) as timed_out:
            sender.send(slow.url, SECRET, message_id="e", timestamp=live_clock.now(), payload={})
        assert time.monotonic() - started < 2.5
    assert timed_out.value.retryable is True
    assert "timed out" in timed_out.value.message
    for leak in (SECRET, SECRET.removeprefix("whsec_"), "partner-tok"):
        assert leak not in timed_out.value.message

    with Receiver() as closed:
        url = closed.url
    with HttpWebhookSender(timeout=2.0) as sender, pytest.raises(WebhookSendFailed) as refused:
        sender.send(url, SECRET, message_id="e", timestamp=live_clock.now(), payload={})
    assert refused.value.retryable is True
    assert SECRET not in refused.value.message and "partner-tok" not in refused.value.message


def test_tampering_or_a_wrong_secret_fails_verification(
    receiver: Receiver, sender: HttpWebhookSender, live_clock: ManualClock
) -> None:
    payload: dict[str, object] = {"type": "reservation.held", "id": "evt_1", "data": {"n": 1}}
    sender.send(
        receiver.url, SECRET, message_id="evt_1", timestamp=live_clock.now(), payload=payload
    )
    (good,) = receiver.requests
    assert good.verified
    Webhook(SECRET).verify(good.body, good.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(good.body.replace(b'"n":1', b'"n":2'), good.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(good.body, {**good.headers, "webhook-id": "evt_2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(good.body, good.headers)

    # Signed with a secret the receiver does not hold: refused at the endpoint.
    status = sender.send(
        receiver.url, new_secret(), message_id="evt_3", timestamp=live_clock.now(), payload=payload
    )
    assert status == 401 and receiver.requests[-1].verified is False


def test_backoff_delay_bounds() -> None:
    class Fixed(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def random(self) -> float:
            return self.value

    base, cap = timedelta(seconds=5), timedelta(hours=1)
    low, high = Fixed(0.0), Fixed(1.0 - 1e-12)
    assert backoff_delay(1, base=base, cap=cap, rng=low) == timedelta(seconds=2.5)
    assert backoff_delay(3, base=base, cap=cap, rng=low) == timedelta(seconds=10)
    assert backoff_delay(3, base=base, cap=cap, rng=high) == timedelta(seconds=30)
    assert backoff_delay(20, base=base, cap=cap, rng=low) == timedelta(minutes=30)
    assert backoff_delay(10_000, base=base, cap=cap, rng=high) <= timedelta(minutes=90)


# -------------------------------------------------------------------------- the service


def test_every_event_delivered_once_in_order_despite_failures(
    db: Database, live_clock: ManualClock, receiver: Receiver, sender: HttpWebhookSender
) -> None:
    receiver.fail_nth = frozenset({0, 1, 3, 6, 7, 11})
    add_partner(db, live_clock, "p1", receiver.url)
    bookings = Bookings(db, live_clock)
    first = [bookings.hold("p1") for _ in range(3)]  # interleaved events across reservations
    bookings.service.confirm(first[0], actor="vendor")
    bookings.service.cancel(first[1], actor="partner:p1")
    bookings.hold("p1")
    bookings.service.confirm(first[2], actor="vendor")
    bookings.hold(None)  # no partner: never a webhook
    service = WebhookService(
        db,
        live_clock,
        sender,
        base_delay=timedelta(seconds=1),
        max_delay=timedelta(seconds=4),
        batch=2,  # several fan-out and delivery batches
        rng=random.Random(7),
    )

    drive(service, live_clock)

    expected = events(db, "p1")
    assert len(expected) == 13
    accepted = receiver.accepted()
    assert sorted(set(accepted)) == sorted(e.event_id for e in expected)  # nothing lost
    assert len(accepted) == len(set(accepted))  # and nothing twice
    assert all(r.verified for r in receiver.requests)
    assert sum(r.status == 500 for r in receiver.requests) == 6

    reservation_of = {e.event_id: e.reservation_id for e in expected}
    for reservation_id in {e.reservation_id for e in expected}:
        in_outbox = [e.event_id for e in expected if e.reservation_id == reservation_id]
        assert [i for i in accepted if reservation_of[i] == reservation_id] == in_outbox
        # Stronger: no attempt at an event before every earlier one was accepted.
        done: set[str] = set()
        for request in receiver.requests:
            if reservation_of[request.webhook_id] != reservation_id:
                continue
            position = in_outbox.index(request.webhook_id)
            assert set(in_outbox[:position]) <= done, "sent ahead of an earlier event"
            if request.status == 204:
                done.add(request.webhook_id)

    by_id = {e.event_id: e for e in expected}
    for request in receiver.requests:
        body = request.payload
        event = by_id[request.webhook_id]
        assert body == {
            "type": event.type,
            "id": event.event_id,
            "createdAt": format_instant(event.created_at),
            "data": event_data(event, {}),  # a cancel's gains its note: none given here
        }
    rows = deliveries(db)
    assert {r.status for r in rows} == {"delivered"} and len(rows) == 13
    assert [r.event_seq for r in rows] == [e.id for e in expected]


def test_backoff_grows_with_jitter_and_waits(db: Database, live_clock: ManualClock) -> None:
    add_partner(db, live_clock, "p1", "http://partner.test/hooks")
    reservation = Bookings(db, live_clock).hold("p1")
    failing = StatusSender(503)
    service = WebhookService(
        db,
        live_clock,
        failing,
        max_attempts=7,
        base_delay=timedelta(seconds=5),
        max_delay=timedelta(seconds=60),
        rng=random.Random(11),
    )
    assert service.fan_out() == 2
    head, behind = (e.event_id for e in events(db, "p1"))
    ratios = []
    for attempt in range(1, 7):
        (result,) = service.deliver_due()
        assert (result.event_id, result.status, result.attempts) == (head, "pending", attempt)
        assert result.http_status == 503 and result.error == "HTTP 503"
        assert result.reservation_id == reservation
        assert result.document()["httpStatus"] == 503
        nominal = min(timedelta(seconds=60), timedelta(seconds=5) * 2 ** (attempt - 1))
        assert result.next_attempt_at is not None
        waited = result.next_attempt_at - live_clock.now()
        assert nominal * 0.5 <= waited <= nominal * 1.5
        ratios.append(waited / nominal)
        # Not due yet: nothing is sent, and the later event waits behind it, as the
        # listing says (its own due time has passed: it is not late, it is queued).
        live_clock.set(result.next_attempt_at - timedelta(milliseconds=1))
        assert service.deliver_due() == []
        listed = {v.event_id: v for v in service.list()}
        assert listed[behind].waiting_for == head and listed[head].waiting_for is None
        assert listed[behind].document()["waitingFor"] == head
        live_clock.set(result.next_attempt_at)
    assert len({round(r, 6) for r in ratios}) == len(ratios)  # jittered, not fixed
    assert [m for m, _ in failing.sent] == [head] * 6
    stamps = [t for _, t in failing.sent]
    assert stamps == sorted(set(stamps))  # each attempt signed at its own time

    # Dead, the head no longer holds the later event back: it goes next, in the same call.
    last, then = service.deliver_due()
    assert (last.event_id, last.status, last.attempts, last.next_attempt_at) == (
        head,
        "dead",
        7,
        None,
    )
    assert (then.event_id, then.status, then.attempts) == (behind, "pending", 1)
    assert {v.event_id: v.waiting_for for v in service.list()} == {head: None, behind: None}


def test_dead_letter_after_max_attempts_then_replay(
    db: Database, live_clock: ManualClock, sender: HttpWebhookSender
) -> None:
    with Receiver(fail_first=3) as receiver:
        add_partner(db, live_clock, "p1", receiver.url)
        Bookings(db, live_clock).hold("p1")
        first, second = (e.event_id for e in events(db, "p1"))
        service = WebhookService(
            db,
            live_clock,
            sender,
            max_attempts=3,
            base_delay=timedelta(seconds=1),
            max_delay=timedelta(seconds=2),
        )
        drive(service, live_clock)

        row = delivery(db, first)
        assert (row.status, row.attempts, row.last_status) == ("dead", 3, 500)
        assert row.last_error == "HTTP 500" and row.next_attempt_at is None
        assert delivery(db, second).status == "delivered"  # a dead event does not block
        assert [r.webhook_id for r in receiver.requests] == [first, first, first, second]
        assert [d.event_id for d in service.list(status="dead")] == [first]

        (replayed,) = service.replay(first)
        assert (replayed.status, replayed.attempts, replayed.last_error) == ("pending", 0, None)
        assert replayed.next_attempt_at == live_clock.now()
        (result,) = service.deliver_due()
        assert (result.event_id, result.status, result.attempts) == (first, "delivered", 1)
        assert receiver.requests[-1].webhook_id == first  # same id: the receiver dedupes

        service.replay(second, partner_id="p1")  # delivered ones can be sent again too
        assert [r.event_id for r in service.deliver_due()] == [second]
        assert receiver.accepted() == [second, first, second]

    with pytest.raises(NotFound):
        service.replay("evt_unknown")
    with pytest.raises(NotFound):
        service.replay(first, partner_id="p2")


def test_the_retry_policy_comes_from_the_settings(
    db: Database, live_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[webhooks]` in the settings file decides when a failing delivery is a dead letter."""
    from bookiji.bootstrap import build
    from bookiji.config import Settings

    # build() installs the settings' keyring; the one this process had comes back after.
    monkeypatch.setattr(crypto, "_keyring", crypto.keyring())
    monkeypatch.setenv("BOOKIJI_PII_KEYS", crypto.new_key())
    settings = Settings(
        database_url=db.url,
        webhooks={"max_attempts": 2, "base_delay_seconds": 7, "max_delay_seconds": 7},
    )
    service = build(settings, clock=live_clock).webhooks
    with Receiver(fail_first=10) as receiver:
        add_partner(db, live_clock, "p1", receiver.url)
        Bookings(db, live_clock).hold("p1")
        service.fan_out()
        (first,) = [r for r in service.deliver_due() if r.status == "pending"]
        assert first.next_attempt_at is not None
        waited = first.next_attempt_at - live_clock.now()
        assert timedelta(seconds=3.5) <= waited <= timedelta(seconds=10.5)
        live_clock.set(first.next_attempt_at)
        second = service.deliver_due()[0]  # then the reservation's next event goes
        assert (second.event_id, second.status, second.attempts) == (first.event_id, "dead", 2)


def test_disabled_partner_or_no_url_gets_nothing(
    db: Database, live_clock: ManualClock, receiver: Receiver, sender: HttpWebhookSender
) -> None:
    add_partner(db, live_clock, "p1", receiver.url)
    add_partner(db, live_clock, "p2", receiver.url, disabled=True)
    add_partner(db, live_clock, "p3", None)
    add_partner(db, live_clock, "p4", "")
    bookings = Bookings(db, live_clock)
    for partner in ("p1", "p2", "p3", "p4"):
        bookings.hold(partner)
    service = WebhookService(db, live_clock, sender)

    assert service.fan_out() == 2
    assert {d.partner_id for d in deliveries(db)} == {"p1"}
    # Disabled after fan-out: its deliveries wait, unsent, until it is enabled again.
    set_disabled(db, "p1", live_clock.now())
    assert service.deliver_due() == []
    assert receiver.requests == []
    set_disabled(db, "p1", None)
    drive(service, live_clock)
    assert sorted(receiver.accepted()) == sorted(e.event_id for e in events(db, "p1"))
    assert {d.partner_id for d in deliveries(db)} == {"p1"}


def test_fan_out_twice_or_concurrently_creates_no_duplicates(
    db: Database, database_url: str, live_clock: ManualClock
) -> None:
    add_partner(db, live_clock, "p1", "http://partner.test/hooks")
    bookings = Bookings(db, live_clock)
    for _ in range(12):
        bookings.hold("p1")
    expected = len(events(db, "p1"))
    other_db = Database(database_url)  # a second "process": its own engine and pool
    try:
        services = [
            WebhookService(db, live_clock, StatusSender(204), batch=5),
            WebhookService(other_db, live_clock, StatusSender(204), batch=5),
        ]
        barrier = threading.Barrier(2, timeout=10)
        created: list[int] = []
        errors: list[BaseException] = []

        def run(service: WebhookService) -> None:
            try:
                barrier.wait()
                created.append(service.fan_out())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in services]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads) and errors == []
    finally:
        other_db.dispose()

    rows = deliveries(db)
    assert len(rows) == expected == 24
    assert len({(r.event_id, r.partner_id) for r in rows}) == expected
    assert sum(created) == expected  # each row counted by the one call that inserted it
    assert services[0].fan_out() == 0  # twice: nothing new
    bookings.hold("p1")
    assert services[0].fan_out() == 2
    assert len(deliveries(db)) == expected + 2


def test_concurrent_workers_never_send_a_delivery_twice(
    db: Database, database_url: str, live_clock: ManualClock, sender: HttpWebhookSender
) -> None:
    with Receiver(delay_each=0.01) as receiver:
        add_partner(db, live_clock, "p1", receiver.url)
        bookings = Bookings(db, live_clock)
        reservations = [bookings.hold("p1") for _ in range(10)]
        for reservation in reservations[:5]:
            bookings.service.confirm(reservation, actor="vendor")
        expected = events(db, "p1")
        other_db = Database(database_url)
        try:
            second_sender = HttpWebhookSender(timeout=5.0)
            services = [
                WebhookService(db, live_clock, sender),
                WebhookService(other_db, live_clock, second_sender),
            ]
            assert services[0].fan_out() == len(expected) == 30
            results: list[list[str]] = [[], []]
            errors: list[BaseException] = []
            barrier = threading.Barrier(2, timeout=10)

            def work(index: int) -> None:
                try:
                    barrier.wait()
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        done = services[index].deliver_due(limit=2)
                        results[index].extend(r.event_id for r in done)
                        if not done:
                            if services[index].counts()["pending"] == 0:
                                return
                            time.sleep(0.005)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=90)
            assert not any(t.is_alive() for t in threads) and errors == []
        finally:
            second_sender.close()
            other_db.dispose()

    sent = Counter(r.webhook_id for r in receiver.requests)
    assert sorted(sent) == sorted(e.event_id for e in expected)
    assert set(sent.values()) == {1}, "a delivery was sent twice"
    assert sorted(results[0] + results[1]) == sorted(sent)
    order = [r.webhook_id for r in receiver.requests]
    for reservation in reservations:
        in_outbox = [e.event_id for e in expected if e.reservation_id == reservation]
        assert [i for i in order if i in in_outbox] == in_outbox
    assert {d.status for d in deliveries(db)} == {"delivered"}


class HookSender:
    """A stub sender answering 204 that runs `during(call number)` inside each send (the
    time a send takes, what happens elsewhere meanwhile); records the message ids."""

    def __init__(self, during: Callable[[int], None] = lambda _: None) -> None:
        self.during = during
        self.sent: list[str] = []

    def send(self, url: str, secret: str, *, message_id: str, **_: object) -> int:
        self.sent.append(message_id)
        self.during(len(self.sent))
        return 204


class Died(BaseException):
    """SIGKILL as far as the worker is concerned: no handler or cleanup runs."""


def partner_with_holds(db: Database, clock: ManualClock, n: int) -> list[OutboxEvent]:
    """n reservations of partner p1; their events, in outbox order."""
    add_partner(db, clock, "p1", "http://127.0.0.1:9/hooks")
    bookings = Bookings(db, clock)
    for _ in range(n):
        bookings.hold("p1")
    return events(db, "p1")


def firsts_of(expected: list[OutboxEvent]) -> list[str]:
    """The first event of each reservation (what one claim of a lane takes), in order."""
    firsts: dict[str | None, str] = {}
    for event in expected:
        firsts.setdefault(event.reservation_id, event.event_id)
    return list(firsts.values())


def test_a_run_of_sends_longer_than_a_send_timeout_keeps_its_rows(
    db: Database, live_clock: ManualClock
) -> None:
    """Each send takes two thirds of the send timeout, a lane's claim of five five times
    that: the rows waiting their turn and the row in flight stay this worker's, so another
    worker coming round during every send claims none of them (only the next event of a
    reservation whose first one this worker delivered already). Each event is sent once,
    each reservation's in order."""
    expected = partner_with_holds(db, live_clock, 5)
    firsts = firsts_of(expected)
    answered: list[str] = []  # by both workers, in the order the sends ended
    other = HookSender(lambda _: answered.append(other.sent[-1]))
    peer = WebhookService(db, live_clock, other)
    found_by_peer: list[list[DeliveryResult]] = []

    def during(_: int) -> None:
        live_clock.advance(timedelta(seconds=20))
        found_by_peer.append(peer.deliver_due())
        answered.append(sender.sent[-1])

    sender = HookSender(during)
    worker = WebhookService(db, live_clock, sender)
    assert worker.send_timeout == timedelta(seconds=30)
    worker.fan_out()
    results = worker.deliver_due()
    assert [(r.event_id, r.status, r.attempts) for r in results[:5]] == [
        (e, "delivered", 1) for e in firsts
    ]
    assert len(found_by_peer) >= 5
    assert {r.event_id for found in found_by_peer for r in found} & set(firsts) == set()
    assert set(other.sent) & set(firsts) == set()
    assert sorted(answered) == sorted(e.event_id for e in expected)
    assert in_outbox_order(answered, expected)


def test_a_worker_killed_later_in_a_run_holds_the_rest_one_send_timeout_at_most(
    db: Database, live_clock: ManualClock
) -> None:
    """Killed in its third send, a minute into its run of sends: the rest of its claim,
    renewed on the way, is still held right after the kill, and another worker's one send
    timeout after it."""
    firsts = firsts_of(partner_with_holds(db, live_clock, 5))

    def during(call: int) -> None:
        live_clock.advance(timedelta(seconds=20))
        if call == 3:
            raise Died

    worker = WebhookService(db, live_clock, HookSender(during))
    worker.fan_out()
    with pytest.raises(Died):
        worker.deliver_due()
    other = HookSender()
    peer = WebhookService(db, live_clock, other)
    rest = set(firsts[2:])  # the row in flight and the two waiting their turn
    assert {r.event_id for r in peer.deliver_due()} & rest == set()
    live_clock.advance(worker.send_timeout)
    results = [r for r in peer.deliver_due() if r.event_id in rest]
    assert sorted(r.event_id for r in results) == sorted(rest)
    assert {(r.status, r.attempts) for r in results} == {("delivered", 2)}
    assert other.sent.count(firsts[2]) == 1
    assert {d.status for d in deliveries(db)} == {"delivered"}


def test_a_worker_whose_send_overran_leaves_the_rest_to_who_took_it_over(
    db: Database, live_clock: ManualClock
) -> None:
    """The first send outlasts the send timeout; meanwhile another worker claims and sends
    the rest (the leases ran out), and the events behind. The slow worker then sends none
    of them again."""
    expected = partner_with_holds(db, live_clock, 4)
    firsts = firsts_of(expected)
    other = HookSender()
    peer = WebhookService(db, live_clock, other)
    taken_over: list[DeliveryResult] = []

    def during(call: int) -> None:
        if call == 1:
            live_clock.advance(timedelta(seconds=31))
            taken_over.extend(peer.deliver_due())

    slow = HookSender(during)
    worker = WebhookService(db, live_clock, slow)
    worker.fan_out()
    results = worker.deliver_due()
    assert sorted(r.event_id for r in taken_over) == sorted(other.sent)
    assert sorted(other.sent) == sorted(e.event_id for e in expected)
    # At least once: the row whose send overran went twice; nothing else did.
    assert slow.sent == [firsts[0]] and [r.event_id for r in results] == [firsts[0]]
    assert delivery(db, firsts[0]).attempts == 2
    assert {d.status for d in deliveries(db)} == {"delivered"}


def test_a_timeout_is_a_retryable_failed_attempt(db: Database, live_clock: ManualClock) -> None:
    with Receiver(delay_first=3.0) as receiver, HttpWebhookSender(timeout=0.3) as sender:
        add_partner(db, live_clock, "p1", receiver.url)
        Bookings(db, live_clock).hold("p1")
        first = events(db, "p1")[0].event_id
        service = WebhookService(db, live_clock, sender, base_delay=timedelta(seconds=1))
        service.fan_out()
        (result,) = service.deliver_due()
        assert (result.event_id, result.status, result.http_status) == (first, "pending", None)
        assert result.error is not None and "timed out" in result.error
        assert SECRET not in result.error and "partner-tok" not in result.error
        row = delivery(db, first)
        assert row.attempts == 1 and row.next_attempt_at is not None
        assert row.next_attempt_at > live_clock.now()
        drive(service, live_clock)
    assert sorted(set(receiver.accepted())) == sorted(e.event_id for e in events(db, "p1"))


def test_wrong_secret_at_the_partner_is_not_delivered(
    db: Database, live_clock: ManualClock, sender: HttpWebhookSender
) -> None:
    with Receiver(secret=new_secret()) as receiver:  # the partner holds another secret
        add_partner(db, live_clock, "p1", receiver.url)
        Bookings(db, live_clock).hold("p1")
        service = WebhookService(db, live_clock, sender)
        service.fan_out()
        (result,) = service.deliver_due()
    assert (result.status, result.http_status, result.attempts) == ("pending", 401, 1)
    assert receiver.requests[0].verified is False


def test_send_test_is_signed_and_stores_nothing(
    db: Database, live_clock: ManualClock, receiver: Receiver, sender: HttpWebhookSender
) -> None:
    add_partner(db, live_clock, "p1", receiver.url)
    add_partner(db, live_clock, "p3", None)
    service = WebhookService(db, live_clock, sender)
    assert service.send_test("p1") == 204
    (request,) = receiver.requests
    assert request.verified
    body = request.payload
    assert body["type"] == "webhook.test" and body["id"] == request.webhook_id
    assert body["createdAt"] == format_instant(live_clock.now())
    assert body["data"] == {"partnerId": "p1", "test": True}
    assert events(db) == [] and deliveries(db) == []
    with pytest.raises(NotFound):
        service.send_test("nobody")
    with pytest.raises(Conflict):  # a state to change, not bad input
        service.send_test("p3")


def test_list_filters(db: Database, live_clock: ManualClock) -> None:
    add_partner(db, live_clock, "p1", "http://p1.test/hooks")
    add_partner(db, live_clock, "p2", "http://p2.test/hooks")
    bookings = Bookings(db, live_clock)
    bookings.hold("p1")
    bookings.hold("p2")
    service = WebhookService(db, live_clock, StatusSender(200), max_attempts=1)
    service.fan_out()
    service.deliver_due(limit=1)  # p1's first event is delivered
    everything = service.list()
    assert len(everything) == 4
    assert [d.event_seq for d in everything] == sorted(
        (d.event_seq for d in everything), reverse=True
    )
    assert {d.partner_id for d in service.list(partner_id="p2")} == {"p2"}
    (done,) = service.list(status="delivered")
    assert (done.partner_id, done.event_type) == ("p1", "reservation.intent_created")
    assert len(service.list(status="pending", limit=2)) == 2
    assert service.counts() == {"pending": 3, "delivered": 1, "dead": 0}
    with pytest.raises(ValidationFailed):
        service.list(status="lost")


# -------------------------------------------------------------------------- the CLI


def invoke(service: WebhookService, *args: str) -> Any:
    """Runs `bookiji webhooks ...` against `service`, in place of the wired container."""
    cli = CliState()
    cli._container = SimpleNamespace(webhooks=service)
    return CliRunner().invoke(webhooks_cli, list(args), obj=cli)


def test_cli_list_replay_and_test(
    db: Database,
    live_clock: ManualClock,
    receiver: Receiver,
    sender: HttpWebhookSender,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    add_partner(db, live_clock, "p1", receiver.url)
    bookings = Bookings(db, live_clock)
    bookings.hold("p1")
    first, second = (e.event_id for e in events(db, "p1"))
    service = WebhookService(db, live_clock, sender, max_attempts=1)
    receiver.fail_first = 1
    service.fan_out()
    drive(service, live_clock)  # the first event dies at once, the second is delivered

    result = invoke(service, "list", "--status", "dead", "--json")
    assert result.exit_code == 0, result.output
    (dead,) = json.loads(result.output)
    assert (dead["eventId"], dead["status"], dead["lastStatus"]) == (first, "dead", 500)
    assert dead["eventType"] == "reservation.intent_created" and dead["partnerId"] == "p1"

    table = invoke(service, "list", "--partner", "p1")
    assert table.exit_code == 0 and "2 webhook deliveries" in table.output
    lines = table.output.splitlines()
    assert any(first in line and "dead" in line and "HTTP 500" in line for line in lines)
    assert any(second in line and "delivered" in line for line in lines)

    replayed = invoke(service, "replay", first, "--json")
    assert replayed.exit_code == 0, replayed.output
    assert [(d["eventId"], d["status"], d["attempts"]) for d in json.loads(replayed.output)] == [
        (first, "pending", 0)
    ]
    assert invoke(service, "replay", second).exit_code == 0
    queued = invoke(service, "list", "--partner", "p1").output.splitlines()
    assert any(second in line and f"after {first}" in line for line in queued)
    assert [r.event_id for r in service.deliver_due()] == [first, second]  # in order

    tested = invoke(service, "test", "--partner", "p1", "--json")
    assert tested.exit_code == 0, tested.output
    assert json.loads(tested.output) == {"partnerId": "p1", "status": 204, "ok": True}
    assert receiver.requests[-1].payload["type"] == "webhook.test"

    receiver.fail_next()
    assert invoke(service, "test", "--partner", "p1").exit_code == 1

    # A row waiting out its backoff is left alone, and the operator is told so, not "due now".
    receiver.fail_next()
    bookings.hold("p1")
    service = WebhookService(db, live_clock, sender, max_attempts=5)
    service.fan_out()
    service.deliver_due()
    (waiting, *_) = [d for d in service.list(status="pending") if d.attempts == 1]
    told = invoke(service, "replay", waiting.event_id)
    assert told.exit_code == 0 and "due now" not in told.output, told.output
    assert "already pending, left as it was (attempt 2 at " in told.output

    missing = invoke(service, "replay", "evt_nope")
    assert isinstance(missing.exception, NotFound)  # main() turns it into exit 1 + one line
    assert isinstance(invoke(service, "list", "--status", "x").exception, ValidationFailed)


# -------------------------------------------------------------------------- attempts cap


def test_a_last_attempt_lost_in_a_crash_is_not_made_again(
    db: Database, live_clock: ManualClock
) -> None:
    """max_attempts 2: the first attempt fails, the second is claimed (and counted) and sent
    by a worker that dies before recording what came of it. Once that claim's lease has run
    out, the next worker has no attempt left to make: the row is a dead letter after 2
    attempts, never sent a third time, and the reservation's next event goes on."""
    add_partner(db, live_clock, "p1", "http://127.0.0.1:9/hooks")
    Bookings(db, live_clock).hold("p1")
    head, behind = (e.event_id for e in events(db, "p1"))
    policy: dict[str, Any] = {
        "max_attempts": 2,
        "base_delay": timedelta(seconds=1),
        "max_delay": timedelta(seconds=1),
    }
    failing = StatusSender(503)
    service = WebhookService(db, live_clock, failing, **policy)
    service.fan_out()
    (first,) = service.deliver_due()
    assert (first.event_id, first.status, first.attempts) == (head, "pending", 1)
    assert first.next_attempt_at is not None
    live_clock.set(first.next_attempt_at)

    def die(_: int) -> None:
        raise Died

    crashing = HookSender(die)
    with pytest.raises(Died):
        WebhookService(db, live_clock, crashing, **policy).deliver_due()
    assert crashing.sent == [head]  # the second attempt went out; its outcome is unknown
    row = delivery(db, head)
    assert (row.status, row.attempts) == ("pending", 2)

    survivor = HookSender()
    peer = WebhookService(db, live_clock, survivor, **policy)
    assert peer.deliver_due() == [] and survivor.sent == []  # the lost claim's lease holds
    live_clock.advance(peer.send_timeout)
    results = peer.deliver_due()
    assert head not in survivor.sent, "a third attempt with max_attempts 2"
    row = delivery(db, head)
    assert (row.status, row.attempts, row.next_attempt_at) == ("dead", 2, None)
    assert row.last_status is None and row.last_error is not None
    assert "no outcome" in row.last_error
    assert survivor.sent == [behind]  # a dead event no longer holds the next one back
    assert [(r.event_id, r.status, r.attempts) for r in results] == [
        (head, "dead", 2),
        (behind, "delivered", 1),
    ]
    assert failing.sent[0][0] == head and len(failing.sent) == 1


# -------------------------------------------------------------------------- partner isolation


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether `condition` holds within `timeout` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def in_outbox_order(accepted: list[str], expected: list[OutboxEvent]) -> bool:
    """Each reservation's events were accepted in outbox order, each once."""
    if len(accepted) != len(set(accepted)):
        return False
    for reservation in {e.reservation_id for e in expected}:
        in_outbox = [e.event_id for e in expected if e.reservation_id == reservation]
        if [i for i in accepted if i in in_outbox] != in_outbox:
            return False
    return True


@dataclass
class HangingPair:
    """Partner `pa`, whose endpoint hangs past the send timeout, and `pb`, whose answers at
    once; `a_holds` of pa's reservations come first."""

    hanging: Receiver
    prompt: Receiver
    sender: HttpWebhookSender
    bookings: Bookings

    def b_has_all(self, db: Database) -> bool:
        return {e.event_id for e in events(db, "pb")} <= set(self.prompt.accepted())


@contextmanager
def hanging_pair(
    db: Database, clock: ManualClock, *, timeout: float, a_holds: int
) -> Iterator[HangingPair]:
    with (
        Receiver() as hanging,
        Receiver() as prompt,
        HttpWebhookSender(timeout=timeout) as sender,
    ):
        hanging.hanging = True
        add_partner(db, clock, "pa", hanging.url)
        add_partner(db, clock, "pb", prompt.url)
        bookings = Bookings(db, clock)
        for _ in range(a_holds):
            bookings.hold("pa")
        yield HangingPair(hanging, prompt, sender, bookings)


def test_a_hanging_partner_does_not_hold_up_another_partners_webhooks(
    db: Database, live_clock: ManualClock
) -> None:
    """Partner a's endpoint hangs past the send timeout on every request; partner b's answers
    at once. Delivered by a loop like the daemon's, b gets its events within a fraction of
    one of a's timeouts (one at a time, a's four due events alone took four timeouts first),
    in order, and so are the events b's reservations get while a's send still hangs. Once
    a's endpoint answers again, its events are retried and delivered, in order too."""
    timeout = 4.0
    # Deliveries on the real clock: a's backoffs pass with no hand on a clock.
    clock = SystemClock()
    # a's four events first: one at a time, they went first.
    with hanging_pair(db, live_clock, timeout=timeout, a_holds=4) as pair:
        hanging, prompt, sender, bookings = pair.hanging, pair.prompt, pair.sender, pair.bookings
        of_b = [bookings.hold("pb") for _ in range(3)]
        service = WebhookService(
            db, clock, sender, base_delay=timedelta(seconds=0.2), max_delay=timedelta(seconds=0.5)
        )
        stop = threading.Event()
        errors: list[BaseException] = []

        def work() -> None:
            try:
                while not stop.is_set():
                    service.fan_out()
                    service.deliver_due()
                    stop.wait(0.05)
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=work, daemon=True)
        started = time.monotonic()
        worker.start()
        try:
            b_has_all = partial(pair.b_has_all, db)
            assert wait_for(b_has_all, timeout=1.5), "b waited behind a's hanging endpoint"
            # b's reservations move on while a's first send still hangs.
            bookings.service.confirm(of_b[0], actor="vendor")
            bookings.hold("pb")
            assert wait_for(b_has_all, timeout=1.5), "b's new events waited for a's send"
            assert time.monotonic() - started < timeout
            assert [r.status for r in hanging.requests] == [0]  # a's first send, still out

            hanging.recover()
            a_events = events(db, "pa")
            assert wait_for(
                lambda: {e.event_id for e in a_events} <= set(hanging.accepted()), timeout=20
            ), "a's events were not delivered once a answered again"
        finally:
            stop.set()
            hanging.recover()
            worker.join(timeout=30)
        assert not worker.is_alive() and errors == []

    assert in_outbox_order(prompt.accepted(), events(db, "pb"))
    assert in_outbox_order(hanging.accepted(), events(db, "pa"))
    assert all(r.status in (0, 204) for r in hanging.requests)
    assert {d.status for d in deliveries(db)} == {"delivered"}


def test_a_hanging_partners_backlog_larger_than_a_batch_does_not_hide_another_partner(
    db: Database, live_clock: ManualClock
) -> None:
    """Partner a's endpoint hangs and a has more due deliveries than one batch holds, all
    due before b's: b is still found and served within a fraction of one of a's timeouts
    (the lookup of other due partners leaves out a partner with a send in flight, so a's
    rows ahead of b's never fill it)."""
    timeout = 4.0
    # Eight of a's reservations: eight deliveries due at once, all before b's.
    with hanging_pair(db, live_clock, timeout=timeout, a_holds=8) as pair:
        pair.bookings.hold("pb")
        service = WebhookService(db, SystemClock(), pair.sender, batch=4)
        service.fan_out()
        done = threading.Event()
        worker = threading.Thread(target=lambda: (service.deliver_due(), done.set()))
        started = time.monotonic()
        worker.start()
        try:
            assert wait_for(partial(pair.b_has_all, db), timeout=1.5), "a's backlog hid b"
            assert time.monotonic() - started < timeout
        finally:
            pair.hanging.recover()
            worker.join(timeout=30)
        assert done.is_set()


def test_lanes_send_to_several_partners_at_once_never_two_of_one_partner(
    db: Database, live_clock: ManualClock
) -> None:
    """Six partners, three lanes: never more than three sends at once, never two to one
    partner; every event delivered once, each reservation's in order."""
    partners = [f"p{i}" for i in range(6)]
    for partner in partners:
        add_partner(db, live_clock, partner, f"http://{partner}.test/hooks")
    bookings = Bookings(db, live_clock)
    for partner in partners * 2:
        bookings.hold(partner)
    lock = threading.Lock()
    in_flight: Counter[str] = Counter()
    peak, answered, overlaps = [0], [], []

    class SlowSender:
        def send(self, url: str, secret: str, *, message_id: str, **_: object) -> int:
            partner = url.split("//")[1].split(".")[0]
            with lock:
                in_flight[partner] += 1
                if in_flight[partner] > 1:
                    overlaps.append(partner)
                peak[0] = max(peak[0], sum(in_flight.values()))
            time.sleep(0.05)
            with lock:
                in_flight[partner] -= 1
                answered.append(message_id)
            return 204

    service = WebhookService(db, live_clock, SlowSender(), concurrency=3)
    service.fan_out()
    results = service.deliver_due()
    assert overlaps == [] and 2 <= peak[0] <= 3
    expected = events(db)
    assert len(results) == len(expected) == 24
    assert {r.status for r in results} == {"delivered"}
    assert in_outbox_order(answered, expected)
    with pytest.raises(ValueError, match="concurrency"):
        WebhookService(db, live_clock, SlowSender(), concurrency=9)


def test_a_last_attempt_that_outlasted_its_lease_is_not_made_again_and_its_answer_counts(
    db: Database, live_clock: ManualClock
) -> None:
    """max_attempts 1: the only attempt outlasts its lease, and another worker comes round
    meanwhile. It does not send the event again (no attempt left): the row is dead, and
    the next event of the reservation goes. Then the slow send is answered 2xx after all:
    the row is delivered."""
    add_partner(db, live_clock, "p1", "http://127.0.0.1:9/hooks")
    Bookings(db, live_clock).hold("p1")
    head, after = (e.event_id for e in events(db, "p1"))
    other = HookSender()
    peer = WebhookService(db, live_clock, other, max_attempts=1)
    meanwhile: list[DeliveryResult] = []
    seen: list[WebhookDelivery] = []

    def during(call: int) -> None:
        if call == 1:
            live_clock.advance(timedelta(seconds=31))
            meanwhile.extend(peer.deliver_due())
            seen.append(delivery(db, head))

    slow = HookSender(during)
    worker = WebhookService(db, live_clock, slow, max_attempts=1)
    worker.fan_out()
    results = worker.deliver_due()
    assert other.sent == [after] and slow.sent == [head]
    assert [(r.event_id, r.status, r.attempts) for r in meanwhile] == [
        (head, "dead", 1),
        (after, "delivered", 1),
    ]
    assert (seen[0].status, seen[0].attempts) == ("dead", 1)
    assert [(r.event_id, r.status, r.http_status) for r in results] == [(head, "delivered", 204)]
    row = delivery(db, head)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 1, None)
    assert peer.list(status="dead") == []


def test_stop_ends_a_round_after_the_send_in_flight(db: Database, live_clock: ManualClock) -> None:
    """What the daemon does on SIGTERM: the send in flight is recorded, nothing more is
    claimed, and later rounds send nothing."""
    expected = partner_with_holds(db, live_clock, 3)

    def during(call: int) -> None:
        if call == 1:
            service.stop()  # the other two first events are claimed already

    sender = HookSender(during)
    service = WebhookService(db, live_clock, sender)
    service.fan_out()
    first = expected[0].event_id
    assert [(r.event_id, r.status) for r in service.deliver_due()] == [(first, "delivered")]
    assert service.deliver_due() == [] and sender.sent == [first]
    assert {(d.status, d.attempts) for d in deliveries(db) if d.event_id != first} == {
        ("pending", 0)
    }


def test_a_send_without_an_answer_ends_its_partners_turn_and_gives_back_the_rest(
    db: Database, live_clock: ManualClock
) -> None:
    """The first send to p1 gets no answer: the rest of the lane's claim is given back (due
    now, the attempt not counted), and p1 has no further turn in this call, nor in the next
    while that row's backoff runs; once it is over, one call sends it all."""
    expected = partner_with_holds(db, live_clock, 3)
    firsts = firsts_of(expected)

    class SilentOnce:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def send(self, url: str, secret: str, *, message_id: str, **_: object) -> int:
            self.sent.append(message_id)
            if len(self.sent) == 1:
                raise WebhookSendFailed("webhook timed out", retryable=True)
            return 204

    sender = SilentOnce()
    service = WebhookService(db, live_clock, sender, base_delay=timedelta(seconds=1))
    service.fan_out()
    (result,) = service.deliver_due()
    assert (result.event_id, result.status, result.attempts, result.http_status) == (
        firsts[0],
        "pending",
        1,
        None,
    )
    assert sender.sent == [firsts[0]]
    for given_back in firsts[1:]:
        row = delivery(db, given_back)
        assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, live_clock.now())
    assert service.deliver_due() == [] and sender.sent == [firsts[0]]  # cooling off
    live_clock.advance(timedelta(seconds=1.5))  # the backoff: 1 s, jitter at most 1.5x
    results = service.deliver_due()
    assert {r.event_id for r in results} == {e.event_id for e in expected}
    assert {(r.event_id == firsts[0], r.status, r.attempts) for r in results} == {
        (True, "delivered", 2),
        (False, "delivered", 1),
    }
    assert in_outbox_order(sender.sent[1:], expected)


def test_a_dead_endpoint_is_tried_once_per_backoff_and_never_starves_a_live_one(
    db: Database, live_clock: ManualClock
) -> None:
    """Two partners' endpoints never answer, one lane: each is tried once, then left alone
    on every call until its backoff is over (it does not take the lane from the live partner
    call after call)."""
    for partner in ("dead1", "dead2", "live"):
        add_partner(db, live_clock, partner, f"http://{partner}.test/hooks")
    bookings = Bookings(db, live_clock)
    for partner in ("dead1", "dead2") * 3:
        bookings.hold(partner)
    tried: list[str] = []

    class DeadOrAlive:
        def send(self, url: str, secret: str, *, message_id: str, **_: object) -> int:
            partner = url.split("//")[1].split(".")[0]
            tried.append(partner)
            if partner.startswith("dead"):
                raise WebhookSendFailed("webhook timed out", retryable=True)
            return 204

    service = WebhookService(
        db, live_clock, DeadOrAlive(), concurrency=1, base_delay=timedelta(seconds=10),
        max_delay=timedelta(hours=1), rng=random.Random(7),
    )  # fmt: skip
    service.fan_out()
    service.deliver_due()
    assert sorted(tried) == ["dead1", "dead2"]
    for _ in range(5):  # a new live event per call, 1 s apart: the dead are not due again
        tried.clear()
        bookings.hold("live")
        live_clock.advance(timedelta(seconds=1))
        service.fan_out()
        delivered = service.deliver_due()
        assert set(tried) == {"live"} and {r.status for r in delivered} == {"delivered"}
    gaps = []
    for _ in range(3):  # each probe fails: the next waits out a backoff
        started = live_clock.now()
        tried.clear()
        for _ in range(600):
            live_clock.advance(timedelta(seconds=1))
            service.deliver_due()
            if "dead1" in tried:
                break
        else:
            pytest.fail("dead1 was not tried again within 10 minutes")
        gaps.append(live_clock.now() - started)
        assert tried.count("dead1") == 1
    # Between two probes at least the backoff of 10 s with its least jitter (0.5x) passes;
    # were dead1 not cooling off, its rows released by a probe would go on the next call.
    assert all(gap >= timedelta(seconds=5) for gap in gaps[1:])


# -------------------------------------------------------------------------- secret rotation


def signatures(request: Request) -> list[str]:
    """The `v1,...` signatures of a request's `webhook-signature` header, in order."""
    return request.headers["webhook-signature"].split(" ")


def signed_with(request: Request, *keys: str) -> list[str]:
    """The signatures `keys` make of the request, in that order: what the header must be."""
    when = datetime.fromtimestamp(int(request.headers["webhook-timestamp"]), UTC)
    return [Webhook(key).sign(request.webhook_id, when, request.body.decode()) for key in keys]


def test_the_sender_signs_with_both_secrets_the_new_one_first(
    sender: HttpWebhookSender, live_clock: ManualClock
) -> None:
    old, new = new_secret(), new_secret()
    with Receiver(secret=old) as old_side, Receiver(secret=new) as new_side:
        for side in (old_side, new_side):
            status = sender.send(
                side.url,
                new,
                message_id="evt_1",
                timestamp=live_clock.now(),
                payload={"n": 1},
                previous_secret=old,
            )
            assert status == 204
    for request in old_side.requests + new_side.requests:
        assert request.verified and signatures(request) == signed_with(request, new, old)
    # Neither secret is ever in an error message, the previous one included.
    with Receiver() as closed:
        url = closed.url
    with pytest.raises(WebhookSendFailed) as refused:
        sender.send(
            url, new, message_id="e", timestamp=live_clock.now(), payload={}, previous_secret=old
        )
    with pytest.raises(WebhookSendFailed) as malformed:
        sender.send(
            url,
            new,
            message_id="e",
            timestamp=live_clock.now(),
            payload={},
            previous_secret="whsec_abcde",
        )
    assert malformed.value.retryable is False and "abcde" not in malformed.value.message
    for message in (refused.value.message, malformed.value.message):
        for key in (old, new):
            assert key not in message and key.removeprefix("whsec_") not in message


def test_during_a_rotations_overlap_receivers_with_either_secret_accept(
    db: Database, live_clock: ManualClock, sender: HttpWebhookSender
) -> None:
    """The partner's receivers not yet given the new secret keep accepting every delivery
    (and test event) while the overlap lasts; the ones already given it accept them too."""
    keys = ApiKeyService(db, live_clock)
    with Receiver() as old_side, Receiver() as new_side:
        _, old = keys.add_partner("p1", "Partner 1", old_side.url)
        new = keys.rotate_webhook_secret("p1", overlap=timedelta(hours=24))
        old_side.secret, new_side.secret = old, new
        stored = keys.get_partner("p1")
        assert (stored.webhook_secret, stored.previous_webhook_secret) == (new, old)
        assert stored.previous_webhook_secret_until == live_clock.now() + timedelta(hours=24)
        bookings = Bookings(db, live_clock)
        service = WebhookService(db, live_clock, sender)
        bookings.hold("p1")
        drive(service, live_clock)
        assert invoke(service, "test", "--partner", "p1").exit_code == 0
        keys.set_webhook_url("p1", new_side.url)
        bookings.hold("p1")
        drive(service, live_clock)
        assert service.send_test("p1") == 204
    assert len(old_side.requests) == len(new_side.requests) == 3
    for request in old_side.requests + new_side.requests:
        assert request.verified and request.status == 204
        assert signatures(request) == signed_with(request, new, old)  # two v1, new first
    assert {d.status for d in deliveries(db)} == {"delivered"}


def test_once_the_overlap_is_over_only_the_new_secret_verifies(
    db: Database, live_clock: ManualClock, sender: HttpWebhookSender
) -> None:
    """From the overlap's end on (the service's clock decides), one signature: the receiver
    still holding the old secret refuses the delivery, which is retried, and accepts once
    the partner has the new secret."""
    keys = ApiKeyService(db, live_clock)
    with Receiver() as receiver:
        _, old = keys.add_partner("p1", "Partner 1", receiver.url)
        new = keys.rotate_webhook_secret("p1", overlap=timedelta(minutes=1))
        receiver.secret = old
        bookings = Bookings(db, live_clock)
        service = WebhookService(db, live_clock, sender, base_delay=timedelta(seconds=1))
        bookings.hold("p1")
        live_clock.advance(timedelta(seconds=59))  # still in the overlap
        drive(service, live_clock)
        live_clock.advance(timedelta(seconds=1))  # the overlap's end: the old one is out
        bookings.hold("p1")
        service.fan_out()
        (refused,) = service.deliver_due()
        assert (refused.status, refused.http_status) == ("pending", 401)
        assert service.send_test("p1") == 401
        receiver.secret = new  # the partner deploys the new secret
        drive(service, live_clock)
    during, (after, test, retried, last) = receiver.requests[:2], receiver.requests[2:]
    for request in during:
        assert request.verified and signatures(request) == signed_with(request, new, old)
    for request in (after, test, retried, last):
        assert signatures(request) == signed_with(request, new)
    assert [r.verified for r in (after, test, retried, last)] == [False, False, True, True]
    assert retried.webhook_id == after.webhook_id
    assert {d.status for d in deliveries(db)} == {"delivered"}


def test_the_send_s_own_time_decides_not_the_claim_s(
    db: Database, live_clock: ManualClock, sender: HttpWebhookSender
) -> None:
    """Two deliveries claimed together in the overlap; it ends while the first is sent:
    the second carries the new secret's signature only."""
    keys = ApiKeyService(db, live_clock)
    with Receiver() as receiver:
        _, old = keys.add_partner("p1", "Partner 1", receiver.url)
        new = keys.rotate_webhook_secret("p1", overlap=timedelta(seconds=30))
        receiver.secret = new
        bookings = Bookings(db, live_clock)
        bookings.hold("p1")
        bookings.hold("p1")

        class SlowFirstSend:
            def send(self, *args: Any, **kwargs: Any) -> int:
                status = sender.send(*args, **kwargs)
                if len(receiver.requests) == 1:
                    live_clock.advance(timedelta(seconds=30))  # the overlap ends meanwhile
                return status

        service = WebhookService(db, live_clock, SlowFirstSend())
        service.fan_out()
        assert [r.status for r in service.deliver_due()] == ["delivered"] * 4
    first, second, *rest = receiver.requests
    assert signatures(first) == signed_with(first, new, old)
    for request in (second, *rest):
        assert signatures(request) == signed_with(request, new)


def test_a_rotation_without_overlap_signs_with_the_new_secret_only_at_once(
    db: Database, live_clock: ManualClock, sender: HttpWebhookSender
) -> None:
    keys = ApiKeyService(db, live_clock)
    with Receiver() as receiver:
        _, old = keys.add_partner("p1", "Partner 1", receiver.url)
        new = keys.rotate_webhook_secret("p1", overlap=timedelta(0))
        stored = keys.get_partner("p1")
        assert (stored.previous_webhook_secret, stored.previous_webhook_secret_until) == (None,) * 2
        receiver.secret = old
        service = WebhookService(db, live_clock, sender)
        assert service.send_test("p1") == 401
        receiver.secret = new
        assert service.send_test("p1") == 204
    for request in receiver.requests:
        assert signatures(request) == signed_with(request, new)


def test_rotating_again_in_an_overlap_drops_the_secret_before(
    db: Database, live_clock: ManualClock, sender: HttpWebhookSender
) -> None:
    """Only the secret just replaced overlaps: the first one is not used any more."""
    keys = ApiKeyService(db, live_clock)
    with Receiver() as receiver:
        _, first = keys.add_partner("p1", "Partner 1", receiver.url)
        second = keys.rotate_webhook_secret("p1", overlap=timedelta(hours=24))
        live_clock.advance(timedelta(seconds=5))
        third = keys.rotate_webhook_secret("p1", overlap=timedelta(hours=1))
        stored = keys.get_partner("p1")
        assert (stored.webhook_secret, stored.previous_webhook_secret) == (third, second)
        assert stored.previous_webhook_secret_until == live_clock.now() + timedelta(hours=1)
        service = WebhookService(db, live_clock, sender)
        receiver.secret = first
        assert service.send_test("p1") == 401
        receiver.secret = second
        assert service.send_test("p1") == 204
    for request in receiver.requests:
        assert signatures(request) == signed_with(request, third, second)
    with pytest.raises(ValidationFailed):
        keys.rotate_webhook_secret("p1", overlap=timedelta(seconds=-1))
    assert keys.get_partner("p1").webhook_secret == third


def test_a_url_moved_or_a_secret_rotated_mid_batch_counts_from_the_next_send(
    db: Database, live_clock: ManualClock
) -> None:
    """A worker claims a partner's due rows in chunks. A URL moved, or a leaked secret rotated
    without overlap, while the chunk is being sent must count from the next send, not after
    the whole chunk has gone to the old URL under the old secret."""
    keys = ApiKeyService(db, live_clock)
    with Receiver() as old_home, Receiver() as new_home:
        _, old_home.secret = keys.add_partner("p1", "Partner 1", old_home.url)
        bookings = Bookings(db, live_clock)
        for _ in range(3):
            bookings.hold("p1")
        moved: list[str] = []

        class MovesAfterItsFirstSend(HttpWebhookSender):
            def send(self, *args: Any, **kwargs: Any) -> int:
                status = super().send(*args, **kwargs)
                if not moved:  # the operator acts while the chunk is being sent
                    keys.set_webhook_url("p1", new_home.url)
                    moved.append(keys.rotate_webhook_secret("p1", overlap=timedelta(0)))
                    new_home.secret = moved[0]
                return status

        with MovesAfterItsFirstSend(timeout=5.0) as sender:
            service = WebhookService(db, live_clock, sender)
            service.fan_out()
            results = service.deliver_due()
    assert len(results) == len(events(db, "p1")) > 2
    assert len(old_home.requests) == 1
    assert len(new_home.requests) == len(results) - 1
    for request in new_home.requests:
        assert signatures(request) == signed_with(request, moved[0])
