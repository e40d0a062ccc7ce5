"""A passed deadline applied on the spot: the move and the compensation the expiry job makes,
for a request that arrives after the deadline but before the job has run."""

from __future__ import annotations

from datetime import datetime

from bookiji.domain.compensation import Failure
from bookiji.domain.errors import DeadlinePassed
from bookiji.domain.states import ReservationState, StageTTLs
from bookiji.domain.timeutil import format_instant
from bookiji.services import transitions
from bookiji.services.compensation import plan_into
from bookiji.store.models import CompensationAction, Reservation
from bookiji.store.uow import UnitOfWork

S = ReservationState
ACTOR = "system:expiry"


def expiry_reason(state: str, deadline: datetime) -> str:
    return f"deadline {format_instant(deadline)} passed in {state}"


def expiry_failure(target: ReservationState) -> Failure:
    return Failure.VENDOR_TIMEOUT if target is S.FAILED_VENDOR_TIMEOUT else Failure.EXPIRED


def expire_now(
    uow: UnitOfWork,
    reservation: Reservation,
    target: ReservationState,
    now: datetime,
    ttls: StageTTLs,
) -> tuple[DeadlinePassed, list[CompensationAction]]:
    """Expire `reservation` in the caller's transaction; the refusal to give the request
    that found it late, and the compensation rows to run once committed."""
    state, deadline = reservation.state, reservation.state_deadline
    assert deadline is not None
    transitions.apply(
        uow, reservation, target, now=now, ttls=ttls,
        reason=expiry_reason(state, deadline), actor=ACTOR,
    )  # fmt: skip
    actions = plan_into(uow, reservation, expiry_failure(target), now)
    refusal = DeadlinePassed(
        f"the reservation's deadline {format_instant(deadline)} passed while it was {state}; "
        f"it is now {target}",
        details={"reservationId": reservation.id, "state": target.value,
                 "deadline": format_instant(deadline)},
    )  # fmt: skip
    return refusal, actions
