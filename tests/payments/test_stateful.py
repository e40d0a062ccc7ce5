"""Random workflows: holds, answers, authorizations with random cards, 3-D Secure, commits
with failing captures, cancellations, clock jumps and reconciliation, on SQLite and Postgres.
After every step every audit invariant holds."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from bookiji.domain.errors import BookijiError
from bookiji.integrations.local_gateway import LocalGateway
from bookiji.services.audit import audit
from bookiji.services.clock import ManualClock
from bookiji.store.database import Database
from bookiji.store.uow import UnitOfWork
from tests.payments.harness import NOW, Workflow, build_workflow, local_faults

CARDS = [
    "pm_card_visa",
    "pm_card_visa",
    "pm_card_chargeDeclined",
    "pm_card_chargeDeclinedInsufficientFunds",
    "pm_card_authenticationRequired",
]


@pytest.mark.slow
def test_random_workflows_keep_every_invariant(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    created: list[tuple[str, Database]] = []

    def fresh_database() -> Database:
        if backend == "sqlite":
            template: Path = request.getfixturevalue("sqlite_template")
            target = tmp_path / f"{uuid.uuid4().hex}.db"
            shutil.copyfile(template, target)
            url = f"sqlite:///{target}"
        else:
            url = request.getfixturevalue("postgres_factory").clone()
        db = Database(url)
        created.append((url, db))
        return db

    class Workflows(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            db = fresh_database()
            gateway = LocalGateway(db, ManualClock(NOW))
            self.w: Workflow = build_workflow(db, gateway, local_faults(gateway))
            self.gateway = gateway
            self.ids: list[str] = []

        def pick(self, data: st.DataObject) -> str | None:
            return data.draw(st.sampled_from(self.ids)) if self.ids else None

        @rule(hour=st.integers(9, 16))
        def hold(self, hour: int) -> None:
            with contextlib.suppress(BookijiError):  # taken or too late: that is the behaviour
                self.ids.append(self.w.hold(hour))

        def state_of(self, rid: str) -> str:
            with UnitOfWork(self.w.db, readonly=True) as uow:
                reservation = uow.reservations.get(rid)
                assert reservation is not None
                return reservation.state

        @rule(data=st.data(), card=st.sampled_from(CARDS), declines=st.booleans(),
              fault=st.sampled_from(["none", "none", "declined", "outage"]))  # fmt: skip
        def progress(self, data: st.DataObject, card: str, declines: bool, fault: str) -> None:
            """The natural next step of a reservation, with a random outcome."""
            rid = self.pick(data)
            if rid is None:
                return
            state = self.state_of(rid)
            with contextlib.suppress(BookijiError):
                if state in ("HELD", "AWAITING_VENDOR_CONFIRMATION"):
                    if declines:
                        self.w.reservations.decline(rid, actor="vendor")
                    else:
                        self.w.reservations.confirm(rid, actor="vendor")
                elif state in ("CONFIRMED_BY_VENDOR", "AWAITING_VENDOR_AUTH"):
                    vendor_card = "pm_card_chargeDeclined" if declines else "pm_card_visa"
                    self.w.payments.authorize(rid, "vendor", payment_method=vendor_card, actor="t")
                elif state == "AWAITING_REQUESTER_AUTH":
                    for intent in self.gateway.find_by_reservation(rid):
                        if intent.status == "requires_action":
                            self.gateway.complete_authentication(intent.id, succeed=not declines)
                            self.w.reconciler.pending_authentications()
                            return
                    self._faulted(fault, data)
                    self.w.payments.authorize(rid, "requester", payment_method=card, actor="t")
                elif state in ("AUTHORIZED_BOTH", "COMMIT_IN_PROGRESS"):
                    self._faulted(fault, data)
                    self.w.payments.commit(rid, actor="t")
            self.gateway.faults.queue.clear()  # an unused fault must not leak into other steps

        def _faulted(self, fault: str, data: st.DataObject) -> None:
            if fault == "declined":
                self.w.faults.capture_declined()
            elif fault == "outage":
                self.w.faults.capture_outage(1, data.draw(st.booleans()))

        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            rid = self.pick(data)
            if rid is not None:
                with contextlib.suppress(BookijiError):
                    self.w.reservations.cancel(rid, actor="partner")

        @rule(minutes=st.integers(1, 20))
        def time_passes(self, minutes: int) -> None:
            self.w.clock.advance(timedelta(minutes=minutes))

        @rule()
        def reconcile(self) -> None:
            self.w.reconciler.run_once()

        @invariant()
        def audit_is_clean(self) -> None:
            # A commit in progress holds authorizations by design until it finishes.
            breaches = audit(self.w.db, self.gateway)
            assert breaches == [], breaches

        @invariant()
        def no_capture_twice(self) -> None:
            from sqlmodel import col, select

            from bookiji.store.models import LocalPaymentIntent

            with UnitOfWork(self.w.db, readonly=True) as uow:
                twice = uow.session.exec(
                    select(LocalPaymentIntent.id).where(col(LocalPaymentIntent.captures) > 1)
                ).all()
            assert twice == []

        def teardown(self) -> None:
            self.w.db.dispose()

    try:
        run_state_machine_as_test(
            Workflows,
            settings=settings(
                max_examples=12 if backend == "postgres" else 25,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        for url, db in created:
            db.dispose()
            if backend == "postgres":
                request.getfixturevalue("postgres_factory").drop(url)
