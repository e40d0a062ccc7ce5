"""Holds and the vendor-confirmation part of the workflow.

Creating a hold rechecks overlaps inside the transaction that inserts it; the database
constraint (exclusion on Postgres, trigger under BEGIN IMMEDIATE on SQLite) backs that check
up, so two racing requests can never both hold overlapping blocks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar, get_args

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from bookiji.domain.availability import Audience
from bookiji.domain.compensation import Failure
from bookiji.domain.errors import (
    ConcurrentModification,
    DeadlinePassed,
    IdempotencyKeyReused,
    InvalidTransition,
    NotFound,
    SlotUnavailable,
    ValidationFailed,
)
from bookiji.domain.states import ReservationState, StageTTLs, expiry_target
from bookiji.domain.timeutil import format_instant
from bookiji.services import transitions
from bookiji.services.availability import check_bookable, load_schedule, refuse_unless_bookable
from bookiji.services.clock import Clock
from bookiji.services.compensation import plan_into
from bookiji.services.confirmation import ASK_REASON, VendorAsk
from bookiji.services.deadlines import ACTOR as EXPIRY_ACTOR
from bookiji.services.deadlines import expire_now, expiry_failure, expiry_reason
from bookiji.services.documents import reservation_document, view
from bookiji.services.holdcaps import HoldCaps
from bookiji.services.ids import new_id
from bookiji.store.database import Database
from bookiji.store.errors import is_overlap_violation, is_transient, is_unique_violation
from bookiji.store.models import (
    ConfirmationToken,
    IdempotencyKey,
    OutboxEvent,
    Reservation,
    ReservationTransition,
    Vendor,
    VendorNotificationRow,
)
from bookiji.store.uow import UnitOfWork

S = ReservationState
T = TypeVar("T")
log = logging.getLogger(__name__)

OPERATOR_SCOPE = "operator"
IDEMPOTENCY_RETENTION = timedelta(days=7)
CREATED = 201  # the status a replayed create answers with, as the API first did


class AskVendor(Protocol):
    """The rows that ask the vendor to confirm (`ConfirmationService.plan_ask`)."""

    def __call__(
        self, vendor: Vendor, reservation_id: str, expires_at: datetime, now: datetime
    ) -> VendorAsk: ...


#: What the transition log and the events say of a cancel: Bookiji's own words only, since the
#: log is append-only and `requesters forget` cannot erase it. Whatever the partner or the
#: operator wrote goes to the cancel's `note` (sealed on the reservation, erasable).
CancelReason = Literal["cancelled", "cancelled by partner", "cancelled by support (dashboard)"]
CANCEL_REASONS: frozenset[str] = frozenset(get_args(CancelReason))

MAX_METADATA_BYTES = 16 * 1024
#: Levels of objects and arrays in metadata. Deeper JSON fits in 16 KiB but overflows
#: encoders' recursion later (the answer, webhooks, a replay): refused at the door instead.
MAX_METADATA_DEPTH = 32
MIN_SLOT = timedelta(minutes=5)
MAX_SLOT = timedelta(hours=24)


@dataclass(frozen=True)
class HoldRequest:
    vendor_id: str
    slot_start: datetime
    slot_end: datetime
    requester_id: str
    partner_id: str | None = None
    idempotency_key: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: {name, email, phone}, all optional: personal data, stored sealed.
    contact: Mapping[str, str] | None = None

    def fingerprint(self) -> str:
        """What makes two requests 'the same' for idempotency: everything but the key."""
        request: dict[str, Any] = {
            "vendorId": self.vendor_id,
            "slotStartTime": format_instant(self.slot_start),
            "slotEndTime": format_instant(self.slot_end),
            "requesterId": self.requester_id,
            "metadata": dict(self.metadata),
        }
        if self.contact:  # absent from older fingerprints, so only counted when given
            request["requester"] = dict(self.contact)
        canonical = json.dumps(
            request,
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class HoldOutcome:
    reservation_id: str
    replayed: bool
    notifications: tuple[str, ...] = ()  # vendor notifications recorded with the hold
    document: dict[str, Any] | None = None  # the new reservation's document, as committed


@dataclass(frozen=True)
class ExpiredReservation:
    reservation_id: str
    from_state: str
    to_state: str
    deadline: datetime


def _validate_request(request: HoldRequest) -> None:
    problems: list[str] = []
    if not request.requester_id.strip() or len(request.requester_id) > 200:
        problems.append("requesterId must be 1-200 characters")
    elif not request.requester_id.isprintable():  # shown in tables, logs and terminals
        problems.append("requesterId must not contain control characters (line breaks, escapes)")
    if request.idempotency_key is not None and not (
        0 < len(request.idempotency_key) <= 255 and request.idempotency_key.isprintable()
    ):
        problems.append("idempotencyKey must be 1-255 printable characters")
    for name, value in (("slotStartTime", request.slot_start), ("slotEndTime", request.slot_end)):
        if value.tzinfo is None or value.utcoffset() is None:
            problems.append(f"{name} must carry a UTC offset")
    if not problems:
        duration = request.slot_end - request.slot_start
        if duration <= timedelta(0):
            problems.append("slotEndTime must be after slotStartTime")
        elif not MIN_SLOT <= duration <= MAX_SLOT:
            problems.append("a slot lasts between 5 minutes and 24 hours")
        elif (
            duration % timedelta(minutes=1)
            or request.slot_start.replace(second=0, microsecond=0) != request.slot_start
        ):
            # Sub-second too: the grid check would call it "not a slot start" (a 409).
            problems.append("slots start and end on whole minutes")
    if _depth(request.metadata) > MAX_METADATA_DEPTH:
        problems.append(f"metadata nests objects and arrays more than {MAX_METADATA_DEPTH} deep")
    else:  # only a value this shallow can be encoded without overflowing the stack
        _measure_metadata(request.metadata, problems)
    problems.extend(contact_problems(request.contact))
    if problems:
        raise ValidationFailed("; ".join(problems), details={"problems": problems})


def _depth(value: Any) -> int:
    """How deep objects and arrays nest, without recursion (the value may be very deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, Mapping | list | tuple):
            continue
        deepest = max(deepest, level)
        if level <= MAX_METADATA_DEPTH:  # past the limit the answer is known
            children = item.values() if isinstance(item, Mapping) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _measure_metadata(metadata: Mapping[str, Any], problems: list[str]) -> None:
    try:
        # Measured as sent: compact UTF-8 (an "é" is 2 bytes, not the 6 of "\u00e9"). NaN,
        # Infinity and a lone surrogate are not JSON: the answer echoing them cannot render.
        encoded = json.dumps(
            dict(metadata), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        problems.append("metadata must be a JSON object (finite numbers, valid Unicode)")
    else:
        if len(encoded) > MAX_METADATA_BYTES:
            problems.append(
                f"metadata is larger than {MAX_METADATA_BYTES} bytes (compact JSON, UTF-8)"
            )


CONTACT_FIELDS = {"name": 200, "email": 320, "phone": 32}
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"\+?[0-9 ()-]{4,31}")


def contact_problems(contact: Mapping[str, Any] | None) -> list[str]:
    """What is wrong with a requester's contact details (never echoing the values)."""
    if contact is None:
        return []
    problems = [f"requester.{k}: unknown field" for k in contact if k not in CONTACT_FIELDS]
    for name, limit in CONTACT_FIELDS.items():
        value = contact.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip() or len(value) > limit:
            problems.append(f"requester.{name} must be 1-{limit} characters")
        elif not value.isprintable():
            problems.append(f"requester.{name} must not contain control characters")
        elif name == "email" and not _EMAIL.fullmatch(value):
            problems.append("requester.email is not an email address")
        elif name == "phone" and not _PHONE.fullmatch(value):
            problems.append("requester.phone is not a phone number")
    return problems


def retry_transient(operation: Callable[[], T], *, attempts: int = 5) -> T:
    """Run a whole transaction again after a deadlock, serialisation failure or busy file.

    The database rolled the attempt back, so rerunning it is safe; the rerun sees what the
    other transaction committed and answers accordingly.
    """
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except DBAPIError as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            time.sleep(random.uniform(0, 0.02 * 2**attempt))  # noqa: S311 - jitter only
    raise AssertionError("unreachable")  # pragma: no cover


class ReservationService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        ttls: StageTTLs,
        *,
        run_compensations: Callable[[list[str]], object] | None = None,
        on_confirmed: Callable[[str], object] | None = None,
        ask_vendor: AskVendor | None = None,
        deliver: Callable[[list[str]], object] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.ttls = ttls
        # Executes compensation rows right after the transaction that planned them commits;
        # without it they wait for `reconcile`.
        self.run_compensations = run_compensations
        self.on_confirmed = on_confirmed  # e.g. authorize the vendor's deposit next
        # Records the vendor's notification (outbox rows, HELD -> AWAITING) inside the hold's
        # own transaction, so a new hold costs one commit; `deliver` sends them afterwards.
        self.ask_vendor = ask_vendor
        self.deliver = deliver

    def _compensate(self, action_ids: list[str]) -> None:
        if action_ids and self.run_compensations is not None:
            self.run_compensations(action_ids)

    # -- holds -------------------------------------------------------------------------

    def create_hold(
        self, request: HoldRequest, *, actor: str, caps: HoldCaps | None = None
    ) -> HoldOutcome:
        """INTENT_CREATED -> HELD (-> AWAITING_VENDOR_CONFIRMATION when the vendor is asked),
        or the original reservation for a replayed key. `caps` refuses a new hold beyond the
        requester's or partner's holds in flight (a replay is never refused)."""
        _validate_request(request)
        scope = request.partner_id or OPERATOR_SCOPE
        fingerprint = request.fingerprint()
        try:
            outcome = retry_transient(
                lambda: self._create_hold(
                    request, scope=scope, fingerprint=fingerprint, actor=actor, caps=caps
                )
            )
        except IntegrityError as exc:
            if is_overlap_violation(exc):
                raise SlotUnavailable(
                    "the slot overlaps an active hold or booking of this vendor",
                    details={"vendorId": request.vendor_id, "rule": "overlap"},
                ) from None
            if request.idempotency_key and is_unique_violation(exc, "idempotency_keys"):
                # A concurrent request with the same key committed first: answer as it did.
                return self._replay(scope, request.idempotency_key, fingerprint)
            raise
        if outcome.replayed:
            return outcome
        try:
            if self.deliver is not None and outcome.notifications:
                self.deliver(list(outcome.notifications))
        except Exception:  # the hold stands; the notification outbox is retried by reconcile
            log.warning(
                "asking the vendor about %s failed; reconcile retries", outcome.reservation_id
            )
        return outcome

    # -- what the API answered, for replays -------------------------------------------------

    def idempotency_scope(self, partner_id: str | None) -> str:
        return partner_id or OPERATOR_SCOPE

    def remembered_response(
        self, partner_id: str | None, key: str
    ) -> tuple[int, dict[str, Any]] | None:
        with UnitOfWork(self.db, readonly=True) as uow:
            record = uow.idempotency.get(self.idempotency_scope(partner_id), key, self.clock.now())
            if record is None or record.response_body is None or record.response_status is None:
                return None
            return record.response_status, record.response_body

    def _replay(self, scope: str, key: str, fingerprint: str) -> HoldOutcome:
        with UnitOfWork(self.db, readonly=True) as uow:
            record = uow.idempotency.get(scope, key, self.clock.now())
            if record is None:  # pragma: no cover - the winner rolled back after all
                raise ConcurrentModification("a request with this key is in flight; retry")
            return self._answer_replay(record, key, fingerprint)

    @staticmethod
    def _answer_replay(record: IdempotencyKey, key: str, fingerprint: str) -> HoldOutcome:
        if record.request_hash != fingerprint:
            raise IdempotencyKeyReused(
                "this idempotency key was used for a different request",
                details={"idempotencyKey": key},
            )
        assert record.reservation_id is not None
        return HoldOutcome(reservation_id=record.reservation_id, replayed=True)

    def _create_hold(
        self,
        request: HoldRequest,
        *,
        scope: str,
        fingerprint: str,
        actor: str,
        caps: HoldCaps | None,
    ) -> HoldOutcome:
        """One transaction of a few plain INSERTs: the row goes in once, in its final state,
        and the answer is built from what was written instead of read back."""
        now = self.clock.now()
        with UnitOfWork(self.db) as uow:
            # Lock first, then look: a request with the same key that held the lock before
            # us has committed by now, and we answer with its reservation.
            uow.reservations.lock_vendor_schedule(request.vendor_id)
            if request.idempotency_key:
                record = uow.idempotency.stored(scope, request.idempotency_key)
                if record is not None and record.expires_at > now:
                    return self._answer_replay(record, request.idempotency_key, fingerprint)
                if record is not None:  # expired: the key starts afresh
                    uow.idempotency.drop(scope, request.idempotency_key)
            if caps is not None:  # counted in the transaction that inserts the hold
                uow.reservations.lock_requester_holds(request.partner_id, request.requester_id)
                caps.ensure(uow, partner_id=request.partner_id, requester_id=request.requester_id)
            vendor = uow.vendors.read(request.vendor_id)
            if vendor is None:
                raise NotFound(
                    f"unknown vendor {request.vendor_id!r}",
                    details={"vendorId": request.vendor_id},
                )
            start, end = request.slot_start, request.slot_end
            # The same rules availability lists slots by, on fresh data (never the cache).
            schedule = load_schedule(
                uow,
                vendor,
                start,
                end,
                slot_minutes=(end - start) // timedelta(minutes=1),
                margin=timedelta(0),
            )
            audience = Audience(partner_id=request.partner_id)
            refuse_unless_bookable(
                check_bookable(schedule, start, now=now, audience=audience), vendor.id
            )
            reservation_id = new_id("res")
            owner = transitions.Owner(reservation_id, vendor.id, request.partner_id)
            birth = transitions.plan_birth(
                owner,
                [
                    transitions.Step(S.INTENT_CREATED, "hold requested", actor),
                    transitions.Step(S.HELD, "slot free; hold placed", actor),
                ],
                now=now,
                ttls=self.ttls,
            )
            ask = None
            if self.ask_vendor is not None and birth.deadline is not None:
                ask = self.ask_vendor(vendor, reservation_id, birth.deadline, now)
                birth = transitions.plan_birth(
                    owner,
                    [transitions.Step(S.AWAITING_VENDOR_CONFIRMATION, ASK_REASON,
                                      "system:notify", {"channels": ask.channels})],
                    now=now, ttls=self.ttls, after=birth,
                )  # fmt: skip
            fields = {
                "id": reservation_id,
                "vendor_id": vendor.id,
                "requester_id": request.requester_id,
                "partner_id": request.partner_id,
                "slot_start": start,
                "slot_end": end,
                "block_start": start - schedule.rules.buffer_before,
                "block_end": end + schedule.rules.buffer_after,
                "state": birth.state.value,
                "state_deadline": birth.deadline,
                "version": 1,
                "currency": vendor.currency,
                "price_amount": vendor.price,
                "deposit_amount": vendor.deposit,
                "vendor_payment_state": "not_started",
                "vendor_payment_ref": None,
                "requester_payment_state": "not_started",
                "requester_payment_ref": None,
                "meta": dict(request.metadata),
                "requester_contact": dict(request.contact) if request.contact else None,
                "idempotency_key": request.idempotency_key,
                "cancel_note": None,
                "created_at": now,
                "updated_at": now,
            }
            uow.insert(Reservation, {("metadata" if k == "meta" else k): v
                                     for k, v in fields.items()})  # fmt: skip
            uow.insert(ReservationTransition, birth.logs)
            uow.insert(OutboxEvent, birth.events)
            if ask is not None:
                uow.insert(ConfirmationToken, ask.token)
                uow.insert(VendorNotificationRow, ask.notifications)
            uow.touch_schedule(vendor.id)
            document = reservation_document(
                view(fields),
                [view(row) for row in birth.logs],
                notifications=[view(row) for row in ask.notifications] if ask else [],
            )
            if request.idempotency_key:
                # The answer a replay of this key gets, verbatim, stored with the hold itself.
                uow.insert(IdempotencyKey, {
                    "scope": scope, "key": request.idempotency_key,
                    "request_hash": fingerprint, "reservation_id": reservation_id,
                    "created_at": now, "expires_at": now + IDEMPOTENCY_RETENTION,
                    "response_status": CREATED, "response_body": document,
                })  # fmt: skip
            uow.commit()
            return HoldOutcome(
                reservation_id=reservation_id,
                replayed=False,
                notifications=tuple(ask.ids) if ask else (),
                document=document,
            )

    # -- vendor confirmation and cancellation ----------------------------------------------

    def confirm(self, reservation_id: str, *, actor: str, partner_id: str | None = None) -> bool:
        """The vendor accepts. From HELD (not yet notified) it passes through
        AWAITING_VENDOR_CONFIRMATION so the log still reads as the workflow does."""

        def step(uow: UnitOfWork, reservation: Reservation, now: datetime) -> bool:
            if reservation.state == S.HELD:
                self._move(
                    uow,
                    reservation,
                    S.AWAITING_VENDOR_CONFIRMATION,
                    now,
                    actor,
                    "confirmation requested",
                )
            return self._move(
                uow, reservation, S.CONFIRMED_BY_VENDOR, now, actor, "confirmed by vendor"
            )

        changed = self._with_reservation(reservation_id, partner_id, step)
        if changed and self.on_confirmed is not None:
            self.on_confirmed(reservation_id)
        return changed

    def decline(self, reservation_id: str, *, actor: str, partner_id: str | None = None) -> bool:
        def step(uow: UnitOfWork, reservation: Reservation, now: datetime) -> bool:
            if reservation.state not in (S.HELD, S.AWAITING_VENDOR_CONFIRMATION, S.CANCELLED):
                raise InvalidTransition(
                    f"only a reservation awaiting the vendor's answer can be declined; "
                    f"this one is {reservation.state}",
                    details={"state": reservation.state},
                )
            return self._move(
                uow,
                reservation,
                S.CANCELLED,
                now,
                actor,
                "declined by vendor",
                {"decision": "decline"},
            )

        return self._with_reservation(reservation_id, partner_id, step)

    def cancel(
        self,
        reservation_id: str,
        *,
        actor: str,
        reason: CancelReason = "cancelled",
        note: str | None = None,
        partner_id: str | None = None,
    ) -> bool:
        """End a reservation that is not committing or final (-> CANCELLED).

        `reason` is what the log and the event say; `note` is the caller's own text, kept
        sealed on the reservation in the same transaction (the partner's document and the
        cancel event show it) and erased by `requesters forget`. Cancelling again changes
        nothing, the first note included."""
        if reason not in CANCEL_REASONS:
            # The log is never erased: free text belongs in `note`.
            raise ValueError(f"a cancel's reason is one of {sorted(CANCEL_REASONS)}")
        planned: list[str] = []

        def step(uow: UnitOfWork, reservation: Reservation, now: datetime) -> bool:
            moved = self._move(uow, reservation, S.CANCELLED, now, actor, reason)
            if moved:
                reservation.cancel_note = note or None
                planned.extend(a.id for a in plan_into(uow, reservation, Failure.CANCELLED, now))
            return moved

        # Past its deadline or not, a cancel ends the reservation as asked.
        moved = self._with_reservation(reservation_id, partner_id, step, deadline=False)
        self._compensate(planned)
        return moved

    def request_vendor_confirmation(self, reservation_id: str, *, actor: str) -> bool:
        """HELD -> AWAITING_VENDOR_CONFIRMATION once the vendor has been told."""

        def step(uow: UnitOfWork, reservation: Reservation, now: datetime) -> bool:
            return self._move(
                uow, reservation, S.AWAITING_VENDOR_CONFIRMATION, now, actor, "vendor notified"
            )

        return self._with_reservation(reservation_id, None, step)

    # -- expiry ------------------------------------------------------------------------------

    def expire_due(
        self, *, batch_size: int = 500, max_batches: int | None = None
    ) -> list[ExpiredReservation]:
        """Move every reservation past its deadline to its expiry state, in batches.

        Each batch is one transaction, so a crash loses at most the batch in flight, and
        the next run picks up where this one stopped.
        """
        done: list[ExpiredReservation] = []
        planned: list[str] = []
        batches = 0
        while max_batches is None or batches < max_batches:
            now = self.clock.now()
            with UnitOfWork(self.db) as uow:
                due = uow.reservations.due_for_expiry(now, limit=batch_size)
                if not due:
                    break
                moves = []
                deadlines = {}
                for reservation in due:
                    target = expiry_target(S(reservation.state), reservation.state_deadline, now)
                    if target is None:
                        continue
                    deadline = reservation.state_deadline
                    assert deadline is not None
                    deadlines[reservation.id] = (reservation.state, deadline)
                    reason = expiry_reason(reservation.state, deadline)
                    moves.append(transitions.Move(reservation, target, reason))
                for move in transitions.apply_many(
                    uow, moves, now=now, ttls=self.ttls, actor=EXPIRY_ACTOR
                ):
                    reservation = move.reservation
                    from_state, deadline = deadlines[reservation.id]
                    failure = expiry_failure(move.target)
                    planned.extend(a.id for a in plan_into(uow, reservation, failure, now))
                    done.append(
                        ExpiredReservation(reservation.id, from_state, move.target.value, deadline)
                    )
                uow.commit()
            batches += 1
            if len(due) < batch_size:
                break
        self._compensate(planned)
        return done

    def purge_idempotency(self) -> int:
        """Forget idempotency records past their lifetime, and the answers (with the
        requester's data) they kept. The expiry job runs it every few seconds: an indexed
        read decides, and the write lock is taken only when there is something to delete."""
        now = self.clock.now()
        with UnitOfWork(self.db, readonly=True) as uow:
            if not uow.idempotency.any_expired(now):
                return 0
        with UnitOfWork(self.db) as uow:
            purged = uow.idempotency.purge_expired(now)
            uow.commit()
        return purged

    # -- helpers -----------------------------------------------------------------------------

    def _move(
        self,
        uow: UnitOfWork,
        reservation: Reservation,
        target: ReservationState,
        now: datetime,
        actor: str,
        reason: str,
        details: dict[str, Any] | None = None,
    ) -> bool:
        return transitions.apply(
            uow,
            reservation,
            target,
            now=now,
            ttls=self.ttls,
            reason=reason,
            actor=actor,
            details=details,
        )

    def _with_reservation(
        self,
        reservation_id: str,
        partner_id: str | None,
        step: Callable[[UnitOfWork, Reservation, datetime], T],
        *,
        deadline: bool = True,
    ) -> T:
        """Run `step` on a locked, current copy of the reservation and commit.

        With `deadline`, a stage whose deadline has passed expires now instead, as the expiry
        job would have, and the request is refused: what happens to a late answer must not
        depend on whether the job ran first."""
        now = self.clock.now()
        expired: DeadlinePassed | None = None
        planned: list[str] = []
        try:
            with UnitOfWork(self.db) as uow:
                reservation = uow.reservations.get(reservation_id, for_update=True)
                if reservation is None or (
                    partner_id is not None and reservation.partner_id != partner_id
                ):
                    raise NotFound(
                        f"no reservation {reservation_id!r}",
                        details={"reservationId": reservation_id},
                    )
                due = expiry_target(S(reservation.state), reservation.state_deadline, now)
                if deadline and due is not None:
                    expired, actions = expire_now(uow, reservation, due, now, self.ttls)
                    planned.extend(a.id for a in actions)
                    uow.commit()
                else:
                    result = step(uow, reservation, now)
                    uow.commit()
                    return result
        except StaleDataError:
            raise ConcurrentModification(
                "the reservation changed while this request ran; read it again and retry",
                details={"reservationId": reservation_id},
            ) from None
        self._compensate(planned)
        assert expired is not None
        raise expired
