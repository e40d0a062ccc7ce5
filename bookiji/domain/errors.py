"""Error taxonomy shared by every edge.

Each error carries the machine-readable code partners see, the HTTP status the API maps it
to, and whether retrying the same request can succeed. The CLI maps the same errors to exit
code 1, so an operator and a partner read the same words for the same refusal.
"""

from __future__ import annotations

from typing import Any


class BookijiError(Exception):
    """Base of every refusal we expect and explain."""

    code: str = "internal_error"
    http_status: int = 500
    retryable: bool = False

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_envelope(self) -> dict[str, Any]:
        """The API error envelope: {"error": {code, message, retryable, details}}."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "retryable": self.retryable,
                "details": self.details,
            }
        }


class ValidationFailed(BookijiError):
    code = "validation_error"
    http_status = 400


class NotFound(BookijiError):
    code = "not_found"
    http_status = 404


class SlotUnavailable(BookijiError):
    code = "slot_unavailable"
    http_status = 409


class InvalidTransition(BookijiError):
    code = "invalid_transition"
    http_status = 409


class DeadlinePassed(InvalidTransition):
    """The stage's deadline passed before this request: the reservation has expired, whether
    or not the expiry job had got to it yet."""

    code = "deadline_passed"


class Conflict(BookijiError):
    """The request is well formed but what is stored refuses it (a partner id already taken,
    an API key already rotated or revoked): not bad input, and asking again will not help
    until that state changes."""

    code = "conflict"
    http_status = 409


class ConcurrentModification(BookijiError):
    """Someone else changed the row between our read and our write; reading again helps."""

    code = "concurrent_modification"
    http_status = 409
    retryable = True


class IdempotencyKeyReused(BookijiError):
    code = "idempotency_key_reused"
    http_status = 422


class IdempotencyInProgress(BookijiError):
    code = "idempotency_in_progress"
    http_status = 409
    retryable = True


class Unavailable(BookijiError):
    """A dependency (database, provider) is down; the same request may work later."""

    code = "service_unavailable"
    http_status = 503
    retryable = True


class PaymentDeclined(BookijiError):
    """The card or bank said no. Never retried: the same card will say no again."""

    code = "payment_declined"
    http_status = 422


class PaymentProviderError(BookijiError):
    """The payment provider failed or could not be reached; `retryable` says whether the
    same idempotent request may be sent again."""

    code = "payment_provider_error"
    http_status = 503

    def __init__(
        self, message: str, *, retryable: bool, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details=details)
        self.retryable = retryable


class Unauthorized(BookijiError):
    """No API key, or one that is unknown, expired or revoked."""

    code = "unauthorized"
    http_status = 401


class Forbidden(BookijiError):
    """A valid key without the scope this action needs."""

    code = "forbidden"
    http_status = 403


class RateLimited(BookijiError):
    code = "rate_limited"
    http_status = 429
    retryable = True


class HoldLimitReached(BookijiError):
    code = "hold_limit_reached"
    http_status = 409


class AuthorizationPending(BookijiError):
    """An authorization already waits for the card holder (3-D Secure): it is finished with
    its client secret, not replaced by another payment method."""

    code = "authorization_pending"
    http_status = 409


class EncryptionKeyProblem(BookijiError):
    """The keys for personal data are missing or do not open what is stored: a setup
    problem the operator fixes (BOOKIJI_PII_KEYS / pii_keys_file), not the caller."""

    code = "encryption_key_problem"
    http_status = 503
