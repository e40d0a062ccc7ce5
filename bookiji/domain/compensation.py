"""The failure & compensation matrix of the seed, as data, and the plan it yields.

Each row names a failure, the state it ends in and what must happen to each party's money.
`plan` turns a row into concrete actions for the money that actually exists: an
authorization is cancelled (released), a capture is refunded. Every action is idempotent
(its provider call carries a deterministic key), so running a plan twice moves no money
twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bookiji.domain.states import ReservationState

S = ReservationState


class Party(StrEnum):
    VENDOR = "vendor"
    REQUESTER = "requester"


class Money(StrEnum):
    """A party's money, as far as we know it."""

    NOT_STARTED = "not_started"
    PENDING = "pending"  # an authorization awaits the card holder (3-D Secure)
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    RELEASED = "released"  # authorization cancelled
    REFUNDED = "refunded"
    FAILED = "failed"  # declined: nothing held


class Action(StrEnum):
    CANCEL_AUTHORIZATION = "cancel_authorization"
    REFUND_CAPTURE = "refund_capture"


class Failure(StrEnum):
    RESERVATION_CREATION_FAILED = "reservation_creation_failed"
    VENDOR_NOTIFICATION_FAILED = "vendor_notification_failed"
    VENDOR_TIMEOUT = "vendor_timeout"
    VENDOR_AUTH_FAILED = "vendor_auth_failed"
    REQUESTER_AUTH_FAILED = "requester_auth_failed"
    AVAILABILITY_CHANGED = "availability_changed"
    VENDOR_CAPTURE_FAILED = "vendor_capture_failed"
    REQUESTER_CAPTURE_FAILED = "requester_capture_failed"
    BOTH_CAPTURES_FAILED = "both_captures_failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    OPERATOR_FORCED = "operator_forced"


@dataclass(frozen=True)
class Row:
    """One row of the matrix: the seed's words, the end state, whose money to unwind."""

    seed: str
    state: ReservationState | None  # None: the reservation does not change state
    unwind: frozenset[Party]


BOTH = frozenset({Party.VENDOR, Party.REQUESTER})
NOBODY: frozenset[Party] = frozenset()

MATRIX: dict[Failure, Row] = {
    Failure.RESERVATION_CREATION_FAILED: Row("no compensation needed", None, NOBODY),
    Failure.VENDOR_NOTIFICATION_FAILED: Row("retry notification", None, NOBODY),
    Failure.VENDOR_TIMEOUT: Row("release hold", S.FAILED_VENDOR_TIMEOUT, NOBODY),
    Failure.VENDOR_AUTH_FAILED: Row("release hold", S.FAILED_VENDOR_AUTH, BOTH),
    Failure.REQUESTER_AUTH_FAILED: Row("release vendor auth", S.FAILED_REQUESTER_AUTH, BOTH),
    Failure.AVAILABILITY_CHANGED: Row("release both auths", S.FAILED_AVAILABILITY_CHANGED, BOTH),
    Failure.VENDOR_CAPTURE_FAILED: Row(
        "refund requester, release vendor auth", S.FAILED_COMMIT, BOTH
    ),
    Failure.REQUESTER_CAPTURE_FAILED: Row(
        "refund vendor, release requester auth", S.FAILED_COMMIT, BOTH
    ),
    Failure.BOTH_CAPTURES_FAILED: Row("release both auths", S.FAILED_COMMIT, BOTH),
    Failure.EXPIRED: Row("release whatever is authorized", S.EXPIRED, BOTH),
    Failure.CANCELLED: Row("release whatever is authorized", S.CANCELLED, BOTH),
    Failure.OPERATOR_FORCED: Row("release or refund everything", None, BOTH),
}

#: Money that still binds someone and must be unwound when a reservation fails.
LIVE = frozenset({Money.PENDING, Money.AUTHORIZED, Money.CAPTURED})


@dataclass(frozen=True)
class Step:
    party: Party
    action: Action


def action_for(money: Money) -> Action | None:
    if money is Money.CAPTURED:
        return Action.REFUND_CAPTURE
    if money in (Money.AUTHORIZED, Money.PENDING):
        return Action.CANCEL_AUTHORIZATION
    return None


def plan(failure: Failure, vendor: Money, requester: Money) -> list[Step]:
    """Concrete steps for `failure` given each party's money; vendor first."""
    row = MATRIX[failure]
    steps = []
    for party, money in ((Party.VENDOR, vendor), (Party.REQUESTER, requester)):
        action = action_for(money)
        if party in row.unwind and action is not None:
            steps.append(Step(party, action))
    return steps


def money_after(action: Action) -> Money:
    return Money.REFUNDED if action is Action.REFUND_CAPTURE else Money.RELEASED
