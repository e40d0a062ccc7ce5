"""Request bodies of the partner API: camelCase, unknown fields refused, times as strings
parsed by us (so a naive time is a precise 400, not a silent local time)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from bookiji.domain.states import ReservationState


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


class RequesterContact(_Body):
    """Personal data: stored encrypted, erased by `bookiji requesters forget`."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    email: str | None = Field(default=None, min_length=3, max_length=320)
    phone: str | None = Field(default=None, min_length=4, max_length=32)


class CreateReservation(_Body):
    vendorId: str = Field(min_length=1, max_length=64)
    slotStartTime: str = Field(
        description="RFC 3339 with offset", json_schema_extra={"format": "date-time"}
    )
    slotEndTime: str = Field(
        description="RFC 3339 with offset", json_schema_extra={"format": "date-time"}
    )
    requesterId: str = Field(min_length=1, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)
    requester: RequesterContact | None = None
    idempotencyKey: str | None = Field(default=None, min_length=1, max_length=255)


class VendorConfirmation(_Body):
    token: str = Field(min_length=10, max_length=512)
    decision: Literal["confirm", "decline"]


class Authorization(_Body):
    party: Literal["vendor", "requester"]
    paymentMethod: str | None = Field(
        default=None,
        max_length=255,
        description="the requester's payment method; refused (400) with `party: vendor`, whose "
        "deposit is authorized on the vendor's own saved method",
    )


class Cancellation(_Body):
    reason: str | None = Field(
        default=None,
        max_length=500,
        description="your note: shown as `cancelNote`, stored encrypted, erased with the "
        "requester's data; the state history says `cancelled by partner`",
    )


class ErrorBody(BaseModel):
    code: str
    message: str
    retryable: bool
    details: dict[str, Any]


class ErrorEnvelope(BaseModel):
    error: ErrorBody


# -- responses: what the routes serve, for the OpenAPI document ------------------------------
# The routes build these documents as dicts (one shape for the API and `--json`); the models
# below describe them for partners' client generators and are checked against what is served
# by schemathesis (tests/api/test_schemathesis.py). Unknown fields are refused so a document
# that grows a field without its schema fails that test.

Instant = Annotated[datetime, Field(description="RFC 3339, UTC")]


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Slot(_Document):
    startTime: Instant
    endTime: Instant
    # Absent, never null, when includeConfidence=false.
    confidence: Annotated[float, Field(ge=0, le=1)] | SkipJsonSchema[None] = None
    reasons: list[str] | SkipJsonSchema[None] = None


class CalendarSource(_Document):
    calendar: str
    provider: str
    fetchedAt: Instant | None
    status: Literal["ok", "degraded", "never_synced"]


class AvailabilityDocument(_Document):
    vendorId: str
    timezone: str
    startTime: Instant
    endTime: Instant
    slotDuration: int = Field(description="minutes")
    slots: list[Slot]
    sources: list[CalendarSource]
    cached: bool
    computedAt: Instant


class PartyPayment(_Document):
    amount: int = Field(description="minor units of `currency`")
    state: str
    paymentIntentId: str | None


class Payment(_Document):
    currency: str
    vendorDeposit: PartyPayment
    requesterPayment: PartyPayment


class CompensationStep(_Document):
    id: str
    party: Literal["vendor", "requester"]
    action: str
    amount: int
    status: str
    attempts: int
    lastError: str | None
    nextAttemptAt: Instant | None
    completedAt: Instant | None


class VendorNotification(_Document):
    channel: str
    status: str
    attempts: int
    lastError: str | None
    nextAttemptAt: Instant | None
    sentAt: Instant | None


class Transition(_Document):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: ReservationState | None = Field(alias="from")
    to: ReservationState
    at: Instant
    reason: str
    actor: str
    details: dict[str, Any]


class ReservationDocument(_Document):
    reservationId: str
    vendorId: str
    requesterId: str
    requester: RequesterContact | None = Field(description="personal data; null once erased")
    partnerId: str | None
    state: ReservationState
    stateDeadline: Instant | None
    expiresAt: Instant | None = Field(description="the same instant as stateDeadline")
    slotStartTime: Instant
    slotEndTime: Instant
    blockStartTime: Instant = Field(description="the slot widened by the vendor's buffers")
    blockEndTime: Instant
    payment: Payment
    compensationActions: list[CompensationStep]
    vendorNotifications: list[VendorNotification]
    metadata: dict[str, Any]
    cancelNote: str | None = Field(
        default=None, description="the text given with the cancel; personal data, null once erased"
    )
    idempotencyKey: str | None
    version: int | None
    createdAt: Instant
    updatedAt: Instant
    stateHistory: list[Transition]


class ConfirmationAnswer(_Document):
    reservationId: str
    state: ReservationState


class AuthorizationAnswer(_Document):
    reservationId: str
    party: Literal["vendor", "requester"]
    state: ReservationState
    paymentState: str
    paymentIntentId: str | None
    clientSecret: str | None = Field(description="set when the card needs authentication")


class Event(_Document):
    id: str = Field(description="also the webhook-id of its delivery")
    cursor: int
    type: str
    createdAt: Instant
    data: dict[str, Any] = Field(
        description="reservationId, vendorId, from, to, reason, at, stateDeadline; "
        "a reservation.cancelled event also cancelNote (null when none or erased)"
    )


class EventPage(_Document):
    events: list[Event]
    nextCursor: int = Field(description="pass as `after` for the next page")


class Health(_Document):
    status: Literal["ok", "ready"]


class StripeReceipt(_Document):
    received: bool
    type: str
