"""The reservation state machine as data: states, allowed transitions, staged deadlines.

Everything here is a pure function of its arguments so the same rules drive the services,
the replay check of the audit, and the property tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from bookiji.domain.errors import InvalidTransition


class ReservationState(StrEnum):
    INTENT_CREATED = "INTENT_CREATED"
    HELD = "HELD"
    AWAITING_VENDOR_CONFIRMATION = "AWAITING_VENDOR_CONFIRMATION"
    CONFIRMED_BY_VENDOR = "CONFIRMED_BY_VENDOR"
    AWAITING_VENDOR_AUTH = "AWAITING_VENDOR_AUTH"
    VENDOR_AUTHORIZED = "VENDOR_AUTHORIZED"
    AWAITING_REQUESTER_AUTH = "AWAITING_REQUESTER_AUTH"
    AUTHORIZED_BOTH = "AUTHORIZED_BOTH"
    COMMIT_IN_PROGRESS = "COMMIT_IN_PROGRESS"
    COMMITTED = "COMMITTED"
    FAILED_VENDOR_TIMEOUT = "FAILED_VENDOR_TIMEOUT"
    FAILED_VENDOR_AUTH = "FAILED_VENDOR_AUTH"
    FAILED_REQUESTER_AUTH = "FAILED_REQUESTER_AUTH"
    FAILED_AVAILABILITY_CHANGED = "FAILED_AVAILABILITY_CHANGED"
    FAILED_COMMIT = "FAILED_COMMIT"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"


S = ReservationState

#: States that end a reservation without a booking; they free the vendor's block.
TERMINAL_FAILURES: frozenset[ReservationState] = frozenset(
    {
        S.FAILED_VENDOR_TIMEOUT,
        S.FAILED_VENDOR_AUTH,
        S.FAILED_REQUESTER_AUTH,
        S.FAILED_AVAILABILITY_CHANGED,
        S.FAILED_COMMIT,
        S.EXPIRED,
        S.CANCELLED,
    }
)

#: States that occupy the vendor's block: every non-terminal state plus COMMITTED. The
#: database constraint (Postgres exclusion, SQLite trigger) is generated from this set.
ACTIVE_STATES: frozenset[ReservationState] = frozenset(set(S) - TERMINAL_FAILURES)

#: States with no way out.
FINAL_STATES: frozenset[ReservationState] = TERMINAL_FAILURES | {S.COMMITTED}


TRANSITIONS: Mapping[ReservationState, frozenset[ReservationState]] = {
    S.INTENT_CREATED: frozenset({S.HELD, S.CANCELLED, S.EXPIRED}),
    S.HELD: frozenset({S.AWAITING_VENDOR_CONFIRMATION, S.CANCELLED, S.FAILED_VENDOR_TIMEOUT}),
    S.AWAITING_VENDOR_CONFIRMATION: frozenset(
        {S.CONFIRMED_BY_VENDOR, S.CANCELLED, S.FAILED_VENDOR_TIMEOUT}
    ),
    S.CONFIRMED_BY_VENDOR: frozenset({S.AWAITING_VENDOR_AUTH, S.CANCELLED, S.EXPIRED}),
    S.AWAITING_VENDOR_AUTH: frozenset(
        {S.VENDOR_AUTHORIZED, S.FAILED_VENDOR_AUTH, S.CANCELLED, S.EXPIRED}
    ),
    S.VENDOR_AUTHORIZED: frozenset({S.AWAITING_REQUESTER_AUTH, S.CANCELLED, S.EXPIRED}),
    S.AWAITING_REQUESTER_AUTH: frozenset(
        {S.AUTHORIZED_BOTH, S.FAILED_REQUESTER_AUTH, S.CANCELLED, S.EXPIRED}
    ),
    S.AUTHORIZED_BOTH: frozenset(
        {S.COMMIT_IN_PROGRESS, S.FAILED_AVAILABILITY_CHANGED, S.CANCELLED, S.EXPIRED}
    ),
    # A commit in flight is never cancelled or merely expired: it finishes or compensates.
    S.COMMIT_IN_PROGRESS: frozenset({S.COMMITTED, S.FAILED_COMMIT, S.FAILED_AVAILABILITY_CHANGED}),
    **{state: frozenset() for state in FINAL_STATES},
}


class Stage(StrEnum):
    """A stretch of the workflow that shares one deadline."""

    HOLD = "hold"
    VENDOR_AUTH = "vendor_auth"
    REQUESTER_AUTH = "requester_auth"
    COMMIT = "commit"


STAGE_OF: Mapping[ReservationState, Stage] = {
    S.INTENT_CREATED: Stage.HOLD,
    S.HELD: Stage.HOLD,
    S.AWAITING_VENDOR_CONFIRMATION: Stage.HOLD,
    S.CONFIRMED_BY_VENDOR: Stage.VENDOR_AUTH,
    S.AWAITING_VENDOR_AUTH: Stage.VENDOR_AUTH,
    S.VENDOR_AUTHORIZED: Stage.REQUESTER_AUTH,
    S.AWAITING_REQUESTER_AUTH: Stage.REQUESTER_AUTH,
    S.AUTHORIZED_BOTH: Stage.COMMIT,
    S.COMMIT_IN_PROGRESS: Stage.COMMIT,
}

#: Where a passed deadline leads. COMMIT_IN_PROGRESS is absent on purpose: reconciliation
#: reads the payment provider and finishes or compensates instead.
EXPIRY_TARGET: Mapping[ReservationState, ReservationState] = {
    S.INTENT_CREATED: S.EXPIRED,
    S.HELD: S.FAILED_VENDOR_TIMEOUT,
    S.AWAITING_VENDOR_CONFIRMATION: S.FAILED_VENDOR_TIMEOUT,
    S.CONFIRMED_BY_VENDOR: S.EXPIRED,
    S.AWAITING_VENDOR_AUTH: S.EXPIRED,
    S.VENDOR_AUTHORIZED: S.EXPIRED,
    S.AWAITING_REQUESTER_AUTH: S.EXPIRED,
    S.AUTHORIZED_BOTH: S.EXPIRED,
}


@dataclass(frozen=True)
class StageTTLs:
    """How long each stage may last. Defaults: 10 min hold + vendor confirmation, 30 min
    for each party's authorization, 15 min from both authorized to committed."""

    hold: timedelta = timedelta(minutes=10)
    authorization: timedelta = timedelta(minutes=30)
    commit: timedelta = timedelta(minutes=15)

    def for_stage(self, stage: Stage) -> timedelta:
        if stage is Stage.HOLD:
            return self.hold
        if stage is Stage.COMMIT:
            return self.commit
        return self.authorization


@dataclass(frozen=True)
class PlannedTransition:
    from_state: ReservationState | None
    to_state: ReservationState
    deadline: datetime | None


def is_active(state: ReservationState) -> bool:
    return state in ACTIVE_STATES


def allowed_targets(state: ReservationState) -> frozenset[ReservationState]:
    return TRANSITIONS[state]


def deadline_for(
    current: ReservationState | None,
    target: ReservationState,
    *,
    now: datetime,
    deadline: datetime | None,
    ttls: StageTTLs,
) -> datetime | None:
    """Entering a new stage starts its clock; moving within a stage keeps the deadline."""
    stage = STAGE_OF.get(target)
    if stage is None:
        return None
    if current is not None and STAGE_OF.get(current) is stage and deadline is not None:
        return deadline
    return now + ttls.for_stage(stage)


def plan_transition(
    current: ReservationState,
    target: ReservationState,
    *,
    now: datetime,
    deadline: datetime | None,
    ttls: StageTTLs,
) -> PlannedTransition | None:
    """Check a move and compute its deadline.

    Returns None when the reservation is already in `target`: repeating the transition that
    already happened is a no-op, which is what makes retries of every action safe.
    """
    if current is target:
        return None
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(
            f"cannot move a reservation from {current} to {target}",
            details={
                "from": str(current),
                "to": str(target),
                "allowed": sorted(str(s) for s in TRANSITIONS[current]),
            },
        )
    return PlannedTransition(
        from_state=current,
        to_state=target,
        deadline=deadline_for(current, target, now=now, deadline=deadline, ttls=ttls),
    )


def initial_transition(*, now: datetime, ttls: StageTTLs) -> PlannedTransition:
    """The first row of every log: nothing -> INTENT_CREATED."""
    return PlannedTransition(
        from_state=None,
        to_state=S.INTENT_CREATED,
        deadline=deadline_for(None, S.INTENT_CREATED, now=now, deadline=None, ttls=ttls),
    )


def expiry_target(
    state: ReservationState, deadline: datetime | None, now: datetime
) -> ReservationState | None:
    """The state a passed deadline moves `state` to, or None if nothing is due."""
    if deadline is None or now < deadline:
        return None
    return EXPIRY_TARGET.get(state)


def replay(steps: Iterable[tuple[ReservationState | None, ReservationState]]) -> ReservationState:
    """Fold a transition log into the state it leads to, refusing any broken link.

    The audit compares this with the stored state: a log that does not replay to the row
    means someone wrote around the state machine.
    """
    current: ReservationState | None = None
    for index, (from_state, to_state) in enumerate(steps):
        if from_state != current:
            raise InvalidTransition(
                f"log step {index} starts from {from_state}, but the state was {current}",
                details={"step": index},
            )
        if current is None:
            if to_state is not S.INTENT_CREATED:
                raise InvalidTransition(
                    f"log must start with INTENT_CREATED, not {to_state}", details={"step": 0}
                )
        elif to_state not in TRANSITIONS[current]:
            raise InvalidTransition(
                f"log step {index} moves {current} to {to_state}, which is not allowed",
                details={"step": index},
            )
        current = to_state
    if current is None:
        raise InvalidTransition("empty transition log")
    return current
