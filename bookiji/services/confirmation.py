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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, Text, bindparam, type_coerce, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, or_, select

from bookiji.domain.errors import BookijiError, DeadlinePassed, InvalidTransition, NotFound
from bookiji.domain.states import ReservationState, StageTTLs, expiry_target
from bookiji.domain.timeutil import format_instant
from bookiji.services import transitions
from bookiji.services.clock import Clock
from bookiji.services.deadlines import expire_now
from bookiji.services.ids import new_id
from bookiji.services.ports import NotificationFailed, Notifier, VendorNotification
from bookiji.store.crypto import PiiKeyError, unseal
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
_N = VendorNotificationRow.__table__  # type: ignore[attr-defined]
_R = Reservation.__table__  # type: ignore[attr-defined]
_V = Vendor.__table__  # type: ignore[attr-defined]
_T = ConfirmationToken.__table__  # type: ignore[attr-defined]
# What sending needs, in one read for a whole batch.
_TO_SEND = (
    sa_select(
        _N.c.id, _N.c.status, _N.c.channel, _N.c.destination, _N.c.last_error, _N.c.attempts,
        _N.c.reservation_id, _N.c.vendor_id, _N.c.token_id, _R.c.state, _R.c.slot_start,
        _R.c.slot_end, _R.c.requester_id, _V.c.name.label("vendor_name"), _V.c.timezone,
        _T.c.expires_at,
        # As stored (sealed): opened only for the webhook rows that send to it.
        type_coerce(_V.c.notify_webhook_url, Text).label("webhook_url"),
    )
    .join(_R, _R.c.id == _N.c.reservation_id)
    .join(_V, _V.c.id == _N.c.vendor_id)
    .join(_T, _T.c.id == _N.c.token_id)
    .where(_N.c.id.in_(bindparam("ids", expanding=True)))
)  # fmt: skip
_RETRY = (
    update(_N)
    .where(_N.c.id == bindparam("b_id"))
    .values(attempts=_N.c.attempts + 1, last_error=bindparam("b_error"),
            next_attempt_at=bindparam("b_next"))
)  # fmt: skip
_FINISH = (
    update(_N)
    .where(_N.c.id == bindparam("b_id"))
    .values(attempts=_N.c.attempts + 1, last_error=bindparam("b_error"),
            status=bindparam("b_status"), next_attempt_at=None, sent_at=bindparam("b_sent"))
)  # fmt: skip


@dataclass(frozen=True)
class _Outcome:
    row: Row[Any]  # a row of _TO_SEND
    outcome: str  # sent | retry | failed | obsolete
    error: str | None


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
        return self._token(token.id, token.reservation_id, token.expires_at)

    def _token(self, token_id: str, reservation_id: str, expires_at: datetime) -> str:
        body = f"bkv1.{token_id}.{reservation_id}.{int(expires_at.timestamp())}"
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
        """(channel, destination) for each way the vendor is asked. A webhook's URL is a
        secret, sealed on the vendor's row: the notification does not copy it (its
        destination stays empty) and the sender reads it from there."""
        wanted = [
            ("email", vendor.notify_email, vendor.notify_email),
            ("webhook", vendor.notify_webhook_url, ""),
            ("sms", vendor.notify_sms, vendor.notify_sms),
        ]
        chosen = [(c, d or "") for c, given, d in wanted if given and c in self.notifiers]
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
        outcome, so a burst of new holds does not cost a commit per vendor message. Reads
        only the columns a message needs (never the requester's sealed data)."""
        wanted = list(dict.fromkeys(ids))
        with UnitOfWork(self.db, readonly=True) as uow:
            found = uow.session.execute(_TO_SEND, {"ids": wanted}).all()
        rows = {row.id: row for row in found}
        done: dict[str, Delivery] = {}
        outcomes: list[_Outcome] = []
        for row in (rows[i] for i in wanted if i in rows):
            if row.status != "pending":
                done[row.id] = Delivery(
                    row.id, row.reservation_id, row.channel, row.status, row.last_error
                )
            elif S(row.state) is not S.AWAITING_VENDOR_CONFIRMATION:
                outcomes.append(_Outcome(row, "obsolete", None))  # answered or expired meanwhile
            else:
                outcomes.append(self._send(row))
        done.update(self._record(outcomes))
        return [done[i] for i in wanted if i in done]

    def _send(self, row: Row[Any]) -> _Outcome:
        notification = VendorNotification(
            reservation_id=row.reservation_id,
            vendor_id=row.vendor_id,
            vendor_name=row.vendor_name,
            slot_start=row.slot_start,
            slot_end=row.slot_end,
            timezone=row.timezone,
            requester_id=row.requester_id,
            token=self._token(row.token_id, row.reservation_id, row.expires_at),
            expires_at=row.expires_at,
            answer_url=(
                f"{self.answer_url.rstrip('/')}/v1/reservations/{row.reservation_id}"
                "/vendor-confirmation"
                if self.answer_url
                else None
            ),
        )  # fmt: skip
        notifier = self.notifiers.get(row.channel) or self.notifiers["console"]
        try:
            notifier.send(self._destination(row), notification)
        except NotificationFailed as exc:
            return _Outcome(row, "retry" if exc.retryable else "failed", exc.message)
        return _Outcome(row, "sent", None)

    @staticmethod
    def _destination(row: Row[Any]) -> str:
        if row.channel != "webhook":
            return str(row.destination)
        try:
            url = unseal(row.webhook_url)
        except PiiKeyError as exc:  # the operator fixes the keys; then it goes out
            raise NotificationFailed(
                f"cannot open the vendor's webhook URL: {exc.message}", retryable=True
            ) from None
        if not url:
            raise NotificationFailed("the vendor has no webhook URL any more", retryable=False)
        return url

    def _record(self, outcomes: list[_Outcome]) -> dict[str, Delivery]:
        """Every outcome of a batch in one transaction: two statements, each run for many."""
        if not outcomes:
            return {}
        now = self.clock.now()
        retries = [
            {"b_id": o.row.id, "b_error": o.error, "b_next": now + min(
                MAX_BACKOFF, timedelta(seconds=5 * 2 ** min(o.row.attempts + 1, 10)))}
            for o in outcomes if o.outcome == "retry"
        ]  # fmt: skip
        finished = [
            {"b_id": o.row.id, "b_error": o.error, "b_status": o.outcome,
             "b_sent": now if o.outcome == "sent" else None}
            for o in outcomes if o.outcome != "retry"
        ]  # fmt: skip
        with UnitOfWork(self.db) as uow:
            connection = uow.session.connection()
            if retries:
                connection.execute(_RETRY, retries)
            if finished:
                connection.execute(_FINISH, finished)
            uow.commit()
        done = {}
        for o in outcomes:
            status = "pending" if o.outcome == "retry" else o.outcome
            done[o.row.id] = Delivery(
                o.row.id, o.row.reservation_id, o.row.channel, status, o.error
            )
            if o.outcome == "failed":
                log.warning(
                    "notification %s to vendor %s failed for good", o.row.id, o.row.vendor_id
                )
        return done

    # -- answering ---------------------------------------------------------------------------

    def answer(self, reservation_id: str, token: str, decision: str) -> str:
        """Spend a token on the vendor's decision; returns the reservation's new state.

        Refuses a forged, spent or foreign token (`invalid_token`, 403). The same decision
        sent again (its first answer lost on the way) gets the current state, as a
        re-applied transition does. A token past its deadline gets `deadline_passed` (409),
        and the reservation expires then if the expiry job has not yet got to it."""
        if decision not in ("confirm", "decline"):
            raise InvalidTransition("decision must be 'confirm' or 'decline'")
        token_id, token_reservation, expires = self._parse(token)
        now = self.clock.now()
        if token_reservation != reservation_id:
            raise InvalidToken("the token belongs to another reservation")
        actor = f"vendor:token:{token_id}"
        late: DeadlinePassed | None = None
        with UnitOfWork(self.db) as uow:
            row = uow.session.get(ConfirmationToken, token_id)
            if row is None or row.reservation_id != reservation_id:
                raise InvalidToken("unknown token")
            if row.used_at is not None:
                return self._answered_before(uow, reservation_id, actor, decision)
            reservation = uow.reservations.get(reservation_id, for_update=True)
            assert reservation is not None
            if now >= expires:
                late = self._too_late(uow, reservation, expires, now)
                uow.commit()
            else:
                row.used_at = now
                target = S.CONFIRMED_BY_VENDOR if decision == "confirm" else S.CANCELLED
                reason = "confirmed by vendor" if decision == "confirm" else "declined by vendor"
                _answer(uow, reservation, target, now, self.ttls, actor, reason)
                uow.commit()
        if late is not None:
            raise late
        if target is S.CONFIRMED_BY_VENDOR and self.on_confirmed is not None:
            self.on_confirmed(reservation_id)
        with UnitOfWork(self.db, readonly=True) as uow:
            current = uow.reservations.get(reservation_id)
            assert current is not None
            return current.state

    @staticmethod
    def _answered_before(uow: UnitOfWork, reservation_id: str, actor: str, decision: str) -> str:
        made = [
            (t.details or {}).get("decision")
            for t in uow.transitions.for_reservation(reservation_id)
            if t.actor == actor and (t.details or {}).get("decision")
        ]
        if made and made[-1] == decision:
            current = uow.reservations.get(reservation_id)
            assert current is not None
            return current.state
        raise InvalidToken(
            f"the token was already used to {made[-1]}" if made else "the token was already used"
        )

    def _too_late(
        self, uow: UnitOfWork, reservation: Reservation, expires: datetime, now: datetime
    ) -> DeadlinePassed:
        """The vendor answered after the deadline the token carries: expired as the job
        would have, or already expired (or otherwise moved on) by then. No money moves
        before the vendor confirms; any compensation row planned is run by reconcile."""
        due = expiry_target(S(reservation.state), reservation.state_deadline, now)
        if due is not None:
            refusal, _ = expire_now(uow, reservation, due, now, self.ttls)
            return refusal
        return DeadlinePassed(
            f"the vendor's answer was due by {format_instant(expires)}; "
            f"the reservation is now {reservation.state}",
            details={"reservationId": reservation.id, "state": reservation.state,
                     "deadline": format_instant(expires)},
        )  # fmt: skip


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
