"""The failure & compensation matrix: row by row, and the guarantee it exists for."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bookiji.domain.compensation import (
    LIVE,
    MATRIX,
    Action,
    Failure,
    Money,
    Party,
    Step,
    money_after,
    plan,
)
from bookiji.domain.states import FINAL_STATES, TERMINAL_FAILURES

A, C = Money.AUTHORIZED, Money.CAPTURED
V, R = Party.VENDOR, Party.REQUESTER


@pytest.mark.parametrize(
    ("failure", "vendor", "requester", "expected"),
    [
        (Failure.RESERVATION_CREATION_FAILED, Money.NOT_STARTED, Money.NOT_STARTED, []),
        (Failure.VENDOR_NOTIFICATION_FAILED, Money.NOT_STARTED, Money.NOT_STARTED, []),
        (Failure.VENDOR_TIMEOUT, Money.NOT_STARTED, Money.NOT_STARTED, []),
        (Failure.VENDOR_AUTH_FAILED, Money.FAILED, Money.NOT_STARTED, []),
        (Failure.REQUESTER_AUTH_FAILED, A, Money.FAILED, [Step(V, Action.CANCEL_AUTHORIZATION)]),
        (
            Failure.AVAILABILITY_CHANGED,
            A,
            A,
            [Step(V, Action.CANCEL_AUTHORIZATION), Step(R, Action.CANCEL_AUTHORIZATION)],
        ),
        # Vendor capture fails: the requester is refunded if captured, else released; the
        # vendor authorization is released.
        (
            Failure.VENDOR_CAPTURE_FAILED,
            A,
            A,
            [Step(V, Action.CANCEL_AUTHORIZATION), Step(R, Action.CANCEL_AUTHORIZATION)],
        ),
        (
            Failure.VENDOR_CAPTURE_FAILED,
            A,
            C,
            [Step(V, Action.CANCEL_AUTHORIZATION), Step(R, Action.REFUND_CAPTURE)],
        ),
        # Requester capture fails: refund the vendor, release the requester.
        (
            Failure.REQUESTER_CAPTURE_FAILED,
            C,
            A,
            [Step(V, Action.REFUND_CAPTURE), Step(R, Action.CANCEL_AUTHORIZATION)],
        ),
        (
            Failure.BOTH_CAPTURES_FAILED,
            A,
            A,
            [Step(V, Action.CANCEL_AUTHORIZATION), Step(R, Action.CANCEL_AUTHORIZATION)],
        ),
        (
            Failure.EXPIRED,
            A,
            Money.PENDING,
            [Step(V, Action.CANCEL_AUTHORIZATION), Step(R, Action.CANCEL_AUTHORIZATION)],
        ),
        (Failure.CANCELLED, Money.NOT_STARTED, Money.NOT_STARTED, []),
    ],
)
def test_each_row_of_the_matrix(
    failure: Failure, vendor: Money, requester: Money, expected: list[Step]
) -> None:
    assert plan(failure, vendor, requester) == expected


def test_every_failure_state_row_ends_in_a_terminal_failure() -> None:
    for failure, row in MATRIX.items():
        if row.state is not None:
            assert row.state in TERMINAL_FAILURES, failure


@given(
    st.sampled_from([f for f, row in MATRIX.items() if row.unwind]),
    st.sampled_from(list(Money)),
    st.sampled_from(list(Money)),
)
def test_a_plan_leaves_no_live_money(failure: Failure, vendor: Money, requester: Money) -> None:
    """Whatever each party holds, executing the plan leaves nobody's money bound."""
    money = {V: vendor, R: requester}
    for step in plan(failure, vendor, requester):
        assert money[step.party] in LIVE
        money[step.party] = money_after(step.action)
    assert not set(money.values()) & LIVE
    assert plan(failure, money[V], money[R]) == []  # running it twice does nothing more


def test_final_states_include_committed() -> None:
    assert {s.value for s in FINAL_STATES - TERMINAL_FAILURES} == {"COMMITTED"}
