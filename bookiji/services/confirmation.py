"""Asking the vendor: notifications with a single-use, expiring, signed answer token.

A token is `bkv1.<id>.<reservation>.<expiry>.<signature>`, the signature an HMAC-SHA256 of
the rest under the installation's token key. Only the token id is stored; spending a token
marks it used in the same transaction as the answer, so a token answers once. Deliveries are
rows, retried with backoff until sent; the reservation's deadline runs regardless.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, or_, select

from bookiji.domain.errors import BookijiError, InvalidTransition, NotFound
from bookiji.domain.states import ReservationState, StageTTLs
from bookiji.services import transitions
from bookiji.services.clock import Clock
from bookiji.services.ids import new_id
from bookiji.services.ports import NotificationFailed, Notifier, VendorNotification
from bookiji.store.database import Database
from bookiji.store.errors import is_unique_violation
from bookiji.store.models import (
    AppSecret,
    ConfirmationToken,
    Reservation,
    Vendor,
    VendorNotificationRow,
)
from bookiji.store.uow import UnitOfWork

S = ReservationState
log = logging.getLogger(__name__)
TOKEN_KEY_NAME = "confirmation_token_key"  # noqa: S105 - a row name, not a secret
MAX_BACKOFF = timedelta(minutes=10)


class InvalidToken(BookijiError):
    code = "invalid_token"
    http_status = 403


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def installation_key(db: Database, clock: Clock) -> bytes:
    """The token key stored for this database, created on first use. Two processes (or
    threads) using it first at once both end up with the one that was stored."""
    for _attempt in range(2):
        try:
            with UnitOfWork(db) as uow:
                row = uow.session.get(AppSecret, TOKEN_KEY_NAME)
                if row is None:
                    row = AppSecret(
                        name=TOKEN_KEY_NAME,
                        value=secrets.token_urlsafe(32),
                        created_at=clock.now(),
                    )
                    uow.session.add(row)
                    uow.commit()
                return row.value.encode()
        except IntegrityError as exc:
            if not is_unique_violation(exc, "app_secrets"):
                raise
    raise AssertionError("unreachable")  # pragma: no cover - the second read finds it


ASK_REASON = "vendor asked to confirm"
M = TypeVar("M", VendorNotificationRow, Reservation, Vendor, ConfirmationToken)


def _by_id(uow: UnitOfWork, model: type[M], ids: Iterable[str]) -> dict[str, M]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    key = model.id
    return {row.id: row for row in uow.session.exec(select(model).where(col(key).in_(wanted)))}


@dataclass(frozen=True)
class VendorAsk:
    token: dict[str, Any]  # a confirmation_tokens row
    notifications: list[dict[str, Any]]  # vendor_notifications rows
    channels: list[str]

    @property
    def ids(self) -> list[str]:
        return [row["id"] for row in self.notifications]


@dataclass(frozen=True)
class Delivery:
    notification_id: str
    reservation_id: str
    channel: str
    status: str
    error: str | None = None


class ConfirmationService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        ttls: StageTTLs,
        notifiers: Mapping[str, Notifier],
        key: Callable[[], bytes],
        *,
        answer_url: str | None = None,
        on_confirmed: Callable[[str], object] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.ttls = ttls
        self.notifiers = notifiers
        self._key = key
        self.answer_url = answer_url
        self.on_confirmed = on_confirmed  # e.g. authorize the vendor's deposit next

    # -- tokens ------------------------------------------------------------------------------

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key(), body.encode(), hashlib.sha256).digest())

    def token_for(self, token: ConfirmationToken) -> str:
        body = f"bkv1.{token.id}.{token.reservation_id}.{int(token.expires_at.timestamp())}"
        return f"{body}.{self._sign(body)}"

    def _parse(self, token: str) -> tuple[str, str, datetime]:
        parts = token.split(".")
        if len(parts) != 5 or parts[0] != "bkv1":
            raise InvalidToken("not a confirmation token")
        body = ".".join(parts[:4])
        if not hmac.compare_digest(parts[4], self._sign(body)):
            raise InvalidToken("the token's signature does not match")
        try:
            expires = datetime.fromtimestamp(int(parts[3]), tz=UTC)
        except ValueError:
            raise InvalidToken("not a confirmation token") from None
        return parts[1], parts[2], expires

    # -- asking ------------------------------------------------------------------------------

    def _channels(self, vendor: Vendor) -> list[tuple[str, str]]:
        wanted = [
            ("email", vendor.notify_email),
            ("webhook", vendor.notify_webhook_url),
            ("sms", vendor.notify_sms),
        ]
        chosen = [(c, d) for c, d in wanted if d and c in self.notifiers]
        return chosen or [("console", vendor.id)]

    def request(self, reservation_id: str, *, actor: str) -> list[Delivery]:
        """HELD -> AWAITING_VENDOR_CONFIRMATION with a fresh token and one delivery per
        channel, in one transaction; then try the deliveries."""
        now = self.clock.now()
        with UnitOfWork(self.db) as uow:
            reservation = uow.reservations.get(reservation_id, for_update=True)
            if reservation is None:
                raise NotFound(f"no reservation {reservation_id!r}")
            ids = self.ask_within(uow, reservation, now, actor=actor)
            uow.commit()
        return self.deliver_many(ids)

    def plan_ask(
        self, vendor: Vendor, reservation_id: str, expires_at: datetime, now: datetime
    ) -> VendorAsk:
        """The rows that ask a vendor to answer: a token and one outbox row per channel
        (nothing is sent yet). The caller inserts them in the transaction that moves the
        reservation to AWAITING_VENDOR_CONFIRMATION."""
        token = {"id": new_id("tok"), "reservation_id": reservation_id, "expires_at": expires_at,
                 "used_at": None, "created_at": now}  # fmt: skip
        channels = self._channels(vendor)
        rows = [
            {"id": new_id("ntf"), "reservation_id": reservation_id, "vendor_id": vendor.id,
             "channel": channel, "destination": destination, "token_id": token["id"],
             "status": "pending", "attempts": 0, "next_attempt_at": now, "last_error": None,
             "created_at": now, "sent_at": None}
            for channel, destination in channels
        ]  # fmt: skip
        return VendorAsk(token, rows, [c for c, _ in channels])

    def ask_within(
        self, uow: UnitOfWork, reservation: Reservation, now: datetime, *, actor: str
    ) -> list[str]:
        """Inside the caller's transaction: the rows of `plan_ask` and HELD ->
        AWAITING_VENDOR_CONFIRMATION. Returns the notification ids to `deliver` once the
        transaction has committed."""
        if S(reservation.state) is not S.HELD:
            return []
        vendor = uow.vendors.get(reservation.vendor_id)
        assert vendor is not None and reservation.state_deadline is not None
        ask = self.plan_ask(vendor, reservation.id, reservation.state_deadline, now)
        uow.session.add(ConfirmationToken(**ask.token))
        for row in ask.notifications:
            uow.session.add(VendorNotificationRow(**row))
        transitions.apply(
            uow, reservation, S.AWAITING_VENDOR_CONFIRMATION, now=now, ttls=self.ttls,
            reason=ASK_REASON, actor=actor, details={"channels": ask.channels},
        )  # fmt: skip
        return ask.ids

    def deliver_due(self, *, limit: int = 100) -> list[Delivery]:
        now = self.clock.now()
        with UnitOfWork(self.db, readonly=True) as uow:
            ids = uow.session.exec(
                select(VendorNotificationRow.id)
                .where(
                    col(VendorNotificationRow.status) == "pending",
                    or_(
                        col(VendorNotificationRow.next_attempt_at).is_(None),
                        col(VendorNotificationRow.next_attempt_at) <= now,
                    ),
                )
                .order_by(col(VendorNotificationRow.created_at))
                .limit(limit)
            ).all()
        return self.deliver_many(ids)

    def deliver(self, notification_id: str) -> Delivery:
        delivered = self.deliver_many([notification_id])
        if not delivered:
            raise NotFound(f"no notification {notification_id!r}")
        return delivered[0]

    def deliver_many(self, ids: Sequence[str]) -> list[Delivery]:
        """Send these notifications: one read for all of them, then one write recording every
        outcome, so a burst of new holds does not cost a commit per vendor message."""
        with UnitOfWork(self.db, readonly=True) as uow:
            rows = _by_id(uow, VendorNotificationRow, ids)
            reservations = _by_id(uow, Reservation, {r.reservation_id for r in rows.values()})
            vendors = _by_id(uow, Vendor, {r.vendor_id for r in rows.values()})
            tokens = _by_id(uow, ConfirmationToken, {r.token_id for r in rows.values()})
        done: dict[str, Delivery] = {}
        outcomes: list[tuple[str, str, str | None]] = []
        for row in (rows[i] for i in dict.fromkeys(ids) if i in rows):
            reservation, vendor = reservations[row.reservation_id], vendors[row.vendor_id]
            if row.status != "pending":
                done[row.id] = Delivery(
                    row.id, row.reservation_id, row.channel, row.status, row.last_error
                )
            elif S(reservation.state) is not S.AWAITING_VENDOR_CONFIRMATION:
                outcomes.append((row.id, "obsolete", None))  # answered or expired meanwhile
            else:
                outcomes.append(self._send(row, reservation, vendor, tokens[row.token_id]))
        done.update(self._record(outcomes))
        return [done[i] for i in dict.fromkeys(ids) if i in done]

    def _send(
        self,
        row: VendorNotificationRow,
        reservation: Reservation,
        vendor: Vendor,
        token: ConfirmationToken,
    ) -> tuple[str, str, str | None]:
        notification = VendorNotification(
            reservation_id=reservation.id,
            vendor_id=vendor.id,
            vendor_name=vendor.name,
            slot_start=reservation.slot_start,
            slot_end=reservation.slot_end,
            timezone=vendor.timezone,
            requester_id=reservation.requester_id,
            token=self.token_for(token),
            expires_at=token.expires_at,
            answer_url=(
                f"{self.answer_url.rstrip('/')}/v1/reservations/{reservation.id}/vendor-confirmation"
                if self.answer_url
                else None
            ),
        )
        notifier = self.notifiers.get(row.channel) or self.notifiers["console"]
        try:
            notifier.send(row.destination, notification)
        except NotificationFailed as exc:
            return row.id, "retry" if exc.retryable else "failed", exc.message
        return row.id, "sent", None

    def _record(self, outcomes: list[tuple[str, str, str | None]]) -> dict[str, Delivery]:
        if not outcomes:
            return {}
        now = self.clock.now()
        done = {}
        with UnitOfWork(self.db) as uow:
            rows = _by_id(uow, VendorNotificationRow, [i for i, _, _ in outcomes])
            for notification_id, outcome, error in outcomes:
                row = rows[notification_id]
                row.attempts += 1
                row.last_error = error
                if outcome == "retry":
                    row.next_attempt_at = now + min(
                        MAX_BACKOFF, timedelta(seconds=5 * 2 ** min(row.attempts, 10))
                    )
                else:
                    row.status = outcome
                    row.next_attempt_at = None
                    if outcome == "sent":
                        row.sent_at = now
                done[row.id] = Delivery(row.id, row.reservation_id, row.channel, row.status, error)
            uow.commit()
        for notification_id, outcome, _ in outcomes:
            if outcome == "failed":
                row = rows[notification_id]
                log.warning("notification %s to vendor %s failed for good", row.id, row.vendor_id)
        return done

    # -- answering ---------------------------------------------------------------------------

    def answer(self, reservation_id: str, token: str, decision: str) -> str:
        """Spend a token on the vendor's decision; returns the reservation's new state.

        Refuses a forged, expired, spent or foreign token (`invalid_token`, 403)."""
        if decision not in ("confirm", "decline"):
            raise InvalidTransition("decision must be 'confirm' or 'decline'")
        token_id, token_reservation, expires = self._parse(token)
        now = self.clock.now()
        if token_reservation != reservation_id:
            raise InvalidToken("the token belongs to another reservation")
        if now >= expires:
            raise InvalidToken("the token has expired")
        actor = f"vendor:token:{token_id}"
        with UnitOfWork(self.db) as uow:
            row = uow.session.get(ConfirmationToken, token_id)
            if row is None or row.reservation_id != reservation_id:
                raise InvalidToken("unknown token")
            if row.used_at is not None:
                raise InvalidToken("the token was already used")
            reservation = uow.reservations.get(reservation_id, for_update=True)
            assert reservation is not None
            row.used_at = now
            target = S.CONFIRMED_BY_VENDOR if decision == "confirm" else S.CANCELLED
            reason = "confirmed by vendor" if decision == "confirm" else "declined by vendor"
            _answer(uow, reservation, target, now, self.ttls, actor, reason)
            uow.commit()
        if target is S.CONFIRMED_BY_VENDOR and self.on_confirmed is not None:
            self.on_confirmed(reservation_id)
        with UnitOfWork(self.db, readonly=True) as uow:
            current = uow.reservations.get(reservation_id)
            assert current is not None
            return current.state


def _answer(
    uow: UnitOfWork,
    reservation: Reservation,
    target: ReservationState,
    now: datetime,
    ttls: StageTTLs,
    actor: str,
    reason: str,
) -> None:
    if S(reservation.state) is S.HELD:
        transitions.apply(uow, reservation, S.AWAITING_VENDOR_CONFIRMATION, now=now, ttls=ttls,
                          reason="confirmation requested", actor=actor)  # fmt: skip
    if S(reservation.state) is not S.AWAITING_VENDOR_CONFIRMATION:
        raise InvalidTransition(
            f"the vendor's answer is no longer open: the reservation is {reservation.state}",
            details={"state": reservation.state},
        )
    transitions.apply(uow, reservation, target, now=now, ttls=ttls, reason=reason, actor=actor,
                      details={"decision": "confirm" if target is S.CONFIRMED_BY_VENDOR
                               else "decline"})  # fmt: skip
