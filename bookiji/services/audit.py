"""`bookiji audit`: the invariants that must hold whatever happened, checked from the data.

1. no two overlapping active blocks per vendor;
2. every transition log replays to its reservation's state;
3. money is captured only for COMMITTED reservations (or refunded), or while a commit is in
   progress: it captures one party, then the other, and one interrupted between the two
   (a crash, a provider outage) is finished or unwound by the stuck-commit job; the
   BookijiCommitStuck alert covers one that stays;
4. no live authorization for a terminal, uncommitted reservation;
5. every COMMITTED reservation has exactly one booking and a capture per party that pays.
With a gateway, 3-5 are also checked against what the payment provider says.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from sqlmodel import col, func, select

from bookiji.domain.compensation import Money, Party
from bookiji.domain.errors import InvalidTransition, PaymentProviderError
from bookiji.domain.states import FINAL_STATES, ReservationState, replay
from bookiji.services.compensation import party_money, party_ref
from bookiji.services.ports import PaymentGateway
from bookiji.store.database import Database
from bookiji.store.models import Booking, PaymentOperation, Reservation, ReservationTransition
from bookiji.store.uow import UnitOfWork

S = ReservationState
PAGE = 1000
#: Where a party's money may be captured (and not refunded): see invariant 3.
CAPTURE_ALLOWED = frozenset({S.COMMITTED, S.COMMIT_IN_PROGRESS})


@dataclass(frozen=True)
class Breach:
    invariant: str
    reservation_id: str | None
    message: str


def _pages(uow: UnitOfWork) -> Iterator[list[Reservation]]:
    last = ""
    while True:
        rows = list(
            uow.session.exec(
                select(Reservation)
                .where(col(Reservation.id) > last)
                .order_by(col(Reservation.id))
                .limit(PAGE)
            ).all()
        )
        if not rows:
            return
        yield rows
        last = rows[-1].id


def audit(db: Database, gateway: PaymentGateway | None = None) -> list[Breach]:
    breaches: list[Breach] = []
    with UnitOfWork(db, readonly=True) as uow:
        for a, b in uow.reservations.overlapping_active_pairs():
            breaches.append(Breach("no_overlap", a, f"active blocks of {a} and {b} overlap"))
        for page in _pages(uow):
            ids = [r.id for r in page]
            logs: dict[str, list[tuple[S | None, S]]] = defaultdict(list)
            for step in uow.session.exec(
                select(ReservationTransition)
                .where(col(ReservationTransition.reservation_id).in_(ids))
                .order_by(col(ReservationTransition.reservation_id), col(ReservationTransition.id))
            ).all():
                logs[step.reservation_id].append(
                    (S(step.from_state) if step.from_state else None, S(step.to_state))
                )
            bookings = dict(
                uow.session.exec(
                    select(Booking.reservation_id, func.count())
                    .where(col(Booking.reservation_id).in_(ids))
                    .group_by(col(Booking.reservation_id))
                ).all()
            )
            for reservation in page:
                breaches.extend(_check(reservation, logs[reservation.id], bookings))
            if gateway is not None:
                breaches.extend(_check_page(uow, page, gateway))
    return breaches


def _check(
    reservation: Reservation, log: list[tuple[S | None, S]], bookings: dict[str, int]
) -> list[Breach]:
    found: list[Breach] = []
    rid, state = reservation.id, S(reservation.state)
    try:
        replayed = replay(log)
        if replayed is not state:
            found.append(Breach("log_replays", rid, f"log replays to {replayed}, row says {state}"))
    except InvalidTransition as exc:
        found.append(Breach("log_replays", rid, exc.message))
    terminal_uncommitted = state in FINAL_STATES and state is not S.COMMITTED
    for party in Party:
        money = party_money(reservation, party)
        if money is Money.CAPTURED and state not in CAPTURE_ALLOWED:
            found.append(Breach("captured_only_if_committed", rid, f"{party} captured in {state}"))
        if terminal_uncommitted and money in (Money.AUTHORIZED, Money.PENDING):
            found.append(Breach("no_live_authorization", rid, f"{party} still {money} in {state}"))
    if state is S.COMMITTED:
        count = bookings.get(rid, 0)
        if count != 1:
            found.append(
                Breach("one_booking", rid, f"{count} bookings for a COMMITTED reservation")
            )
        for party, amount in ((Party.VENDOR, reservation.deposit_amount),
                              (Party.REQUESTER, reservation.price_amount)):  # fmt: skip
            money = party_money(reservation, party)
            if amount and money not in (Money.CAPTURED, Money.REFUNDED):
                found.append(Breach("two_captures", rid, f"{party} is {money}, not captured"))
    return found


def _check_page(
    uow: UnitOfWork, page: list[Reservation], gateway: PaymentGateway
) -> Iterator[Breach]:
    """Each reservation's payments as the provider has them: the ones its row records, the
    ones our operation log saw the provider make, and, where a call's answer never came
    back, whatever the provider holds under the reservation's id."""
    called: dict[str, set[tuple[Party, str]]] = defaultdict(set)
    unanswered: set[str] = set()
    for rid, party, intent_id in uow.session.exec(
        select(
            PaymentOperation.reservation_id, PaymentOperation.party, PaymentOperation.intent_id
        ).where(col(PaymentOperation.reservation_id).in_([r.id for r in page]))
    ).all():
        if intent_id is None:
            unanswered.add(rid)
        else:
            called[rid].add((Party(party), intent_id))
    for reservation in page:
        rid = reservation.id
        if rid in unanswered:
            try:
                for seen in gateway.find_by_reservation(rid):
                    if seen.party in (Party.VENDOR.value, Party.REQUESTER.value):
                        called[rid].add((Party(seen.party), seen.id))
            except PaymentProviderError as exc:
                yield Breach("provider_reachable", rid, f"search: {exc.message}")
        yield from _check_provider(reservation, gateway, called[rid])


def _check_provider(
    reservation: Reservation, gateway: PaymentGateway, called: set[tuple[Party, str]]
) -> list[Breach]:
    """The row's payments, and any other the provider made for it (`called`: the ids our
    operation log recorded), as the provider has them."""
    found: list[Breach] = []
    rid, state = reservation.id, S(reservation.state)
    terminal_uncommitted = state in FINAL_STATES and state is not S.COMMITTED
    recorded = {(p, ref) for p in Party if (ref := party_ref(reservation, p)) is not None}
    for party, ref in sorted(recorded | called):
        try:
            intent = gateway.retrieve(ref)
        except PaymentProviderError as exc:
            found.append(Breach("provider_reachable", rid, f"{party} {ref}: {exc.message}"))
            continue
        captured = intent.status == "succeeded" and intent.amount_refunded < intent.amount_received
        if captured and state not in CAPTURE_ALLOWED:
            found.append(Breach("captured_only_if_committed", rid, f"{ref} captured in {state}"))
        if terminal_uncommitted and intent.status in ("requires_capture", "requires_action"):
            found.append(Breach("no_live_authorization", rid, f"{ref} is {intent.status}"))
        if state is S.COMMITTED and (party, ref) in recorded and intent.status != "succeeded":
            found.append(Breach("two_captures", rid, f"{party} {ref} is {intent.status}"))
    return found
