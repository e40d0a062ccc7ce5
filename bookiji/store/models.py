"""SQLModel tables. The migrations in `migrations/` must produce exactly these (tested).

Constraints the ORM cannot express (the Postgres exclusion constraint, SQLite overlap and
append-only triggers) live in the migrations and are tested by behaviour.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from bookiji.domain.states import ACTIVE_STATES, EXPIRY_TARGET, FINAL_STATES, ReservationState
from bookiji.store.crypto import SealedJSON, SealedText
from bookiji.store.types import BigIntId, JSONDocument, UTCDateTime

_STATE_LIST = ", ".join(f"'{s.value}'" for s in ReservationState)
#: The states a deadline moves on (written out, so the expiry query and its partial index
#: carry the very same predicate and both databases can match them).
EXPIRABLE_PREDICATE = "state IN ({})".format(
    ", ".join(f"'{s.value}'" for s in sorted(EXPIRY_TARGET, key=lambda s: s.value))
)
#: Holds in flight (active, not yet committed), which the hold caps count per partner and
#: requester from a partial index with this very predicate: it holds only the holds in flight,
#: and a hold that ends leaves it without an index write.
HOLDING_PREDICATE = "state IN ({})".format(
    ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATES - FINAL_STATES, key=lambda s: s.value))
)

#: Reservations that occupy their block (all but the failed and cancelled ones). A vendor's
#: active blocks never overlap, which lets the queries around a time read a partial index of
#: them with this very predicate (see migration 0011) in a few steps.
_INACTIVE = sorted(s.value for s in set(ReservationState) - ACTIVE_STATES)
ACTIVE_PREDICATE = "state NOT IN ({})".format(", ".join(f"'{s}'" for s in _INACTIVE))


def _ts(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_type=UTCDateTime, nullable=nullable, index=index)


def _json(default_factory: Any = dict) -> Any:
    return Field(default_factory=default_factory, sa_type=JSONDocument, nullable=False)


class Vendor(SQLModel, table=True):
    __tablename__: ClassVar[str] = "vendors"
    __table_args__ = (
        CheckConstraint("slot_minutes BETWEEN 5 AND 1440", name="ck_vendors_slot_minutes"),
        CheckConstraint("price >= 0 AND deposit >= 0", name="ck_vendors_amounts"),
    )

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    timezone: str = Field(max_length=64)
    slot_minutes: int
    slot_interval_minutes: int
    buffer_before_minutes: int = 0
    buffer_after_minutes: int = 0
    min_notice_minutes: int = 0
    max_advance_days: int = 60
    currency: str = Field(max_length=3)
    price: int = 0
    deposit: int = 0
    hours: dict[str, Any] = _json()
    overrides: list[Any] = _json(list)
    #: Stripe customer + saved payment method for the vendor's deposit, connected account
    #: for the requester's destination charge. Filled in by operators, not by the file.
    payment_customer_ref: str | None = Field(default=None, max_length=255)
    payment_method_ref: str | None = Field(default=None, max_length=255)
    payment_account_ref: str | None = Field(default=None, max_length=255)
    #: Bumped whenever anything that changes this vendor's availability commits (holds,
    #: bookings, synced busy times, rules), so cached answers know they are stale.
    schedule_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    #: Where the vendor hears about new holds; none set = the console (embedded default).
    notify_email: str | None = Field(default=None, max_length=320)
    #: Sealed: a webhook URL may carry a token or a user name and password.
    notify_webhook_url: str | None = Field(default=None, sa_type=SealedText)
    notify_sms: str | None = Field(default=None, max_length=32)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class CalendarConnection(SQLModel, table=True):
    """A vendor's calendar. `source` is sealed (an ICS feed's URL usually carries a secret
    token; Google and Outlook name a mailbox), so the database cannot compare sources: one
    source per vendor and provider is kept by `CalendarService.connect` and the vendors
    import, which compare the opened sources under a lock on the vendor's row."""

    __tablename__: ClassVar[str] = "calendar_connections"

    id: str = Field(primary_key=True, max_length=40)
    vendor_id: str = Field(
        sa_column=Column(String(64), ForeignKey("vendors.id"), nullable=False, index=True)
    )
    provider: str = Field(max_length=16)
    source: str = Field(sa_type=SealedText)
    name: str | None = Field(default=None, max_length=200)
    #: Encrypted credentials (refresh token) or a path to a credentials file; never printed.
    credentials_ref: str | None = Field(default=None, sa_type=SealedText)
    status: str = Field(default="never_synced", max_length=32)
    last_synced_at: datetime | None = _ts(nullable=True)
    last_attempt_at: datetime | None = _ts(nullable=True)
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = _ts()


class BusyInterval(SQLModel, table=True):
    """The calendar busy-time cache, refreshed by sync, read by availability."""

    __tablename__: ClassVar[str] = "busy_intervals"
    __table_args__ = (
        Index("ix_busy_intervals_vendor_start", "vendor_id", "start_at"),
        CheckConstraint("start_at < end_at", name="ck_busy_intervals_order"),
    )

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    connection_id: str = Field(
        sa_column=Column(
            String(40), ForeignKey("calendar_connections.id"), nullable=False, index=True
        )
    )
    vendor_id: str = Field(max_length=64)
    start_at: datetime = _ts()
    end_at: datetime = _ts()
    tentative: bool = Field(default=False, sa_type=Boolean)
    summary: str | None = Field(default=None, sa_type=Text)
    fetched_at: datetime = _ts()


class Partner(SQLModel, table=True):
    __tablename__: ClassVar[str] = "partners"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    #: Sealed like the secret: a URL may carry a token or a user name and password.
    webhook_url: str | None = Field(default=None, sa_type=SealedText)
    webhook_secret: str | None = Field(default=None, sa_type=SealedText)
    #: The secret before the last rotation: deliveries are also signed with it until
    #: `previous_webhook_secret_until`, then it is no longer used (the next rotation drops it).
    previous_webhook_secret: str | None = Field(default=None, sa_type=SealedText)
    previous_webhook_secret_until: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()
    disabled_at: datetime | None = _ts(nullable=True)


class PartnerApiKey(SQLModel, table=True):
    """Only a hash of the secret is stored; the prefix finds the row in O(1)."""

    __tablename__: ClassVar[str] = "partner_api_keys"

    id: str = Field(primary_key=True, max_length=40)
    partner_id: str = Field(
        sa_column=Column(String(64), ForeignKey("partners.id"), nullable=False, index=True)
    )
    prefix: str = Field(max_length=32, unique=True)
    key_hash: str = Field(max_length=128)
    scopes: list[Any] = _json(list)
    created_at: datetime = _ts()
    expires_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)
    last_used_at: datetime | None = _ts(nullable=True)
    rotated_from: str | None = Field(default=None, max_length=40)


_RESERVATION_VERSION = Column("version", Integer, nullable=False)


class Reservation(SQLModel, table=True):
    __tablename__: ClassVar[str] = "reservations"
    __table_args__ = (
        CheckConstraint(f"state IN ({_STATE_LIST})", name="ck_reservations_state"),
        CheckConstraint("slot_start < slot_end", name="ck_reservations_slot_order"),
        CheckConstraint(
            "block_start <= slot_start AND block_end >= slot_end", name="ck_reservations_block"
        ),
        CheckConstraint("price_amount >= 0 AND deposit_amount >= 0", name="ck_reservations_money"),
        Index("ix_reservations_vendor_block", "vendor_id", "block_start", "block_end"),
        Index("ix_reservations_state_deadline", "state", "state_deadline"),
        Index("ix_reservations_partner_created", "partner_id", "created_at"),
        Index("ix_reservations_created", "created_at"),
        Index("ix_reservations_state_created", "state", "created_at"),
        Index(
            "ix_reservations_holding",
            "partner_id",
            "requester_id",
            "state",  # covering, so SQLite's planner picks it without statistics
            postgresql_where=text(HOLDING_PREDICATE),
            sqlite_where=text(HOLDING_PREDICATE),
        ),
        Index(
            "ix_reservations_active_block",
            "vendor_id",
            "block_start",
            "block_end",
            "id",  # covering for the SQLite overlap trigger
            postgresql_where=text(ACTIVE_PREDICATE),
            sqlite_where=text(ACTIVE_PREDICATE),
        ),
        Index(
            "ix_reservations_expiry_due",
            "state_deadline",
            postgresql_where=text(EXPIRABLE_PREDICATE),
            sqlite_where=text(EXPIRABLE_PREDICATE),
        ),
    )
    # Optimistic concurrency: every UPDATE carries `WHERE version = :seen` and bumps it, so a
    # writer working from a stale read fails instead of overwriting a newer state.
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": _RESERVATION_VERSION}

    id: str = Field(primary_key=True, max_length=40)
    vendor_id: str = Field(sa_column=Column(String(64), ForeignKey("vendors.id"), nullable=False))
    requester_id: str = Field(max_length=200, index=True)
    partner_id: str | None = Field(
        default=None, sa_column=Column(String(64), ForeignKey("partners.id"), nullable=True)
    )
    slot_start: datetime = _ts()
    slot_end: datetime = _ts()
    block_start: datetime = _ts()
    block_end: datetime = _ts()
    state: str = Field(max_length=40)
    state_deadline: datetime | None = _ts(nullable=True)
    version: int | None = Field(default=None, sa_column=_RESERVATION_VERSION)
    currency: str = Field(max_length=3)
    price_amount: int = 0
    deposit_amount: int = 0
    vendor_payment_state: str = Field(default="not_started", max_length=32)
    vendor_payment_ref: str | None = Field(default=None, max_length=255)
    requester_payment_state: str = Field(default="not_started", max_length=32)
    requester_payment_ref: str | None = Field(default=None, max_length=255)
    meta: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column("metadata", SealedJSON, nullable=False)
    )
    #: How to reach the requester ({name, email, phone}), sealed; erased by `requesters forget`.
    requester_contact: dict[str, Any] | None = Field(
        default=None, sa_column=Column("requester_contact", SealedJSON, nullable=True)
    )
    idempotency_key: str | None = Field(default=None, max_length=255)
    #: The free text a partner or an operator gave with a cancel, sealed; erased by
    #: `requesters forget`. The transition log only ever says Bookiji's own words.
    cancel_note: str | None = Field(default=None, sa_type=SealedText, nullable=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class ReservationTransition(SQLModel, table=True):
    """Append-only: triggers refuse UPDATE and DELETE on both databases."""

    __tablename__: ClassVar[str] = "reservation_transitions"
    __table_args__ = (
        Index("ix_reservation_transitions_reservation", "reservation_id", "id"),
        Index("ix_reservation_transitions_to_state_at", "to_state", "at"),
    )

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    reservation_id: str = Field(
        sa_column=Column(String(40), ForeignKey("reservations.id"), nullable=False)
    )
    from_state: str | None = Field(default=None, max_length=40)
    to_state: str = Field(max_length=40)
    reason: str = Field(sa_type=Text)
    actor: str = Field(max_length=200)
    at: datetime = _ts()
    details: dict[str, Any] = _json()


class Booking(SQLModel, table=True):
    __tablename__: ClassVar[str] = "bookings"

    id: str = Field(primary_key=True, max_length=40)
    reservation_id: str = Field(
        sa_column=Column(String(40), ForeignKey("reservations.id"), nullable=False, unique=True)
    )
    vendor_id: str = Field(max_length=64, index=True)
    requester_id: str = Field(max_length=200)
    slot_start: datetime = _ts()
    slot_end: datetime = _ts()
    currency: str = Field(max_length=3)
    price_amount: int
    deposit_amount: int
    created_at: datetime = _ts()


class IdempotencyKey(SQLModel, table=True):
    """(scope, key) -> the request it first answered. Scope is the partner id or 'operator'."""

    __tablename__: ClassVar[str] = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_reservation", "reservation_id"),)

    scope: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    reservation_id: str | None = Field(
        default=None, sa_column=Column(String(40), ForeignKey("reservations.id"), nullable=True)
    )
    response_status: int | None = None
    #: The stored answer carries the requester's data: sealed like the reservation's.
    response_body: dict[str, Any] | None = Field(default=None, sa_type=SealedJSON)
    created_at: datetime = _ts()
    expires_at: datetime = _ts(index=True)


class OutboxEvent(SQLModel, table=True):
    """Written in the same transaction as the change it describes; delivered later."""

    __tablename__: ClassVar[str] = "outbox_events"
    __table_args__ = (
        Index("ix_outbox_events_partner_id", "partner_id", "id"),
        Index("ix_outbox_events_reservation", "reservation_id", "id"),
    )

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    event_id: str = Field(max_length=40, unique=True)
    type: str = Field(max_length=80)
    reservation_id: str | None = Field(default=None, max_length=40)
    partner_id: str | None = Field(default=None, max_length=64)
    payload: dict[str, Any] = _json()
    created_at: datetime = _ts()


class CompensationAction(SQLModel, table=True):
    __tablename__: ClassVar[str] = "compensation_actions"
    __table_args__ = (Index("ix_compensation_actions_status_next", "status", "next_attempt_at"),)

    id: str = Field(primary_key=True, max_length=40)
    reservation_id: str = Field(
        sa_column=Column(String(40), ForeignKey("reservations.id"), nullable=False, index=True)
    )
    kind: str = Field(max_length=40)
    party: str = Field(max_length=16)
    amount: int = 0
    currency: str = Field(max_length=3)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_type=Text)
    next_attempt_at: datetime | None = _ts(nullable=True)
    idempotency_key: str = Field(max_length=255, unique=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    completed_at: datetime | None = _ts(nullable=True)


class JobLease(SQLModel, table=True):
    """One row per named job; whoever holds an unexpired lease runs it."""

    __tablename__: ClassVar[str] = "job_leases"

    name: str = Field(primary_key=True, max_length=80)
    owner: str = Field(max_length=200)
    acquired_at: datetime = _ts()
    expires_at: datetime = _ts()


class PaymentOperation(SQLModel, table=True):
    """One call to the payment provider, recorded before it is made and after it returns, so
    a process killed in between is resumed with the same idempotency key."""

    __tablename__: ClassVar[str] = "payment_operations"

    id: str = Field(primary_key=True, max_length=40)
    reservation_id: str = Field(
        sa_column=Column(String(40), ForeignKey("reservations.id"), nullable=False, index=True)
    )
    party: str = Field(max_length=16)
    kind: str = Field(max_length=32)
    idempotency_key: str = Field(max_length=255, unique=True)
    status: str = Field(default="started", max_length=16)
    intent_id: str | None = Field(default=None, max_length=255)
    amount: int = 0
    error_code: str | None = Field(default=None, max_length=80)
    error_message: str | None = Field(default=None, sa_type=Text)
    attempts: int = 0
    started_at: datetime = _ts()
    finished_at: datetime | None = _ts(nullable=True)


class LocalPaymentIntent(SQLModel, table=True):
    """The embedded payment ledger of LocalGateway: Stripe's semantics, no network."""

    __tablename__: ClassVar[str] = "local_payment_intents"

    id: str = Field(primary_key=True, max_length=40)
    reservation_id: str | None = Field(default=None, max_length=40, index=True)
    party: str | None = Field(default=None, max_length=16)
    amount: int
    currency: str = Field(max_length=3)
    status: str = Field(max_length=32)
    amount_capturable: int = 0
    amount_received: int = 0
    amount_refunded: int = 0
    captures: int = 0
    payment_method: str = Field(max_length=255)
    customer: str | None = Field(default=None, max_length=255)
    destination: str | None = Field(default=None, max_length=255)
    application_fee: int | None = None
    client_secret: str = Field(max_length=255)
    error_code: str | None = Field(default=None, max_length=80)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class LocalIdempotencyKey(SQLModel, table=True):
    __tablename__: ClassVar[str] = "local_payment_idempotency"

    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    response: dict[str, Any] = _json()
    created_at: datetime = _ts()


class ConfirmationToken(SQLModel, table=True):
    """A vendor's single-use answer token: only its id is stored; the signature proves the
    rest. `used_at` set = spent."""

    __tablename__: ClassVar[str] = "confirmation_tokens"

    id: str = Field(primary_key=True, max_length=40)
    reservation_id: str = Field(
        sa_column=Column(String(40), ForeignKey("reservations.id"), nullable=False, index=True)
    )
    expires_at: datetime = _ts()
    used_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()


class VendorNotificationRow(SQLModel, table=True):
    """One delivery of a confirmation request over one channel, retried until sent."""

    __tablename__: ClassVar[str] = "vendor_notifications"
    __table_args__ = (Index("ix_vendor_notifications_status_next", "status", "next_attempt_at"),)

    id: str = Field(primary_key=True, max_length=40)
    reservation_id: str = Field(
        sa_column=Column(String(40), ForeignKey("reservations.id"), nullable=False, index=True)
    )
    vendor_id: str = Field(max_length=64)
    channel: str = Field(max_length=16)
    #: The address for email and SMS, the vendor's id for the console; empty for a webhook,
    #: whose URL is a secret read (sealed) from the vendor's row when it is sent, not copied.
    destination: str = Field(sa_type=Text)
    token_id: str = Field(max_length=40)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: datetime | None = _ts(nullable=True)
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = _ts()
    sent_at: datetime | None = _ts(nullable=True)


class AppSecret(SQLModel, table=True):
    """Secrets this installation generated for itself when none was configured (the token
    signing key of the embedded default). Configured secrets never land here."""

    __tablename__: ClassVar[str] = "app_secrets"

    name: str = Field(primary_key=True, max_length=80)
    value: str = Field(max_length=255)
    created_at: datetime = _ts()


class WebhookDelivery(SQLModel, table=True):
    """One outbox event on its way to one partner's endpoint; retried until delivered or
    dead-lettered. Per reservation, a delivery waits until the earlier ones are done."""

    __tablename__: ClassVar[str] = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "partner_id", name="uq_webhook_deliveries_event_partner"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_reservation", "reservation_id", "event_seq"),
    )

    id: str = Field(primary_key=True, max_length=40)
    event_id: str = Field(max_length=40)
    event_seq: int = Field(sa_type=BigIntId)
    partner_id: str = Field(
        sa_column=Column(String(64), ForeignKey("partners.id"), nullable=False, index=True)
    )
    reservation_id: str | None = Field(default=None, max_length=40)
    status: str = Field(default="pending", max_length=16)  # pending | delivered | dead
    attempts: int = 0
    next_attempt_at: datetime | None = _ts(nullable=True)
    last_status: int | None = None
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = _ts()
    delivered_at: datetime | None = _ts(nullable=True)


class JobRun(SQLModel, table=True):
    """One run of one scheduled job by one worker: who did what, for operators and for the
    proof that no job ran twice."""

    __tablename__: ClassVar[str] = "job_runs"
    __table_args__ = (Index("ix_job_runs_name_started", "name", "started_at"),)

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    name: str = Field(max_length=80)
    owner: str = Field(max_length=200)
    started_at: datetime = _ts()
    finished_at: datetime | None = _ts(nullable=True)
    processed: int = 0
    errors: int = 0


class PiiKeyCheck(SQLModel, table=True):
    """One Fernet token per PII key that sealed (or may have sealed) stored data: a fixed
    text sealed with that key. Whoever starts with keys that do not open every record, or
    whose newest key has none, would misread or mis-seal data, and is refused. `pii
    begin-rotation` adds a new key's record; `pii rotate` keeps only the newest key's."""

    __tablename__: ClassVar[str] = "pii_key_checks"

    id: str = Field(primary_key=True, max_length=32)
    token: str = Field(sa_type=Text)
    created_at: datetime = _ts()
