"""Asking the vendor: notifications per channel, retries, and single-use signed tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from bookiji.domain.errors import DeadlinePassed, InvalidTransition
from bookiji.domain.states import StageTTLs
from bookiji.services.clock import ManualClock
from bookiji.services.confirmation import ConfirmationService, InvalidToken, installation_key
from bookiji.services.documents import load_reservation_document
from bookiji.services.ports import NotificationFailed, VendorNotification
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.store.database import Database
from bookiji.store.models import VendorNotificationRow
from bookiji.store.uow import UnitOfWork
from tests.factories import add_vendor

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
START = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


@dataclass
class Inbox:
    """A channel that records what it delivers, and can be told to fail."""

    channel: str
    sent: list[tuple[str, VendorNotification]] = field(default_factory=list)
    failures: list[NotificationFailed] = field(default_factory=list)

    def send(self, destination: str, notification: VendorNotification) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((destination, notification))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def inboxes() -> dict[str, Inbox]:
    return {name: Inbox(name) for name in ("console", "email", "sms")}


@pytest.fixture
def setup(
    db: Database, clock: ManualClock, inboxes: dict[str, Inbox]
) -> tuple[ReservationService, ConfirmationService]:
    add_vendor(db, "quiet")
    add_vendor(db, "loud", notify={"email": "ana@salon.example", "sms": "+447700900123"})
    ttls = StageTTLs()
    confirmation = ConfirmationService(
        db, clock, ttls, inboxes, lambda: installation_key(db, clock),
        answer_url="https://api.example",
    )  # fmt: skip
    reservations = ReservationService(
        db,
        clock,
        ttls,
        ask_vendor=confirmation.plan_ask,
        deliver=lambda ids: [confirmation.deliver(i) for i in ids],
    )
    return reservations, confirmation


def hold(reservations: ReservationService, vendor: str, hours: int = 0) -> str:
    start = START + timedelta(hours=hours)
    return reservations.create_hold(
        HoldRequest(vendor, start, start + timedelta(hours=1), "req-1"), actor="test"
    ).reservation_id


def state(db: Database, rid: str) -> str:
    return str(load_reservation_document(db, rid)["state"])


def test_a_hold_asks_the_vendor_on_each_of_its_channels(
    setup: tuple[ReservationService, ConfirmationService],
    inboxes: dict[str, Inbox],
    db: Database,
) -> None:
    reservations, _ = setup
    rid = hold(reservations, "loud")
    assert state(db, rid) == "AWAITING_VENDOR_CONFIRMATION"
    [(email_to, note)] = inboxes["email"].sent
    [(sms_to, _)] = inboxes["sms"].sent
    assert (email_to, sms_to) == ("ana@salon.example", "+447700900123")
    assert inboxes["console"].sent == []
    assert note.reservation_id == rid and note.token.startswith("bkv1.")
    assert note.expires_at == datetime(2026, 12, 1, 8, 10, tzinfo=UTC)
    assert note.answer_url == f"https://api.example/v1/reservations/{rid}/vendor-confirmation"
    quiet = hold(reservations, "quiet")
    [(destination, _)] = inboxes["console"].sent
    assert destination == "quiet" and state(db, quiet) == "AWAITING_VENDOR_CONFIRMATION"


def test_tokens_answer_once_and_only_for_their_reservation(
    setup: tuple[ReservationService, ConfirmationService],
    inboxes: dict[str, Inbox],
    db: Database,
) -> None:
    reservations, confirmation = setup
    first, second = hold(reservations, "quiet"), hold(reservations, "quiet", hours=2)
    token = {n.reservation_id: n.token for _, n in inboxes["console"].sent}
    with pytest.raises(InvalidToken, match="another reservation"):
        confirmation.answer(first, token[second], "confirm")
    forged = token[first][:-4] + ("AAAA" if not token[first].endswith("AAAA") else "BBBB")
    with pytest.raises(InvalidToken, match="signature"):
        confirmation.answer(first, forged, "confirm")
    with pytest.raises(InvalidTransition):
        confirmation.answer(first, token[first], "maybe")
    assert confirmation.answer(first, token[first], "confirm") == "CONFIRMED_BY_VENDOR"
    # The same answer again (the first reply was lost): the current state, nothing new.
    logged = len(load_reservation_document(db, first)["stateHistory"])
    assert confirmation.answer(first, token[first], "confirm") == "CONFIRMED_BY_VENDOR"
    assert len(load_reservation_document(db, first)["stateHistory"]) == logged
    with pytest.raises(InvalidToken, match="already used to confirm"):
        confirmation.answer(first, token[first], "decline")
    assert confirmation.answer(second, token[second], "decline") == "CANCELLED"
    last = load_reservation_document(db, second)["stateHistory"][-1]
    assert last["actor"].startswith("vendor:token:") and last["details"] == {"decision": "decline"}


def test_an_answer_after_the_deadline_is_deadline_passed_and_expires_the_hold(
    setup: tuple[ReservationService, ConfirmationService],
    inboxes: dict[str, Inbox],
    clock: ManualClock,
    db: Database,
) -> None:
    reservations, confirmation = setup
    rid = hold(reservations, "quiet")
    [(_, note)] = inboxes["console"].sent
    clock.advance(timedelta(minutes=10))
    late_match = "passed while it was AWAITING_VENDOR_CONFIRMATION"
    with pytest.raises(DeadlinePassed, match=late_match) as late:
        confirmation.answer(rid, note.token, "confirm")
    assert late.value.details["state"] == "FAILED_VENDOR_TIMEOUT"
    assert state(db, rid) == "FAILED_VENDOR_TIMEOUT"  # expired on the spot, not confirmed
    with pytest.raises(DeadlinePassed, match="the reservation is now FAILED_VENDOR_TIMEOUT"):
        confirmation.answer(rid, note.token, "confirm")  # and said again the same way


def test_failed_deliveries_are_retried_with_backoff_and_permanent_ones_stop(
    setup: tuple[ReservationService, ConfirmationService],
    inboxes: dict[str, Inbox],
    clock: ManualClock,
    db: Database,
) -> None:
    reservations, confirmation = setup
    inboxes["email"].failures.append(NotificationFailed("451 try later", retryable=True))
    inboxes["sms"].failures.append(NotificationFailed("21211 invalid number", retryable=False))
    rid = hold(reservations, "loud")
    with UnitOfWork(db, readonly=True) as uow:
        rows = {r.channel: r for r in uow.session.exec(select(VendorNotificationRow)).all()}
    assert rows["email"].status == "pending" and rows["email"].attempts == 1
    assert rows["email"].last_error == "451 try later"
    assert rows["sms"].status == "failed"
    assert confirmation.deliver_due() == []  # not due yet
    clock.advance(timedelta(seconds=11))
    [retried] = confirmation.deliver_due()
    assert (retried.channel, retried.status) == ("email", "sent")
    assert inboxes["email"].sent[0][1].reservation_id == rid
    assert state(db, rid) == "AWAITING_VENDOR_CONFIRMATION"  # the deadline runs regardless
