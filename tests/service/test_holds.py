"""Holds, vendor confirmation, cancellation and expiry, on SQLite and Postgres."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from bookiji.domain.errors import (
    IdempotencyKeyReused,
    InvalidTransition,
    NotFound,
    SlotUnavailable,
    ValidationFailed,
)
from bookiji.domain.states import ReservationState, StageTTLs, replay
from bookiji.services.clock import ManualClock
from bookiji.services.documents import load_reservation_document
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.store.database import Database
from bookiji.store.uow import UnitOfWork
from tests.conftest import T0
from tests.factories import add_vendor

S = ReservationState
DAY = (T0 + timedelta(days=1)).replace(hour=0)


def at(hour: int, minute: int = 0) -> object:
    return DAY.replace(hour=hour, minute=minute)


@pytest.fixture
def service(db: Database, clock: ManualClock, ttls: StageTTLs) -> ReservationService:
    add_vendor(db)
    return ReservationService(db, clock, ttls)


def hold(
    service: ReservationService,
    start_hour: float,
    end_hour: float,
    *,
    vendor: str = "v1",
    requester: str = "req-1",
    key: str | None = None,
    partner: str | None = None,
    metadata: dict[str, object] | None = None,
) -> str:
    start = DAY + timedelta(hours=start_hour)
    end = DAY + timedelta(hours=end_hour)
    return service.create_hold(
        HoldRequest(vendor, start, end, requester, partner, key, metadata or {}), actor="test"
    ).reservation_id


def doc(db: Database, reservation_id: str) -> dict[str, object]:
    return load_reservation_document(db, reservation_id)


def outbox_types(db: Database, reservation_id: str) -> list[str]:
    with UnitOfWork(db, readonly=True) as uow:
        return [e.type for e in uow.outbox.for_reservation(reservation_id)]


def test_a_hold_is_held_with_its_deadline_log_and_events(
    service: ReservationService, db: Database, clock: ManualClock
) -> None:
    rid = hold(service, 10, 11, metadata={"note": "first visit"})
    document = doc(db, rid)
    assert document["state"] == "HELD"
    assert document["stateDeadline"] == "2026-12-01T08:10:00Z"
    assert document["slotStartTime"] == "2026-12-02T10:00:00Z"
    assert document["metadata"] == {"note": "first visit"}
    assert document["payment"]["vendorDeposit"]["amount"] == 1000  # type: ignore[index]
    assert document["payment"]["requesterPayment"]["state"] == "not_started"  # type: ignore[index]
    history = document["stateHistory"]
    assert [(h["from"], h["to"]) for h in history] == [  # type: ignore[union-attr]
        (None, "INTENT_CREATED"),
        ("INTENT_CREATED", "HELD"),
    ]
    assert outbox_types(db, rid) == ["reservation.intent_created", "reservation.held"]


def test_overlapping_holds_are_refused_and_adjacent_ones_are_not(
    service: ReservationService, db: Database
) -> None:
    first = hold(service, 10, 11)
    with pytest.raises(SlotUnavailable) as caught:
        hold(service, 10.5, 11.5, requester="req-2")
    assert caught.value.code == "slot_unavailable"
    hold(service, 11, 12, requester="req-2")  # [11:00,12:00) touches [10:00,11:00)
    hold(service, 9, 10, requester="req-3")
    with UnitOfWork(db, readonly=True) as uow:
        assert len(uow.reservations.list(limit=10)) == 3
        assert uow.reservations.overlapping_active_pairs() == []
    # Another vendor's calendar is independent.
    add_vendor(db, "v2")
    hold(service, 10, 11, vendor="v2")
    assert doc(db, first)["state"] == "HELD"


def test_buffers_widen_the_block(db: Database, clock: ManualClock, ttls: StageTTLs) -> None:
    add_vendor(db, "buffered", buffer_before_minutes=15, buffer_after_minutes=10)
    service = ReservationService(db, clock, ttls)
    rid = hold(service, 10, 11, vendor="buffered")
    document = doc(db, rid)
    assert document["blockStartTime"] == "2026-12-02T09:45:00Z"
    assert document["blockEndTime"] == "2026-12-02T11:10:00Z"
    with pytest.raises(SlotUnavailable):
        hold(service, 11, 12, vendor="buffered", requester="r2")  # its buffer hits ours
    hold(service, 11.5, 12, vendor="buffered", requester="r2")  # 11:15 block start >= 11:10


def test_a_released_slot_can_be_held_again(service: ReservationService, db: Database) -> None:
    first = hold(service, 10, 11)
    service.cancel(first, actor="test", note="changed plans")
    second = hold(service, 10, 11, requester="req-2")
    assert doc(db, first)["state"] == "CANCELLED"
    assert doc(db, second)["state"] == "HELD"


def test_min_notice_and_horizon(db: Database, clock: ManualClock, ttls: StageTTLs) -> None:
    add_vendor(db, "strict", min_notice_minutes=120, max_advance_days=7)
    service = ReservationService(db, clock, ttls)
    soon = clock.now() + timedelta(minutes=60)
    with pytest.raises(SlotUnavailable, match="minimum notice"):
        service.create_hold(HoldRequest("strict", soon, soon + timedelta(hours=1), "r"), actor="t")
    far = clock.now() + timedelta(days=7)
    with pytest.raises(SlotUnavailable, match="horizon"):
        service.create_hold(HoldRequest("strict", far, far + timedelta(hours=1), "r"), actor="t")
    ok = clock.now() + timedelta(minutes=120)
    service.create_hold(HoldRequest("strict", ok, ok + timedelta(hours=1), "r"), actor="t")


@pytest.mark.parametrize(
    ("start_hour", "end_hour", "message"),
    [(11, 10, "after"), (10, 10, "after"), (10, 10.05, "5 minutes"), (10, 35, "24 hours")],
)
def test_bad_slots_are_rejected_and_write_nothing(
    service: ReservationService, db: Database, start_hour: float, end_hour: float, message: str
) -> None:
    with pytest.raises(ValidationFailed, match=message):
        hold(service, start_hour, end_hour)
    with UnitOfWork(db, readonly=True) as uow:
        assert uow.reservations.list() == []


def test_unknown_vendor_is_not_found(service: ReservationService) -> None:
    with pytest.raises(NotFound, match="unknown vendor"):
        hold(service, 10, 11, vendor="nobody")


def test_idempotent_replay_returns_the_original(service: ReservationService, db: Database) -> None:
    first = service.create_hold(
        HoldRequest("v1", at(10), at(11), "req-1", idempotency_key="k-1"),
        actor="t",  # type: ignore[arg-type]
    )
    again = service.create_hold(
        HoldRequest("v1", at(10), at(11), "req-1", idempotency_key="k-1"),
        actor="t",  # type: ignore[arg-type]
    )
    assert not first.replayed and again.replayed
    assert again.reservation_id == first.reservation_id
    with pytest.raises(IdempotencyKeyReused):
        service.create_hold(
            HoldRequest("v1", at(12), at(13), "req-1", idempotency_key="k-1"),
            actor="t",  # type: ignore[arg-type]
        )
    # The same key from another partner is another key.
    with UnitOfWork(db) as uow:
        uow.session.execute(
            text(
                "INSERT INTO partners (id, name, created_at) "
                "VALUES ('p2', 'Partner 2', '2026-01-01 00:00:00+00:00')"
            )
        )
        uow.commit()
    other = service.create_hold(
        HoldRequest("v1", at(12), at(13), "req-1", partner_id="p2", idempotency_key="k-1"),  # type: ignore[arg-type]
        actor="t",
    )
    assert other.reservation_id != first.reservation_id and not other.replayed
    with UnitOfWork(db, readonly=True) as uow:
        assert len(uow.reservations.list()) == 2


def test_confirm_decline_cancel_walk_the_table(service: ReservationService, db: Database) -> None:
    confirmed = hold(service, 10, 11)
    assert service.confirm(confirmed, actor="vendor:v1") is True
    assert service.confirm(confirmed, actor="vendor:v1") is False  # repeat: no-op
    document = doc(db, confirmed)
    assert document["state"] == "CONFIRMED_BY_VENDOR"
    assert [h["to"] for h in document["stateHistory"]][-2:] == [  # type: ignore[union-attr]
        "AWAITING_VENDOR_CONFIRMATION",
        "CONFIRMED_BY_VENDOR",
    ]
    with pytest.raises(InvalidTransition):
        service.decline(confirmed, actor="vendor:v1")

    declined = hold(service, 12, 13)
    service.request_vendor_confirmation(declined, actor="system")
    assert service.decline(declined, actor="vendor:v1") is True
    assert doc(db, declined)["state"] == "CANCELLED"
    assert service.cancel(declined, actor="op") is False  # already cancelled: no-op
    with pytest.raises(InvalidTransition):
        service.confirm(declined, actor="vendor:v1")

    with pytest.raises(NotFound):
        service.cancel("res_missing", actor="op")


def test_partner_sees_only_its_own_reservations(service: ReservationService, db: Database) -> None:
    rid = hold(service, 10, 11)
    with pytest.raises(NotFound):
        load_reservation_document(db, rid, partner_id="someone-else")
    with pytest.raises(NotFound):
        service.cancel(rid, actor="partner", partner_id="someone-else")
    assert doc(db, rid)["state"] == "HELD"


def test_expiry_moves_each_stage_to_its_failure(
    service: ReservationService, db: Database, clock: ManualClock
) -> None:
    unanswered = hold(service, 10, 11)
    confirmed = hold(service, 12, 13)
    service.confirm(confirmed, actor="vendor")
    assert service.expire_due() == []

    clock.advance(timedelta(minutes=10))
    expired = service.expire_due()
    assert [(e.reservation_id, e.to_state) for e in expired] == [
        (unanswered, "FAILED_VENDOR_TIMEOUT")
    ]
    assert doc(db, confirmed)["state"] == "CONFIRMED_BY_VENDOR"

    clock.advance(timedelta(minutes=21))
    assert [(e.reservation_id, e.to_state) for e in service.expire_due()] == [
        (confirmed, "EXPIRED")
    ]
    assert service.expire_due() == []  # nothing twice
    # The expired slot is free again.
    hold(service, 10, 11, requester="req-2")


def test_expiry_works_in_batches(
    service: ReservationService, db: Database, clock: ManualClock
) -> None:
    ids = [hold(service, h, h + 1, requester=f"r{h}") for h in range(0, 12)]
    clock.advance(timedelta(hours=1))
    expired = service.expire_due(batch_size=5)
    assert sorted(e.reservation_id for e in expired) == sorted(ids)
    with UnitOfWork(db, readonly=True) as uow:
        assert uow.reservations.count_by_state() == {"FAILED_VENDOR_TIMEOUT": 12}


def test_every_log_replays_to_its_reservation(
    service: ReservationService, db: Database, clock: ManualClock
) -> None:
    a, b, c = hold(service, 1, 2), hold(service, 3, 4), hold(service, 5, 6)
    service.confirm(a, actor="v")
    service.decline(b, actor="v")
    clock.advance(timedelta(hours=1))
    service.expire_due()
    with UnitOfWork(db, readonly=True) as uow:
        for rid in (a, b, c):
            log = uow.transitions.for_reservation(rid)
            replayed = replay(
                (S(t.from_state) if t.from_state else None, S(t.to_state)) for t in log
            )
            reservation = uow.reservations.get(rid)
            assert reservation is not None and replayed.value == reservation.state


def test_an_idempotency_key_past_its_lifetime_starts_afresh_and_is_purged(
    service: ReservationService, db: Database
) -> None:
    """Kept 7 days, then forgotten: no replay of the old answer (which holds the requester's
    data), the key may name a new request, and the expiry job deletes what is left."""
    first = hold(service, 10, 11, key="k-1")
    hold(service, 14, 15, key="k-2")
    with UnitOfWork(db) as uow:
        uow.session.execute(
            text("UPDATE idempotency_keys SET expires_at = :past"), {"past": T0 - timedelta(days=1)}
        )
        uow.commit()
    assert service.remembered_response(None, "k-1") is None
    again = service.create_hold(
        HoldRequest("v1", at(12), at(13), "req-1", idempotency_key="k-1"),
        actor="t",  # type: ignore[arg-type]
    )
    assert not again.replayed and again.reservation_id != first
    assert service.purge_idempotency() == 1  # k-2's; k-1 now names the new request
    assert service.create_hold(
        HoldRequest("v1", at(12), at(13), "req-1", idempotency_key="k-1"),
        actor="t",  # type: ignore[arg-type]
    ).replayed
