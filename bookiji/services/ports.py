"""The outside world as seen by the services: small protocols, one adapter per provider."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from bookiji.domain.busy import BusyPeriod
from bookiji.domain.errors import BookijiError


class CalendarUnavailable(BookijiError):
    """A calendar could not be read (network, auth, quota, a malformed answer).

    Sync keeps the last good data and marks the connection degraded; `retryable` says
    whether trying again later may help (429, 5xx, timeouts) or an operator must act
    (401/403, a missing file, a calendar that does not exist).
    """

    code = "calendar_unavailable"
    http_status = 503

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message, details={"status": status} if status else {})
        self.retryable = retryable
        self.status = status


class CalendarSource(Protocol):
    """Busy periods of one connected calendar."""

    def busy(self, start: datetime, end: datetime) -> list[BusyPeriod]:
        """Every busy period overlapping [start, end), clipped to it, sorted by start.

        Cancelled and transparent (free) events are not busy. Raises CalendarUnavailable.
        """
        ...


@runtime_checkable
class RenewsCredentials(Protocol):
    """A source whose provider may hand back new credentials while it reads (a rotated
    OAuth refresh token): the sync stores them, or the connection would fall off once the
    stored ones expire."""

    def renewed_credentials(self) -> str | None:
        """The connection's new `credentials_ref` after a read, or None when unchanged."""
        ...


# -- vendor notifications ------------------------------------------------------------------


@dataclass(frozen=True)
class VendorNotification:
    """What a vendor is told about a new hold, and how to answer it.

    `token` is a single-use, expiring, signed confirmation token; it is a secret for the
    vendor only (never logged). `answer_url` is where a vendor may post the decision, when
    the partner API is reachable; None in the embedded default.
    """

    reservation_id: str
    vendor_id: str
    vendor_name: str
    slot_start: datetime
    slot_end: datetime
    timezone: str
    requester_id: str
    token: str
    expires_at: datetime
    answer_url: str | None = None


class NotificationFailed(BookijiError):
    code = "notification_failed"
    http_status = 503

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Notifier(Protocol):
    """One delivery channel (webhook, email, sms, console)."""

    channel: str

    def send(self, destination: str, notification: VendorNotification) -> None:
        """Deliver or raise NotificationFailed; never log the token."""
        ...


# -- payments --------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntentView:
    """A payment provider's PaymentIntent, reduced to what the workflow decides on.

    `status` uses Stripe's vocabulary: requires_payment_method (declined), requires_action
    (the card holder must authenticate), requires_capture (authorized), succeeded
    (captured), canceled.
    """

    id: str
    status: str
    amount: int
    currency: str
    amount_capturable: int = 0
    amount_received: int = 0
    amount_refunded: int = 0
    client_secret: str | None = None
    reservation_id: str | None = None
    party: str | None = None
    error_code: str | None = None


@dataclass(frozen=True)
class AuthorizationRequest:
    reservation_id: str
    party: str
    amount: int
    currency: str
    payment_method: str
    customer: str | None = None
    off_session: bool = False
    destination: str | None = None
    application_fee: int | None = None


class PaymentGateway(Protocol):
    """Manual-capture card payments. Every mutating call takes the idempotency key the caller
    persisted before the first attempt; sending it again never moves money twice.

    Raises PaymentDeclined for a decline (details carry `intentId` and `declineCode`) and
    PaymentProviderError otherwise (`retryable` says whether to try again).
    """

    name: str

    def authorize(self, request: AuthorizationRequest, *, idempotency_key: str) -> IntentView: ...

    def capture(
        self, intent_id: str, *, idempotency_key: str, amount: int | None = None
    ) -> IntentView: ...

    def cancel(self, intent_id: str, *, idempotency_key: str) -> IntentView: ...

    def refund(
        self, intent_id: str, *, idempotency_key: str, amount: int | None = None
    ) -> IntentView: ...

    def retrieve(self, intent_id: str) -> IntentView: ...

    def find_by_reservation(self, reservation_id: str) -> list[IntentView]: ...


# -- partner webhooks --------------------------------------------------------------------------


class WebhookSendFailed(BookijiError):
    code = "webhook_send_failed"
    http_status = 502

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class WebhookSender(Protocol):
    """POSTs one event to a partner's endpoint, signed per the Standard Webhooks spec."""

    def send(
        self,
        url: str,
        secret: str,
        *,
        message_id: str,
        timestamp: datetime,
        payload: dict[str, object],
        previous_secret: str | None = None,
    ) -> int:
        """The HTTP status the endpoint answered; WebhookSendFailed when there was none
        (connection refused, timeout). With a `previous_secret` (a rotation's overlap) the
        request carries two signatures, `secret`'s first: a receiver that holds either
        verifies it."""
        ...
