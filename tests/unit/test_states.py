"""The state machine: the table, staged deadlines, idempotency and replay."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bookiji.domain.errors import InvalidTransition
from bookiji.domain.states import (
    ACTIVE_STATES,
    EXPIRY_TARGET,
    FINAL_STATES,
    STAGE_OF,
    TERMINAL_FAILURES,
    TRANSITIONS,
    ReservationState,
    Stage,
    StageTTLs,
    expiry_target,
    initial_transition,
    plan_transition,
    replay,
)

S = ReservationState
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
TTLS = StageTTLs()

HAPPY_PATH = [
    S.INTENT_CREATED,
    S.HELD,
    S.AWAITING_VENDOR_CONFIRMATION,
    S.CONFIRMED_BY_VENDOR,
    S.AWAITING_VENDOR_AUTH,
    S.VENDOR_AUTHORIZED,
    S.AWAITING_REQUESTER_AUTH,
    S.AUTHORIZED_BOTH,
    S.COMMIT_IN_PROGRESS,
    S.COMMITTED,
]


def test_there_are_seventeen_states_and_the_table_covers_each() -> None:
    assert len(ReservationState) == 17
    assert set(TRANSITIONS) == set(ReservationState)
    assert len(TERMINAL_FAILURES) == 7
    assert set(ReservationState) - TERMINAL_FAILURES == ACTIVE_STATES
    assert S.COMMITTED in ACTIVE_STATES


def test_the_happy_path_is_allowed_step_by_step() -> None:
    for current, target in itertools.pairwise(HAPPY_PATH):
        assert target in TRANSITIONS[current], (current, target)
    assert replay(zip([None, *HAPPY_PATH[:-1]], HAPPY_PATH, strict=True)) is S.COMMITTED


def test_final_states_have_no_way_out() -> None:
    for state in FINAL_STATES:
        assert TRANSITIONS[state] == frozenset()
        assert STAGE_OF.get(state) is None


def test_a_commit_in_progress_cannot_be_cancelled_or_expired() -> None:
    assert S.CANCELLED not in TRANSITIONS[S.COMMIT_IN_PROGRESS]
    assert S.EXPIRED not in TRANSITIONS[S.COMMIT_IN_PROGRESS]
    assert S.COMMIT_IN_PROGRESS not in EXPIRY_TARGET
    far_past = T0 - timedelta(days=1)
    assert expiry_target(S.COMMIT_IN_PROGRESS, far_past, T0) is None


@pytest.mark.parametrize(
    ("state", "target"),
    [
        (S.HELD, S.FAILED_VENDOR_TIMEOUT),
        (S.AWAITING_VENDOR_CONFIRMATION, S.FAILED_VENDOR_TIMEOUT),
        (S.CONFIRMED_BY_VENDOR, S.EXPIRED),
        (S.AWAITING_REQUESTER_AUTH, S.EXPIRED),
        (S.AUTHORIZED_BOTH, S.EXPIRED),
    ],
)
def test_a_passed_deadline_leads_to_the_stage_failure(state: S, target: S) -> None:
    deadline = T0 + timedelta(minutes=10)
    assert expiry_target(state, deadline, T0) is None
    assert expiry_target(state, deadline, deadline - timedelta(microseconds=1)) is None
    assert expiry_target(state, deadline, deadline) is target
    assert target in TRANSITIONS[state]


def test_invalid_transition_is_typed_and_names_the_allowed_moves() -> None:
    with pytest.raises(InvalidTransition) as caught:
        plan_transition(S.HELD, S.COMMITTED, now=T0, deadline=None, ttls=TTLS)
    assert caught.value.code == "invalid_transition"
    assert caught.value.http_status == 409
    assert "CANCELLED" in caught.value.details["allowed"]


def test_repeating_the_transition_that_happened_is_a_no_op() -> None:
    assert plan_transition(S.CANCELLED, S.CANCELLED, now=T0, deadline=None, ttls=TTLS) is None
    deadline = T0 + timedelta(minutes=3)
    assert plan_transition(S.HELD, S.HELD, now=T0, deadline=deadline, ttls=TTLS) is None


def test_stage_deadlines_default_to_10_30_30_15_minutes() -> None:
    start = initial_transition(now=T0, ttls=TTLS)
    assert start.deadline == T0 + timedelta(minutes=10)
    # Moving within the hold stage keeps the deadline.
    later = T0 + timedelta(minutes=4)
    held = plan_transition(S.INTENT_CREATED, S.HELD, now=later, deadline=start.deadline, ttls=TTLS)
    assert held is not None and held.deadline == start.deadline
    confirmed = plan_transition(
        S.AWAITING_VENDOR_CONFIRMATION,
        S.CONFIRMED_BY_VENDOR,
        now=later,
        deadline=held.deadline,
        ttls=TTLS,
    )
    assert confirmed is not None and confirmed.deadline == later + timedelta(minutes=30)
    authorized = plan_transition(
        S.AWAITING_VENDOR_AUTH,
        S.VENDOR_AUTHORIZED,
        now=later,
        deadline=confirmed.deadline,
        ttls=TTLS,
    )
    assert authorized is not None and authorized.deadline == later + timedelta(minutes=30)
    both = plan_transition(
        S.AWAITING_REQUESTER_AUTH, S.AUTHORIZED_BOTH, now=later, deadline=None, ttls=TTLS
    )
    assert both is not None and both.deadline == later + timedelta(minutes=15)
    done = plan_transition(S.COMMIT_IN_PROGRESS, S.COMMITTED, now=later, deadline=None, ttls=TTLS)
    assert done is not None and done.deadline is None


def test_custom_ttls_are_used() -> None:
    ttls = StageTTLs(hold=timedelta(minutes=2), authorization=timedelta(minutes=5))
    assert initial_transition(now=T0, ttls=ttls).deadline == T0 + timedelta(minutes=2)
    assert ttls.for_stage(Stage.REQUESTER_AUTH) == timedelta(minutes=5)


@pytest.mark.parametrize(
    "log",
    [
        [],
        [(None, S.HELD)],
        [(None, S.INTENT_CREATED), (S.HELD, S.AWAITING_VENDOR_CONFIRMATION)],
        [(None, S.INTENT_CREATED), (S.INTENT_CREATED, S.COMMITTED)],
        [(None, S.INTENT_CREATED), (S.INTENT_CREATED, S.CANCELLED), (S.CANCELLED, S.HELD)],
    ],
)
def test_replay_refuses_a_broken_log(log: list[tuple[S | None, S]]) -> None:
    with pytest.raises(InvalidTransition):
        replay(log)


class ReservationLifecycle(RuleBasedStateMachine):
    """Random attempted transitions and clock jumps; the log must always replay to the state,
    the deadline must match the stage, and refused moves must change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        start = initial_transition(now=self.now, ttls=TTLS)
        self.state = start.to_state
        self.deadline = start.deadline
        self.log: list[tuple[S | None, S]] = [(None, start.to_state)]
        self.stage_started = self.now

    def _apply(self, target: S) -> None:
        before = (self.state, self.deadline, len(self.log))
        try:
            planned = plan_transition(
                self.state, target, now=self.now, deadline=self.deadline, ttls=TTLS
            )
        except InvalidTransition:
            assert target not in TRANSITIONS[self.state]
            assert (self.state, self.deadline, len(self.log)) == before
            return
        if planned is None:
            assert target is self.state
            return
        if STAGE_OF.get(target) is not STAGE_OF.get(self.state):
            self.stage_started = self.now
        self.log.append((self.state, target))
        self.state, self.deadline = target, planned.deadline

    @rule(wanted=st.sampled_from(list(ReservationState)))
    def attempt(self, wanted: S) -> None:
        self._apply(wanted)

    @rule(data=st.data())
    def attempt_allowed(self, data: st.DataObject) -> None:
        options = sorted(TRANSITIONS[self.state])
        if options:
            self._apply(data.draw(st.sampled_from(options)))

    @rule(minutes=st.integers(min_value=0, max_value=90))
    def advance_clock(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    @rule()
    def run_expiry(self) -> None:
        target = expiry_target(self.state, self.deadline, self.now)
        if target is not None:
            self._apply(target)
            assert self.state is target

    @invariant()
    def log_replays_to_state(self) -> None:
        assert replay(self.log) is self.state

    @invariant()
    def deadline_matches_stage(self) -> None:
        stage = STAGE_OF.get(self.state)
        if stage is None:
            assert self.deadline is None
            assert self.state in FINAL_STATES
        else:
            assert self.deadline == self.stage_started + TTLS.for_stage(stage)


TestReservationLifecycle = ReservationLifecycle.TestCase
