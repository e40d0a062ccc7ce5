"""Request bodies of the partner API: camelCase, unknown fields refused, times as strings
parsed by us (so a naive time is a precise 400, not a silent local time)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


class RequesterContact(_Body):
    """Personal data: stored encrypted, erased by `bookiji requesters forget`."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    email: str | None = Field(default=None, min_length=3, max_length=320)
    phone: str | None = Field(default=None, min_length=4, max_length=32)


class CreateReservation(_Body):
    vendorId: str = Field(min_length=1, max_length=64)
    slotStartTime: str = Field(description="RFC 3339 with offset")
    slotEndTime: str = Field(description="RFC 3339 with offset")
    requesterId: str = Field(min_length=1, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)
    requester: RequesterContact | None = None
    idempotencyKey: str | None = Field(default=None, min_length=1, max_length=255)


class VendorConfirmation(_Body):
    token: str = Field(min_length=10, max_length=512)
    decision: Literal["confirm", "decline"]


class Authorization(_Body):
    party: Literal["vendor", "requester"]
    paymentMethod: str | None = Field(default=None, max_length=255)


class Cancellation(_Body):
    reason: str | None = Field(default=None, max_length=500)


class ErrorBody(BaseModel):
    code: str
    message: str
    retryable: bool
    details: dict[str, Any]


class ErrorEnvelope(BaseModel):
    error: ErrorBody
