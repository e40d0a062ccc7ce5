"""Partner webhooks: every outbox event of a partner's reservations, delivered to the
partner's endpoint at least once, in order per reservation.

Three steps, each safe to run from several processes at once:

* `fan_out` turns outbox events into `webhook_deliveries` rows, one per (event, partner),
  for partners with a webhook URL that are not disabled. An anti-join finds the events
  without a row; `INSERT ... ON CONFLICT DO NOTHING` on the unique (event_id, partner_id)
  makes two concurrent fan-outs insert each row once.
* `deliver_due` claims due rows in a short transaction (`FOR UPDATE SKIP LOCKED` on
  Postgres, the BEGIN IMMEDIATE writer lock on SQLite), counts the attempt and pushes
  `next_attempt_at` out by a lease of one send timeout, commits, and only then sends the
  rows one by one: network time never holds a lock. Just before each send, a short
  conditional UPDATE (the row still pending with this worker's attempt count) renews the
  row's lease to a full send timeout from then, and the lease of the rows still waiting in
  the batch along with it once half of theirs has gone; a row found claimed by another
  worker meanwhile is skipped. The lease keeps other workers off a row while it is in
  flight or waiting its turn; a worker that dies mid-batch loses nothing, because its rows
  become due again at most one send timeout after it last renewed them. Only the earliest
  pending row of each (partner, reservation) is claimable, so a later event waits while an
  earlier one is retried (a dead one no longer blocks).
* The outcome is written in a second transaction: 2xx delivered; anything else waits
  `min(max_delay, base_delay * 2**(attempts-1))` times a jitter in [0.5, 1.5), and after
  `max_attempts` attempts (or a failure that can never succeed) the row is dead. Dead rows
  stay visible to operators and `replay` puts them back.

The message id is the event id, identical on every attempt and every replay, so receivers
deduplicate; the body is `{"type", "id", "createdAt", "data"}`. HTTP itself is behind the
`WebhookSender` port.
"""

from __future__ import annotations

import builtins
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from bookiji.domain.errors import Conflict, NotFound, ValidationFailed
from bookiji.domain.timeutil import format_instant
from bookiji.services.clock import Clock
from bookiji.services.ids import new_id
from bookiji.services.ports import WebhookSender, WebhookSendFailed
from bookiji.store.database import Database
from bookiji.store.models import OutboxEvent, Partner, WebhookDelivery
from bookiji.store.uow import UnitOfWork

log = logging.getLogger(__name__)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATUSES = (PENDING, DELIVERED, DEAD)
TEST_EVENT_TYPE = "webhook.test"

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
    url: str | None
    secret: str | None
    payload: dict[str, object] | None


def backoff_delay(
    attempts: int, *, base: timedelta, cap: timedelta, rng: random.Random
) -> timedelta:
    """The wait after the `attempts`-th failed attempt: base, 2 base, 4 base... capped at
    `cap`, times a jitter in [0.5, 1.5) so endpoints that fail together do not get their
    retries together too."""
    exponent = max(0, attempts - 1)
    delay = cap if exponent >= _MAX_EXPONENT else min(cap, base * 2**exponent)
    return delay * rng.uniform(0.5, 1.5)


def event_payload(event: OutboxEvent) -> dict[str, object]:
    return {
        "type": event.type,
        "id": event.event_id,
        "createdAt": format_instant(event.created_at),
        "data": event.payload,
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
    ) -> None:
        """`send_timeout` bounds one send (the HTTP sender's own timeout is shorter): it is
        the lease of a claimed row, renewed before the row is sent (see `deliver_due`)."""
        if max_attempts < 1 or batch < 1:
            raise ValueError("max_attempts and batch must be at least 1")
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

    # -- fan-out ----------------------------------------------------------------------------

    def fan_out(self) -> int:
        """Create the missing delivery rows, oldest event first, `batch` per transaction.
        Returns how many rows this call inserted (a concurrent fan-out may insert others)."""
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
        """Claim, send and record up to `limit` (default `batch`) due deliveries.

        Rows are sent one by one, each under a lease renewed to a full send timeout just
        before its send; the rows waiting their turn get theirs renewed with it whenever
        half of it has gone, so a long batch keeps its rows while a killed worker holds
        them back one send timeout at most. A row that is no longer this worker's (its
        lease ran out and another worker claimed it) is left to that worker."""
        claims = self._claim(limit or self.batch)
        results: list[DeliveryResult] = []
        waiting_until = claims[0].lease if claims else self.clock.now()
        for index, claim in enumerate(claims):
            now = self.clock.now()
            if now + self.send_timeout / 2 >= waiting_until:
                renew: Sequence[_Claim] = claims[index:]
                waiting_until = now + self.send_timeout
            else:
                renew = [claim]
            if claim.delivery_id in self._renew(renew, now + self.send_timeout):
                results.append(self._attempt(claim))
        return results

    def _claim(self, limit: int) -> list[_Claim]:
        now = self.clock.now()
        d = WebhookDelivery
        earlier = aliased(WebhookDelivery)
        blocked = exists().where(
            col(earlier.partner_id) == col(d.partner_id),
            col(earlier.reservation_id) == col(d.reservation_id),
            col(earlier.status) == PENDING,
            col(earlier.event_seq) < col(d.event_seq),
        )
        reachable = exists().where(
            col(Partner.id) == col(d.partner_id),
            col(Partner.disabled_at).is_(None),
            col(Partner.webhook_url).is_not(None),
            col(Partner.webhook_url) != "",
        )
        stmt = (
            select(d)
            .where(
                col(d.status) == PENDING,
                or_(col(d.next_attempt_at).is_(None), col(d.next_attempt_at) <= now),
                ~blocked,
                reachable,
            )
            .order_by(col(d.next_attempt_at), col(d.event_seq))
            .limit(limit)
            .with_for_update(skip_locked=True, of=d)
        )
        with UnitOfWork(self.db) as uow:
            rows = list(uow.session.exec(stmt).all())
            if not rows:
                return []
            events = {
                e.event_id: e
                for e in uow.session.exec(
                    select(OutboxEvent).where(
                        col(OutboxEvent.event_id).in_({r.event_id for r in rows})
                    )
                ).all()
            }
            partners = {
                p.id: p
                for p in uow.session.exec(
                    select(Partner).where(col(Partner.id).in_({r.partner_id for r in rows}))
                ).all()
            }
            claims = []
            lease = now + self.send_timeout
            for row in rows:
                row.attempts += 1
                row.next_attempt_at = lease
                event, partner = events.get(row.event_id), partners.get(row.partner_id)
                claims.append(
                    _Claim(
                        delivery_id=row.id,
                        token=row.attempts,
                        lease=lease,
                        event_id=row.event_id,
                        partner_id=row.partner_id,
                        reservation_id=row.reservation_id,
                        url=partner.webhook_url if partner else None,
                        secret=partner.webhook_secret if partner else None,
                        payload=event_payload(event) if event else None,
                    )
                )
            uow.commit()
        return claims

    def _attempt(self, claim: _Claim) -> DeliveryResult:
        if claim.payload is None:
            return self._record(claim, None, "the event is no longer in the outbox", False)
        if not claim.url or not claim.secret:
            problem = f"partner {claim.partner_id} has no webhook URL or secret"
            return self._record(claim, None, problem, False)
        try:
            status = self.sender.send(
                claim.url,
                claim.secret,
                message_id=claim.event_id,
                timestamp=self.clock.now(),
                payload=claim.payload,
            )
        except WebhookSendFailed as exc:
            return self._record(claim, None, exc.message, exc.retryable)
        except Exception as exc:  # one broken send must not strand the rest of the batch
            log.warning("webhook %s: sender raised %s", claim.event_id, type(exc).__name__)
            return self._record(claim, None, f"sender error ({type(exc).__name__})", True)
        if 200 <= status < 300:
            return self._record(claim, status, None, False)
        return self._record(claim, status, f"HTTP {status}", True)

    def _record(
        self, claim: _Claim, http_status: int | None, error: str | None, retryable: bool
    ) -> DeliveryResult:
        now = self.clock.now()
        delivered = error is None
        with UnitOfWork(self.db) as uow:
            row = uow.session.exec(
                select(WebhookDelivery)
                .where(col(WebhookDelivery.id) == claim.delivery_id)
                .with_for_update()
            ).one()
            if delivered:
                # True whoever owns the row now; a worker that re-claimed it after our lease
                # ran out finds it delivered and records nothing.
                if row.status == PENDING:
                    row.status = DELIVERED
                    row.delivered_at = now
                    row.next_attempt_at = None
                    row.last_status = http_status
                    row.last_error = None
            elif row.status == PENDING and row.attempts == claim.token:
                row.last_status = http_status
                row.last_error = error
                if not retryable or row.attempts >= self.max_attempts:
                    row.status = DEAD
                    row.next_attempt_at = None
                else:
                    row.next_attempt_at = now + backoff_delay(
                        row.attempts, base=self.base_delay, cap=self.max_delay, rng=self.rng
                    )
            uow.commit()
            if row.status == DEAD:
                log.warning(
                    "webhook %s to partner %s is dead after %d attempts: %s",
                    row.event_id,
                    row.partner_id,
                    row.attempts,
                    row.last_error,
                )
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

    def _renew(self, claims: Sequence[_Claim], until: datetime) -> set[str]:
        """Extend the lease of the claimed rows still this worker's (pending, attempt count
        unchanged since the claim) to `until`, in one short transaction; their ids."""
        d = WebhookDelivery
        mine = or_(
            *(
                and_(col(d.id) == claim.delivery_id, col(d.attempts) == claim.token)
                for claim in claims
            )
        )
        stmt = (
            update(d)
            .where(col(d.status) == PENDING, mine)
            .values(next_attempt_at=until)
            .returning(col(d.id))
            .execution_options(synchronize_session=False)
        )
        with UnitOfWork(self.db) as uow:
            kept = {str(delivery_id) for delivery_id in uow.session.execute(stmt).scalars()}
            uow.commit()
        return kept

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
