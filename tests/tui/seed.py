"""A fixed, realistic day for the dashboard: snapshots, the README screenshot and query tests.

Every id and instant is fixed (no `new_id`, no wall clock), so the screens it produces are
byte-for-byte stable. Rows are written straight through the store, in the order the
workflow would have written them, so the transition log replays to each stored state and
its ids are chronological. NOW is the instant the dashboard's ManualClock shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bookiji.domain.states import ReservationState
from bookiji.store.database import Database
from bookiji.store.models import (
    CompensationAction,
    OutboxEvent,
    Partner,
    Reservation,
    ReservationTransition,
    Vendor,
    WebhookDelivery,
)
from bookiji.store.uow import UnitOfWork
from tests.factories import ALWAYS_OPEN

S = ReservationState
NOW = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)
DAY_START = datetime(2026, 12, 1, tzinfo=UTC)

VENDORS = {
    # id: (name, timezone, price, deposit, currency)
    "studio-a": ("Studio A", "Europe/Paris", 6000, 1500, "eur"),
    "dr-lee": ("Dr Lee Physio", "America/New_York", 9000, 2000, "usd"),
    "yoga-loft": ("Yoga Loft", "Asia/Tokyo", 4000, 1000, "jpy"),
}
PARTNERS = {"acme": "Acme Bookings", "globex": "Globex Travel"}


@dataclass(frozen=True)
class Seeded:
    """The reservation ids of the seed, by what each one shows."""

    held: str = "res_4f2a9c1e7b3d5a8f6c0e1b2d"
    awaiting_vendor: str = "res_8b1d3f5a7c9e0b2d4f6a8c1e"
    overdue_vendor: str = "res_2c4e6a8b0d1f3a5c7e9b1d3f"
    awaiting_payment: str = "res_9a7c5e3b1d0f2a4c6e8b0d2f"
    stuck_commit: str = "res_6d8f0a2c4e1b3d5f7a9c0e2b"
    committed: str = "res_1e3a5c7e9b0d2f4a6c8e0b1d"
    failed_commit: str = "res_7f9b1d3e5a0c2e4b6d8f1a3c"
    cancelled: str = "res_3b5d7f9a1c0e2b4d6f8a0c2e"


IDS = Seeded()


def _at(hhmm: str, day: datetime = DAY_START) -> datetime:
    hours, minutes = (int(x) for x in hhmm.split(":"))
    return day + timedelta(hours=hours, minutes=minutes)


@dataclass
class _Plan:
    id: str
    vendor: str
    partner: str | None
    requester: str
    slot: datetime
    steps: list[tuple[str, S, str, str]]  # (hh:mm, to, reason, actor)
    deadline: datetime | None
    vendor_money: tuple[str, str | None] = ("not_started", None)
    requester_money: tuple[str, str | None] = ("not_started", None)


PLANS = [
    _Plan(IDS.committed, "studio-a", "acme", "alice@example.com", _at("09:00") + timedelta(1),
          [("09:31", S.INTENT_CREATED, "hold requested", "partner:acme"),
           ("09:31", S.HELD, "slot free; hold placed", "partner:acme"),
           ("09:31", S.AWAITING_VENDOR_CONFIRMATION, "vendor asked to confirm", "system:notify"),
           ("09:36", S.CONFIRMED_BY_VENDOR, "confirmed by vendor", "vendor:token"),
           ("09:36", S.AWAITING_VENDOR_AUTH, "vendor deposit requested", "system:payments"),
           ("09:36", S.VENDOR_AUTHORIZED, "vendor deposit authorized", "system:payments"),
           ("09:36", S.AWAITING_REQUESTER_AUTH, "awaiting the requester's payment",
            "system:payments"),
           ("10:26", S.AUTHORIZED_BOTH, "requester payment authorized", "partner:acme"),
           ("10:26", S.COMMIT_IN_PROGRESS, "committing", "partner:acme"),
           ("10:26", S.COMMITTED, "both captured; booked", "partner:acme")],
          None, ("captured", "pi_3QvA1studioDeposit01"), ("captured", "pi_3QvA1studioPrice001")),
    _Plan(IDS.failed_commit, "dr-lee", "globex", "bob@example.com", _at("15:00") + timedelta(2),
          [("09:45", S.INTENT_CREATED, "hold requested", "partner:globex"),
           ("09:45", S.HELD, "slot free; hold placed", "partner:globex"),
           ("09:45", S.AWAITING_VENDOR_CONFIRMATION, "vendor asked to confirm", "system:notify"),
           ("09:50", S.CONFIRMED_BY_VENDOR, "confirmed by vendor", "operator:cli"),
           ("09:50", S.AWAITING_VENDOR_AUTH, "vendor deposit requested", "system:payments"),
           ("09:50", S.VENDOR_AUTHORIZED, "vendor deposit authorized", "system:payments"),
           ("09:50", S.AWAITING_REQUESTER_AUTH, "awaiting the requester's payment",
            "system:payments"),
           ("10:24", S.AUTHORIZED_BOTH, "requester payment authorized", "partner:globex"),
           ("10:24", S.COMMIT_IN_PROGRESS, "committing", "partner:globex"),
           ("10:25", S.FAILED_COMMIT, "requester capture failed: card_declined",
            "partner:globex")],
          None, ("captured", "pi_3QvB2leeDeposit00001"), ("released", "pi_3QvB2leePrice000001")),
    _Plan(IDS.cancelled, "studio-a", "globex", "carol@example.com", _at("11:00") + timedelta(3),
          [("10:05", S.INTENT_CREATED, "hold requested", "partner:globex"),
           ("10:05", S.HELD, "slot free; hold placed", "partner:globex"),
           ("10:05", S.AWAITING_VENDOR_CONFIRMATION, "vendor asked to confirm", "system:notify"),
           ("10:27", S.CANCELLED, "requester changed plans", "partner:globex")],
          None),
    _Plan(IDS.stuck_commit, "yoga-loft", "acme", "dan@example.com", _at("01:00") + timedelta(2),
          [("10:06", S.INTENT_CREATED, "hold requested", "partner:acme"),
           ("10:06", S.HELD, "slot free; hold placed", "partner:acme"),
           ("10:06", S.AWAITING_VENDOR_CONFIRMATION, "vendor asked to confirm", "system:notify"),
           ("10:08", S.CONFIRMED_BY_VENDOR, "confirmed by vendor", "vendor:token"),
           ("10:08", S.AWAITING_VENDOR_AUTH, "vendor deposit requested", "system:payments"),
           ("10:08", S.VENDOR_AUTHORIZED, "vendor deposit authorized", "system:payments"),
           ("10:08", S.AWAITING_REQUESTER_AUTH, "awaiting the requester's payment",
            "system:payments"),
           ("10:12", S.AUTHORIZED_BOTH, "requester payment authorized", "partner:acme"),
           ("10:12", S.COMMIT_IN_PROGRESS, "committing", "partner:acme")],
          _at("10:27"), ("captured", "pi_3QvC3yogaDeposit0001"),
          ("authorized", "pi_3QvC3yogaPrice00001")),
    _Plan(IDS.overdue_vendor, "yoga-loft", None, "erin@example.com", _at("03:00") + timedelta(3),
          [("10:14", S.INTENT_CREATED, "hold requested", "operator:cli"),
           ("10:14", S.HELD, "slot free; hold placed", "operator:cli"),
           ("10:14", S.AWAITING_VENDOR_CONFIRMATION, "vendor asked to confirm", "system:notify")],
          _at("10:24")),
    _Plan(IDS.awaiting_payment, "dr-lee", "acme", "frank@example.com",
          _at("14:00") + timedelta(1),
          [("10:16", S.INTENT_CREATED, "hold requested", "partner:acme"),
           ("10:16", S.HELD, "slot free; hold placed", "partner:acme"),
           ("10:16", S.AWAITING_VENDOR_CONFIRMATION, "vendor asked to confirm", "system:notify"),
           ("10:21", S.CONFIRMED_BY_VENDOR, "confirmed by vendor", "vendor:token"),
           ("10:21", S.AWAITING_VENDOR_AUTH, "vendor deposit requested", "system:payments"),
           ("10:21", S.VENDOR_AUTHORIZED, "vendor deposit authorized", "system:payments"),
           ("10:21", S.AWAITING_REQUESTER_AUTH, "awaiting the requester's payment",
            "system:payments")],
          _at("10:51"), ("authorized", "pi_3QvD4leeDeposit00002")),
    _Plan(IDS.awaiting_vendor, "dr-lee", "globex", "grace@example.com",
          _at("16:00") + timedelta(1),
          [("10:23", S.INTENT_CREATED, "hold requested", "partner:globex"),
           ("10:23", S.HELD, "slot free; hold placed", "partner:globex"),
           ("10:23", S.AWAITING_VENDOR_CONFIRMATION, "vendor asked to confirm", "system:notify")],
          _at("10:33")),
    _Plan(IDS.held, "studio-a", "acme", "heidi@example.com", _at("14:00") + timedelta(2),
          [("10:28", S.INTENT_CREATED, "hold requested", "partner:acme"),
           ("10:28", S.HELD, "slot free; hold placed", "partner:acme")],
          _at("10:38")),
]  # fmt: skip


def _price(vendor_id: str) -> tuple[int, int, str]:
    _, _, price, deposit, currency = VENDORS[vendor_id]
    return price, deposit, currency


def seed(db: Database) -> Seeded:
    """Write the day into an empty, migrated database."""
    created = datetime(2026, 1, 1, tzinfo=UTC)
    with UnitOfWork(db) as uow:
        for vendor_id, (name, zone, price, deposit, currency) in VENDORS.items():
            uow.session.add(
                Vendor(
                    id=vendor_id, name=name, timezone=zone, slot_minutes=60,
                    slot_interval_minutes=30, currency=currency, price=price, deposit=deposit,
                    hours=ALWAYS_OPEN, created_at=created, updated_at=created,
                )
            )  # fmt: skip
        for partner_id, name in PARTNERS.items():
            uow.session.add(
                Partner(
                    id=partner_id, name=name, webhook_url=f"https://{partner_id}.invalid/hooks",
                    created_at=created,
                )
            )  # fmt: skip
        uow.session.flush()
        for plan in PLANS:
            price, deposit, currency = _price(plan.vendor)
            first = _at(plan.steps[0][0])
            last = _at(plan.steps[-1][0])
            uow.session.add(
                Reservation(
                    id=plan.id, vendor_id=plan.vendor, requester_id=plan.requester,
                    partner_id=plan.partner, slot_start=plan.slot,
                    slot_end=plan.slot + timedelta(hours=1), block_start=plan.slot,
                    block_end=plan.slot + timedelta(hours=1), state=plan.steps[-1][1].value,
                    state_deadline=plan.deadline, currency=currency, price_amount=price,
                    deposit_amount=deposit, vendor_payment_state=plan.vendor_money[0],
                    vendor_payment_ref=plan.vendor_money[1],
                    requester_payment_state=plan.requester_money[0],
                    requester_payment_ref=plan.requester_money[1], meta={},
                    created_at=first, updated_at=last,
                )
            )  # fmt: skip
        uow.session.flush()
        # The log in global time order, so ids grow with time as they do in production.
        steps = []
        for plan in PLANS:
            previous: S | None = None
            for index, (hhmm, to, reason, actor) in enumerate(plan.steps):
                steps.append((_at(hhmm), plan.id, index, previous, to, reason, actor))
                previous = to
        for at, reservation_id, _, from_state, to, reason, actor in sorted(steps):
            uow.session.add(
                ReservationTransition(
                    reservation_id=reservation_id,
                    from_state=from_state.value if from_state else None,
                    to_state=to.value,
                    reason=reason,
                    actor=actor,
                    at=at,
                    details={},
                )
            )
            uow.session.flush()
        _money_trouble(uow)
        uow.commit()
    return IDS


def _money_trouble(uow: UnitOfWork) -> None:
    """The failed commit's refund keeps failing, and its webhook is a dead letter."""
    at = _at("10:25")
    uow.session.add_all(
        [
            CompensationAction(
                id="cmp_5a7c9e1b3d0f2a4c6e8b0d1f", reservation_id=IDS.failed_commit,
                kind="refund_capture", party="vendor", amount=2000, currency="usd",
                status="pending", attempts=3, last_error="provider unavailable (503)",
                next_attempt_at=_at("10:43"), idempotency_key=f"bkj:{IDS.failed_commit}:vendor:r",
                created_at=at, updated_at=_at("10:29"),
            ),
            CompensationAction(
                id="cmp_0b2d4f6a8c1e3a5c7e9b1d3f", reservation_id=IDS.failed_commit,
                kind="cancel_authorization", party="requester", amount=9000, currency="usd",
                status="done", attempts=1, idempotency_key=f"bkj:{IDS.failed_commit}:req:c",
                created_at=at, updated_at=at, completed_at=at,
            ),
        ]
    )  # fmt: skip
    events: list[tuple[str, str, str, str, dict[str, Any]]] = [
        ("evt_1a3c5e7b9d0f2a4c6e8b0d2f", IDS.failed_commit, "globex",
         "reservation.failed_commit", {"status": "dead", "attempts": 8, "last_status": 500,
                                       "last_error": "HTTP 500 from endpoint"}),
        ("evt_2b4d6f8a0c1e3b5d7f9a1c3e", IDS.committed, "acme", "reservation.committed",
         {"status": "delivered", "attempts": 1, "last_status": 200,
          "delivered_at": _at("10:26")}),
    ]  # fmt: skip
    for seq, (event_id, reservation_id, partner_id, event_type, fields) in enumerate(events, 1):
        uow.session.add(
            OutboxEvent(
                event_id=event_id, type=event_type, reservation_id=reservation_id,
                partner_id=partner_id, payload={"reservationId": reservation_id},
                created_at=at,
            )
        )  # fmt: skip
        uow.session.flush()
        uow.session.add(
            WebhookDelivery(
                id=f"whd_{event_id[4:]}", event_id=event_id, event_seq=seq,
                partner_id=partner_id, reservation_id=reservation_id, created_at=at,
                next_attempt_at=None, **fields,
            )
        )  # fmt: skip
