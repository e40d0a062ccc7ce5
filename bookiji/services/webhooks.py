"""Partner webhooks: every outbox event of a partner's reservations, delivered to the
partner's endpoint at least once, in order per reservation.

Three steps, each safe to run from several processes at once:

* `fan_out` turns outbox events into `webhook_deliveries` rows, one per (event, partner),
  for partners with a webhook URL that are not disabled. An anti-join finds the events
  without a row; `INSERT ... ON CONFLICT DO NOTHING` on the unique (event_id, partner_id)
  makes two concurrent fan-outs insert each row once.
* `deliver_due` sends due rows on a few lanes (threads, `concurrency` of them), one
  partner per lane, so an endpoint that hangs until the send timeout holds up its own
  partner's deliveries, never another partner's. A lane claims a few of its partner's due
  rows (`chunk`) in a short transaction (`FOR UPDATE SKIP LOCKED` on Postgres, the BEGIN
  IMMEDIATE writer lock on SQLite) that counts an attempt on each and pushes
  `next_attempt_at` out by a lease of one send timeout, commits, and only then sends them
  one by one: network time never holds a lock. Just before each send, a short conditional
  UPDATE (the row still pending with this worker's attempt count) renews the row's lease
  to a full send timeout from then, and the lease of the rows still waiting their turn
  along with it once half of theirs has gone; a row found claimed by another worker
  meanwhile is skipped. A worker that dies loses nothing: its rows are due again at most
  one send timeout after it last renewed them. Only the earliest pending row of each
  (partner, reservation) is claimable, so a later event waits while an earlier one is
  retried (a dead one no longer blocks). A send that got no answer (a timeout, a refused
  connection) ends its partner's turn in this call: the rows still waiting are released
  (due now, their attempt not counted), rather than each costing a timeout now, and the
  partner cools off: none of its rows is claimed while a row of it that went unanswered
  waits out its backoff. Then one send is the probe that tells whether the endpoint is
  back. So a dead endpoint takes a lane for one send timeout per backoff (which grows as
  its rows' attempts mount), not on every call, and several dead endpoints do not take
  every lane from the live ones. While a lane is still sending after `idle_poll` seconds,
  the free lanes fan out new events and take up other partners' due rows meanwhile.
* The outcome is written in a second transaction: 2xx delivered; anything else waits
  `min(max_delay, base_delay * 2**(attempts-1))` times a jitter in [0.5, 1.5), and after
  `max_attempts` attempts (or a failure that can never succeed) the row is dead. A row is
  never claimed once it has had `max_attempts` attempts: when the last one's outcome was
  never recorded (its worker died, or overran its lease) the row is dead once that lease
  has run out, not sent once more. Dead rows stay visible to operators and `replay` puts
  them back.

The message id is the event id, identical on every attempt and every replay, so receivers
deduplicate; the body is `{"type", "id", "createdAt", "data"}`. HTTP itself is behind the
`WebhookSender` port. Until a partner's `previous_webhook_secret_until` (a secret rotation's
overlap), a send, `send_test`'s too, is signed with the previous secret as well as the new.
"""

from __future__ import annotations

import builtins
import logging
import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from bookiji.domain.errors import Conflict, NotFound, ValidationFailed
from bookiji.domain.timeutil import format_instant
from bookiji.services.clock import Clock
from bookiji.services.events import cancel_notes, event_data
from bookiji.services.ids import new_id
from bookiji.services.ports import WebhookSender, WebhookSendFailed
from bookiji.store.database import Database
from bookiji.store.models import OutboxEvent, Partner, WebhookDelivery
from bookiji.store.uow import UnitOfWork

log = logging.getLogger(__name__)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATUSES = (PENDING, DELIVERED, DEAD)
TEST_EVENT_TYPE = "webhook.test"

#: Partners `deliver_due` sends to at once by default, and at most: each lane is a thread
#: that holds a database connection for its short transactions (see store/database.py).
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 8


class _NoAnswer(Exception):
    """A send got no answer: the partner's turn in this round is over."""


#: 2**48 base delays is beyond any sensible cap; stops the multiplication from overflowing.
_MAX_EXPONENT = 48


@dataclass(frozen=True)
class DeliveryView:
    """One delivery as operators see it (`bookiji webhooks list`)."""

    id: str
    event_id: str
    event_seq: int
    event_type: str | None
    partner_id: str
    reservation_id: str | None
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    #: A pending row's earlier event, still pending, of the same partner and reservation:
    #: this one is not sent before that one is delivered or dead, whatever its due time.
    waiting_for: str | None = None

    def document(self) -> dict[str, Any]:
        """camelCase JSON for the CLI and the API."""
        return {
            "id": self.id,
            "eventId": self.event_id,
            "eventSeq": self.event_seq,
            "eventType": self.event_type,
            "partnerId": self.partner_id,
            "reservationId": self.reservation_id,
            "status": self.status,
            "attempts": self.attempts,
            "nextAttemptAt": format_instant(self.next_attempt_at),
            "lastStatus": self.last_status,
            "lastError": self.last_error,
            "createdAt": format_instant(self.created_at),
            "deliveredAt": format_instant(self.delivered_at),
            "waitingFor": self.waiting_for,
        }


@dataclass(frozen=True)
class DeliveryResult:
    """What one attempt of `deliver_due` did. `http_status` is None when no answer came."""

    delivery_id: str
    event_id: str
    partner_id: str
    reservation_id: str | None
    status: str
    attempts: int
    http_status: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None

    def document(self) -> dict[str, Any]:
        """camelCase JSON, e.g. an item of the daemon's job report."""
        return {
            "deliveryId": self.delivery_id,
            "eventId": self.event_id,
            "partnerId": self.partner_id,
            "reservationId": self.reservation_id,
            "status": self.status,
            "attempts": self.attempts,
            "httpStatus": self.http_status,
            "error": self.error,
            "nextAttemptAt": format_instant(self.next_attempt_at),
        }


@dataclass(frozen=True)
class _Claim:
    """A row this worker claimed, leased until `lease` (renewed before it is sent), and
    owns for as long as its `attempts` is still `token`."""

    delivery_id: str
    token: int
    lease: datetime
    event_id: str
    partner_id: str
    reservation_id: str | None
    payload: dict[str, object] | None
    #: The partner's endpoint, read just before the send (`_send`), not when claimed.
    url: str | None = None
    secret: str | None = None
    #: The secret before the last rotation and until when it also signs (None: none).
    previous_secret: str | None = None
    previous_until: datetime | None = None


def overlapping(partner: Partner | None, now: datetime) -> str | None:
    """The partner's previous webhook secret while its rotation's overlap lasts (deliveries
    are signed with it too), else None."""
    if partner is None or partner.previous_webhook_secret_until is None:
        return None
    return partner.previous_webhook_secret if now < partner.previous_webhook_secret_until else None


def backoff_delay(
    attempts: int, *, base: timedelta, cap: timedelta, rng: random.Random
) -> timedelta:
    """The wait after the `attempts`-th failed attempt: base, 2 base, 4 base... capped at
    `cap`, times a jitter in [0.5, 1.5) so endpoints that fail together do not get their
    retries together too."""
    exponent = max(0, attempts - 1)
    delay = cap if exponent >= _MAX_EXPONENT else min(cap, base * 2**exponent)
    return delay * rng.uniform(0.5, 1.5)


def event_payload(
    event: OutboxEvent, notes: Mapping[str, str | None] | None = None
) -> dict[str, object]:
    """The body sent; `notes` are the cancel notes of the events' reservations, read when
    the event is claimed (see `bookiji.services.events`)."""
    return {
        "type": event.type,
        "id": event.event_id,
        "createdAt": format_instant(event.created_at),
        "data": event_data(event, notes or {}),
    }


def delivery_view(row: WebhookDelivery, event_type: str | None) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        event_id=row.event_id,
        event_seq=row.event_seq,
        event_type=event_type,
        partner_id=row.partner_id,
        reservation_id=row.reservation_id,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_status=row.last_status,
        last_error=row.last_error,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
    )


class WebhookService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        sender: WebhookSender,
        *,
        max_attempts: int = 30,
        base_delay: timedelta = timedelta(seconds=5),
        max_delay: timedelta = timedelta(hours=1),
        batch: int = 100,
        rng: random.Random | None = None,
        send_timeout: timedelta = timedelta(seconds=30),
        concurrency: int = DEFAULT_CONCURRENCY,
        idle_poll: float = 0.5,
    ) -> None:
        """`send_timeout` bounds one send (the HTTP sender's own timeout is shorter): it is
        the lease of a claimed row. `concurrency` is how many partners `deliver_due` sends
        to at once (one lane, a thread, each); `idle_poll` how many seconds of real time
        pass between two looks for more work while a lane is still sending."""
        if max_attempts < 1 or batch < 1:
            raise ValueError("max_attempts and batch must be at least 1")
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
        if idle_poll <= 0:
            raise ValueError("idle_poll must be positive")
        if base_delay <= timedelta(0) or max_delay < base_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        if send_timeout <= timedelta(0):
            raise ValueError("send_timeout must be positive")
        self.db = db
        self.clock = clock
        self.sender = sender
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.batch = batch
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self.send_timeout = send_timeout
        self.concurrency = concurrency
        self.idle_poll = idle_poll
        #: Rows a lane claims at a time for its partner (one query for several sends): the
        #: lanes together claim about one batch.
        self.chunk = max(1, batch // concurrency)
        self._stopping = threading.Event()
        self._statements()

    def stop(self) -> None:
        """Claim nothing more (the daemon is shutting down): a `deliver_due` under way
        finishes the sends in flight and returns; later calls send nothing."""
        self._stopping.set()

    # -- fan-out ----------------------------------------------------------------------------

    def fan_out(self) -> int:
        """Create the missing delivery rows, oldest event first, `batch` per transaction.
        Returns how many rows this call inserted (a concurrent fan-out may insert others)."""
        # A read decides first: this runs every few seconds (and while a slow send goes on,
        # more often), and on SQLite a write transaction takes the writer lock.
        with UnitOfWork(self.db, readonly=True) as uow:
            if uow.session.exec(self._undelivered_events().limit(1)).first() is None:
                return 0
        created = 0
        while True:
            with UnitOfWork(self.db) as uow:
                missing = uow.session.exec(self._undelivered_events()).all()
                if not missing:
                    break
                now = self.clock.now()
                rows = [
                    {
                        "id": new_id("whd"),
                        "event_id": event_id,
                        "event_seq": seq,
                        "partner_id": partner_id,
                        "reservation_id": reservation_id,
                        "status": PENDING,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                    for seq, event_id, partner_id, reservation_id in missing
                ]
                # RETURNING names the rows really inserted (rowcount is -1 on some drivers).
                created += len(uow.session.execute(self._insert_new(rows)).all())
                uow.commit()
            if len(missing) < self.batch:
                break
        return created

    def _undelivered_events(self) -> Any:
        d = WebhookDelivery
        has_row = exists().where(
            col(d.event_id) == col(OutboxEvent.event_id),
            col(d.partner_id) == col(OutboxEvent.partner_id),
        )
        return (
            select(
                OutboxEvent.id,
                OutboxEvent.event_id,
                OutboxEvent.partner_id,
                OutboxEvent.reservation_id,
            )
            .join(Partner, col(Partner.id) == col(OutboxEvent.partner_id))
            .where(
                col(Partner.webhook_url).is_not(None),
                col(Partner.webhook_url) != "",
                col(Partner.disabled_at).is_(None),
                ~has_row,
            )
            .order_by(col(OutboxEvent.id))
            .limit(self.batch)
        )

    def _insert_new(self, rows: list[dict[str, object]]) -> Any:
        """INSERT that skips rows a concurrent fan-out committed first (same unique key)."""
        keys = ["event_id", "partner_id"]
        insert = pg_insert if self.db.is_postgres else sqlite_insert
        return (
            insert(WebhookDelivery)
            .values(rows)
            .on_conflict_do_nothing(index_elements=keys)
            .returning(col(WebhookDelivery.id))
        )

    # -- delivery ---------------------------------------------------------------------------

    def deliver_due(self, limit: int | None = None) -> list[DeliveryResult]:
        """Claim, send and record up to `limit` (default `batch`) due deliveries, several
        partners at once, each partner's one at a time (see the module docstring). Rows
        whose last attempt was lost come back as dead letters first. Returns once every
        lane is done: no partner has a claimable row left, except those whose endpoint gave
        no answer in this call, or the limit is reached, or `stop` was called."""
        results = self._bury_lost_last_attempts()
        return results + _Round(self, limit or self.batch).run()

    def _claimable(self) -> list[Any]:
        """The rows a worker may claim at `:now`: pending, an attempt left, due (the lease of
        their last claim or their backoff over; a pending row always has a due time), and
        no earlier event of their reservation to that partner still pending."""
        d = WebhookDelivery
        earlier = aliased(WebhookDelivery)
        blocked = exists().where(
            col(earlier.partner_id) == col(d.partner_id),
            col(earlier.reservation_id) == col(d.reservation_id),
            col(earlier.status) == PENDING,
            col(earlier.event_seq) < col(d.event_seq),
        )
        return [
            col(d.status) == PENDING,
            col(d.attempts) < self.max_attempts,
            col(d.next_attempt_at) <= bindparam("now"),
            ~blocked,
        ]

    def _statements(self) -> None:
        """The delivery queries, built once (building one costs more than running it)."""
        d = WebhookDelivery
        enabled = exists().where(
            col(Partner.id) == col(d.partner_id),
            col(Partner.disabled_at).is_(None),
            col(Partner.webhook_url).is_not(None),
        )
        # Partners cooling off: a row whose last attempt got no answer is not due yet (read
        # through the (status, next_attempt_at) index: pending rows due later are few).
        unanswered = aliased(WebhookDelivery)
        cooling = select(unanswered.partner_id).where(
            col(unanswered.status) == PENDING,
            col(unanswered.next_attempt_at) > bindparam("now"),
            col(unanswered.last_status).is_(None),
            col(unanswered.last_error).is_not(None),
        )
        self._due_stmt = (
            select(d.partner_id)
            .where(
                *self._claimable(),
                enabled,
                col(d.partner_id).not_in(bindparam("exclude", expanding=True)),
                col(d.partner_id).not_in(cooling),
            )
            .order_by(col(d.next_attempt_at), col(d.event_seq))
            .limit(self.batch)
        )
        reachable = exists().where(
            col(Partner.id) == col(d.partner_id),
            col(Partner.disabled_at).is_(None),
            col(Partner.webhook_url).is_not(None),
            col(Partner.webhook_url) != "",
        )
        self._claim_stmt = (
            select(d)
            .where(col(d.partner_id) == bindparam("partner"), *self._claimable(), reachable)
            .order_by(col(d.next_attempt_at), col(d.event_seq))
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True, of=d)
        )
        self._events_stmt = select(OutboxEvent).where(
            col(OutboxEvent.event_id).in_(bindparam("events", expanding=True))
        )
        lost = (
            col(d.status) == PENDING,
            col(d.attempts) >= self.max_attempts,
            col(d.next_attempt_at) <= bindparam("now"),
        )
        self._any_lost_stmt = select(d.id).where(*lost).limit(1)
        self._lost_stmt = select(d).where(*lost).with_for_update(skip_locked=True)

    def _due_partners(self, exclude: set[str], limit: int) -> list[str]:
        """Up to `limit` partners, not in `exclude` and not cooling off, with a claimable
        row: earliest due first. A read without locks; a lane's claim decides."""
        params = {"now": self.clock.now(), "exclude": sorted(exclude)}
        with UnitOfWork(self.db, readonly=True) as uow:
            found = uow.session.exec(self._due_stmt, params=params).all()
        return list(dict.fromkeys(found))[:limit]

    def _claim(self, partner_id: str, limit: int) -> list[_Claim]:
        """Claim up to `limit` of the partner's due rows, earliest first, in one short
        transaction: count an attempt on each and lease it for one send timeout. [] if it
        has none (or other workers hold them)."""
        now = self.clock.now()
        params = {"now": now, "partner": partner_id, "limit": limit}
        with UnitOfWork(self.db) as uow:
            rows = list(uow.session.exec(self._claim_stmt, params=params).all())
            if not rows:
                return []
            events = {
                e.event_id: e
                for e in uow.session.exec(
                    self._events_stmt, params={"events": [r.event_id for r in rows]}
                ).all()
            }
            notes = cancel_notes(uow.session, events.values())
            claims = []
            lease = now + self.send_timeout
            for row in rows:
                row.attempts += 1
                row.next_attempt_at = lease
                event = events.get(row.event_id)
                claims.append(
                    _Claim(
                        delivery_id=row.id,
                        token=row.attempts,
                        lease=lease,
                        event_id=row.event_id,
                        partner_id=row.partner_id,
                        reservation_id=row.reservation_id,
                        payload=event_payload(event, notes) if event else None,
                    )
                )
            uow.commit()
        return claims

    def _send(self, claims: list[_Claim], go_on: Callable[[], bool]) -> Iterator[DeliveryResult]:
        """Send claimed rows one by one, each under a lease renewed to a full send timeout
        just before its send; the rows waiting their turn get theirs renewed with it
        whenever half of it has gone, so a long run of sends keeps its rows while a killed
        worker holds them back one send timeout at most. A row that is no longer this
        worker's (its lease ran out and another worker claimed it) is left to that worker.
        Once `go_on()` is false, or after a send that got no answer (then `_NoAnswer` is
        raised), the rows not sent yet are released: due now, their attempt not counted."""
        waiting_until = claims[0].lease if claims else self.clock.now()
        for index, claim in enumerate(claims):
            if not go_on():
                self._release(claims[index:])
                return
            now = self.clock.now()
            if now + self.send_timeout / 2 >= waiting_until:
                renew: Sequence[_Claim] = claims[index:]
                waiting_until = now + self.send_timeout
            else:
                renew = [claim]
            if claim.delivery_id not in self._renew(renew, now + self.send_timeout):
                continue
            # The partner as it is now, not as it was when the chunk was claimed: a URL moved,
            # a leaked secret rotated or a partner disabled since counts from the next send.
            with UnitOfWork(self.db, readonly=True) as uow:
                partner = uow.session.get(Partner, claim.partner_id)
            if partner is not None and partner.disabled_at is not None:
                self._release(claims[index:])
                return
            claim = replace(
                claim,
                url=partner.webhook_url if partner else None,
                secret=partner.webhook_secret if partner else None,
                previous_secret=overlapping(partner, now),
                previous_until=partner.previous_webhook_secret_until if partner else None,
            )
            result, answered = self._attempt(claim)
            yield result
            if not answered:
                self._release(claims[index + 1 :])
                raise _NoAnswer

    def _mine(self, claims: Sequence[_Claim]) -> Any:
        """The claimed rows still this worker's: pending, attempt count unchanged."""
        d = WebhookDelivery
        return and_(
            col(d.status) == PENDING,
            or_(
                *(
                    and_(col(d.id) == claim.delivery_id, col(d.attempts) == claim.token)
                    for claim in claims
                )
            ),
        )

    def _renew(self, claims: Sequence[_Claim], until: datetime) -> set[str]:
        """Extend the lease of the claimed rows still this worker's to `until`, in one
        short transaction; their ids."""
        d = WebhookDelivery
        stmt = (
            update(d)
            .where(self._mine(claims))
            .values(next_attempt_at=until)
            .returning(col(d.id))
            .execution_options(synchronize_session=False)
        )
        with UnitOfWork(self.db) as uow:
            kept = {str(delivery_id) for delivery_id in uow.session.execute(stmt).scalars()}
            uow.commit()
        return kept

    def _release(self, claims: Sequence[_Claim]) -> None:
        """Give back claimed rows that were not sent: due now, their attempt not counted
        (the count returns to what it was before the claim)."""
        if not claims:
            return
        d = WebhookDelivery
        stmt = (
            update(d)
            .where(self._mine(claims))
            .values(attempts=col(d.attempts) - 1, next_attempt_at=self.clock.now())
            .execution_options(synchronize_session=False)
        )
        with UnitOfWork(self.db) as uow:
            uow.session.execute(stmt)
            uow.commit()

    def _bury_lost_last_attempts(self) -> list[DeliveryResult]:
        """Dead letters of the pending rows that have had every attempt, the last one
        claimed by a worker that never recorded its outcome (it died, or its send outlasted
        the lease) and that lease over. Such a row is never claimed again: another send
        would be attempt `max_attempts + 1`. A read decides before any write transaction."""
        params = {"now": self.clock.now()}
        with UnitOfWork(self.db, readonly=True) as uow:
            if uow.session.exec(self._any_lost_stmt, params=params).first() is None:
                return []
        results = []
        with UnitOfWork(self.db) as uow:
            rows = uow.session.exec(self._lost_stmt, params=params).all()
            for row in rows:
                row.status = DEAD
                row.next_attempt_at = None
                row.last_status = None
                row.last_error = (
                    f"attempt {row.attempts} of {self.max_attempts} has no outcome recorded "
                    "(the worker sending it stopped or overran its lease); no attempt left"
                )
                results.append(self._result(row, None, row.last_error))
            uow.commit()
        for result in results:
            log.warning(
                "webhook %s to partner %s is dead after %d attempts: %s",
                result.event_id,
                result.partner_id,
                result.attempts,
                result.error,
            )
        return results

    @staticmethod
    def _result(row: WebhookDelivery, http_status: int | None, error: str | None) -> DeliveryResult:
        return DeliveryResult(
            delivery_id=row.id,
            event_id=row.event_id,
            partner_id=row.partner_id,
            reservation_id=row.reservation_id,
            status=row.status,
            attempts=row.attempts,
            http_status=http_status,
            error=error,
            next_attempt_at=row.next_attempt_at,
        )

    def _attempt(self, claim: _Claim) -> tuple[DeliveryResult, bool]:
        """Send one claimed row and record the outcome; whether the endpoint answered."""
        if claim.payload is None:
            return self._record(claim, None, "the event is no longer in the outbox", False), True
        if not claim.url or not claim.secret:
            problem = f"partner {claim.partner_id} has no webhook URL or secret"
            return self._record(claim, None, problem, False), True
        now = self.clock.now()
        still = claim.previous_until is not None and now < claim.previous_until
        try:
            status = self.sender.send(
                claim.url,
                claim.secret,
                message_id=claim.event_id,
                timestamp=now,
                payload=claim.payload,
                previous_secret=claim.previous_secret if still else None,
            )
        except WebhookSendFailed as exc:
            # A URL or secret that can never work fails at once: no reason to stop.
            return self._record(claim, None, exc.message, exc.retryable), not exc.retryable
        except Exception as exc:  # one broken send must not strand the rest
            log.warning("webhook %s: sender raised %s", claim.event_id, type(exc).__name__)
            return self._record(claim, None, f"sender error ({type(exc).__name__})", True), False
        if 200 <= status < 300:
            return self._record(claim, status, None, False), True
        return self._record(claim, status, f"HTTP {status}", True), True

    def _record(
        self, claim: _Claim, http_status: int | None, error: str | None, retryable: bool
    ) -> DeliveryResult:
        now = self.clock.now()
        delivered = error is None
        died = False
        with UnitOfWork(self.db) as uow:
            row = uow.session.exec(
                select(WebhookDelivery)
                .where(col(WebhookDelivery.id) == claim.delivery_id)
                .with_for_update()
            ).one()
            mine = row.attempts == claim.token
            # Dead and still ours: buried while this send outlasted its lease (it was the
            # last attempt); what came of it is known now after all.
            buried = row.status == DEAD and mine
            if delivered:
                # True whoever owns the row now; a worker that re-claimed it after our lease
                # ran out finds it delivered and records nothing.
                if row.status == PENDING or buried:
                    row.status = DELIVERED
                    row.delivered_at = now
                    row.next_attempt_at = None
                    row.last_status = http_status
                    row.last_error = None
            elif row.status == PENDING and mine:
                row.last_status = http_status
                row.last_error = error
                if not retryable or row.attempts >= self.max_attempts:
                    row.status = DEAD
                    row.next_attempt_at = None
                    died = True
                else:
                    row.next_attempt_at = now + backoff_delay(
                        row.attempts, base=self.base_delay, cap=self.max_delay, rng=self.rng
                    )
            elif buried:
                row.last_status = http_status
                row.last_error = error
            uow.commit()
        if died:
            log.warning(
                "webhook %s to partner %s is dead after %d attempts: %s",
                row.event_id,
                row.partner_id,
                row.attempts,
                row.last_error,
            )
        return self._result(row, http_status, error)

    # -- operators --------------------------------------------------------------------------

    def replay(self, event_id: str, partner_id: str | None = None) -> list[DeliveryView]:
        """Send an event again: its delivered or dead rows go back to pending, attempts 0,
        due now. A row still pending is left alone (it may be in flight right now)."""
        now = self.clock.now()
        with UnitOfWork(self.db) as uow:
            event = uow.session.exec(
                select(OutboxEvent).where(col(OutboxEvent.event_id) == event_id)
            ).first()
            if event is None:
                raise NotFound(f"unknown event {event_id!r}", details={"eventId": event_id})
            stmt = select(WebhookDelivery).where(col(WebhookDelivery.event_id) == event_id)
            if partner_id is not None:
                stmt = stmt.where(col(WebhookDelivery.partner_id) == partner_id)
            rows = list(uow.session.exec(stmt.with_for_update()).all())
            if not rows:
                whom = f" to partner {partner_id!r}" if partner_id else ""
                raise NotFound(
                    f"event {event_id!r} has no webhook delivery{whom}",
                    details={"eventId": event_id, "partnerId": partner_id},
                )
            for row in rows:
                if row.status != PENDING:
                    row.status = PENDING
                    row.attempts = 0
                    row.next_attempt_at = now
                    row.delivered_at = None
                    row.last_status = None
                    row.last_error = None
            uow.commit()
            return [delivery_view(row, event.type) for row in rows]

    def send_test(self, partner_id: str) -> int:
        """POST a synthetic `webhook.test` event, signed like the real ones and not stored;
        the HTTP status the endpoint answered. Raises WebhookSendFailed without an answer."""
        with UnitOfWork(self.db, readonly=True) as uow:
            partner = uow.session.get(Partner, partner_id)
        if partner is None:
            raise NotFound(f"unknown partner {partner_id!r}", details={"partnerId": partner_id})
        if not partner.webhook_url or not partner.webhook_secret:
            raise Conflict(
                f"partner {partner_id!r} has no webhook URL and secret",
                details={"partnerId": partner_id},
            )
        now = self.clock.now()
        message_id = new_id("evt")
        payload: dict[str, object] = {
            "type": TEST_EVENT_TYPE,
            "id": message_id,
            "createdAt": format_instant(now),
            "data": {"partnerId": partner.id, "test": True},
        }
        return self.sender.send(
            partner.webhook_url,
            partner.webhook_secret,
            message_id=message_id,
            timestamp=now,
            payload=payload,
            previous_secret=overlapping(partner, now),
        )

    def counts(self) -> dict[str, int]:
        """Deliveries per status (for metrics and the dashboard)."""
        with UnitOfWork(self.db, readonly=True) as uow:
            stmt = select(WebhookDelivery.status, func.count()).group_by(
                col(WebhookDelivery.status)
            )
            found = {status: int(n) for status, n in uow.session.exec(stmt).all()}
        return {status: found.get(status, 0) for status in STATUSES}

    def list(
        self, status: str | None = None, partner_id: str | None = None, limit: int = 100
    ) -> builtins.list[DeliveryView]:
        """Deliveries, newest event first."""
        if status is not None and status not in STATUSES:
            raise ValidationFailed(
                f"status must be one of {', '.join(STATUSES)}", details={"status": status}
            )
        if limit < 1:
            raise ValidationFailed("limit must be at least 1", details={"limit": limit})
        stmt = select(WebhookDelivery, OutboxEvent.type).outerjoin(
            OutboxEvent, col(OutboxEvent.event_id) == col(WebhookDelivery.event_id)
        )
        if status is not None:
            stmt = stmt.where(col(WebhookDelivery.status) == status)
        if partner_id is not None:
            stmt = stmt.where(col(WebhookDelivery.partner_id) == partner_id)
        stmt = stmt.order_by(
            col(WebhookDelivery.event_seq).desc(), col(WebhookDelivery.partner_id)
        ).limit(limit)
        with UnitOfWork(self.db, readonly=True) as uow:
            views = [
                delivery_view(row, event_type) for row, event_type in uow.session.exec(stmt).all()
            ]
            heads = self._pending_heads(uow, views)
        return [
            replace(v, waiting_for=head)
            if v.status == PENDING
            and (head := heads.get((v.partner_id, v.reservation_id))) is not None
            and head != v.event_id
            else v
            for v in views
        ]

    @staticmethod
    def _pending_heads(
        uow: UnitOfWork, views: builtins.list[DeliveryView]
    ) -> dict[tuple[str, str | None], str]:
        """The earliest pending event of each listed (partner, reservation): the only one
        `deliver_due` may send (see `_claim`)."""
        reservations = {v.reservation_id for v in views if v.status == PENDING and v.reservation_id}
        if not reservations:
            return {}
        d = WebhookDelivery
        rows = uow.session.exec(
            select(d.partner_id, d.reservation_id, d.event_id)
            .where(col(d.status) == PENDING, col(d.reservation_id).in_(reservations))
            .order_by(col(d.event_seq).desc())
        ).all()
        # Descending: the last write per key is its lowest event_seq.
        return {
            (partner, reservation): event for partner, reservation, event in rows if reservation
        }


class _Round:
    """One `deliver_due`: lanes (threads), each sending one partner's rows one at a time,
    at most `service.concurrency` at once and `limit` claims in all. The calling thread
    starts lanes for due partners, and while a lane is still sending after `idle_poll`
    seconds it fans out new events and starts lanes for partners that became due. A
    partner whose endpoint gave no answer, or whose lane found nothing to claim, gets no
    further lane in this round. An exception in a lane (or here) stops the round: no new
    claims, the lanes' sends in flight are recorded, then it is raised here."""

    def __init__(self, service: WebhookService, limit: int) -> None:
        self.service = service
        self.budget = limit
        self.results: list[DeliveryResult] = []
        self.busy: set[str] = set()
        self.done: set[str] = set()  # partners that get no further lane this round
        self.failure: BaseException | None = None
        self.changed = threading.Condition()
        self.lanes: list[threading.Thread] = []

    def _open(self) -> int:
        """How many lanes may start now (under `changed`)."""
        if self.failure is not None or self.service._stopping.is_set():
            return 0
        return min(self.service.concurrency, self.budget) - len(self.busy)

    def run(self) -> list[DeliveryResult]:
        service = self.service
        slow = False
        try:
            while True:
                with self.changed:
                    free = self._open()
                    exclude = self.busy | self.done
                if free > 0:
                    if slow:
                        service.fan_out()
                    for partner in service._due_partners(exclude, free):
                        self._start(partner)
                with self.changed:
                    if not self.busy:
                        break
                    # Woken when a lane ends; a timeout means a lane is still sending.
                    slow = not self.changed.wait(service.idle_poll)
        except BaseException as exc:
            with self.changed:
                self.failure = self.failure or exc
        finally:
            for lane in self.lanes:
                lane.join()
        if self.failure is not None:
            raise self.failure
        return self.results

    def _start(self, partner: str) -> None:
        with self.changed:
            self.busy.add(partner)
        lane = threading.Thread(
            target=self._lane, args=(partner,), name="bookiji-webhook-lane", daemon=True
        )
        self.lanes.append(lane)
        lane.start()

    def _go_on(self) -> bool:
        with self.changed:
            return self.failure is None and not self.service._stopping.is_set()

    def _lane(self, partner: str) -> None:
        service = self.service
        claimed = answered = False
        try:
            while self._go_on():
                with self.changed:
                    take = min(service.chunk, self.budget)
                    self.budget -= take
                if take <= 0:
                    break
                # Claimed rows count against the round's limit until they turn out unsent.
                claims = service._claim(partner, take)
                with self.changed:
                    self.budget += take - len(claims)
                if not claims:
                    break
                claimed = True
                sent = 0
                try:
                    for result in service._send(claims, self._go_on):
                        sent += 1
                        with self.changed:
                            self.results.append(result)
                    answered = True
                finally:  # claims not sent (given back, or taken over) count for nothing
                    with self.changed:
                        self.budget += len(claims) - sent
        except _NoAnswer:
            claimed, answered = True, False
        except BaseException as exc:
            with self.changed:
                self.failure = self.failure or exc
        finally:
            with self.changed:
                self.busy.discard(partner)
                if not claimed or not answered:
                    self.done.add(partner)
                self.changed.notify_all()
