"""Product bugs the soak (bench/soak.py) found, reproduced deterministically through the
services, on SQLite and Postgres, against the Stripe test server.

Each test states the correct behaviour and is marked `xfail(strict=True)` while the bug is
open: the fix makes it pass, strict mode turns that into a failure, and whoever fixed the
bug removes the marker and the bug's entry in `KNOWN_BUGS` of bench/soak.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import select

from bookiji.bootstrap import Container, build
from bookiji.config import Settings
from bookiji.domain.errors import InvalidTransition
from bookiji.domain.states import StageTTLs
from bookiji.integrations.stripe_gateway import parse_webhook
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.audit import audit
from bookiji.services.clock import ManualClock
from bookiji.services.documents import load_reservation_document
from bookiji.services.jobs import JobRunner
from bookiji.services.reconcile import JobReport
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.services.webhooks import WebhookService
from bookiji.store.database import Database
from bookiji.store.models import JobLease, JobRun, OutboxEvent
from bookiji.store.uow import UnitOfWork
from tests.factories import add_vendor
from tests.fakes.stripe_server import StripeServer


@contextlib.contextmanager
def stripe_container(
    database_url: str, **payments: Any
) -> Iterator[tuple[Container, StripeServer]]:
    """The services on a Stripe test server, with one vendor whose deposit card works."""
    with StripeServer() as server:
        db = Database(database_url)
        add_vendor(db, "shop", slot_interval_minutes=60, max_advance_days=30,
                   payment={"payment_method": "pm_card_visa"})  # fmt: skip
        db.dispose()
        payments |= {"gateway": "stripe", "stripe_api_key": server.api_key,
                     "stripe_base_url": server.base_url}  # fmt: skip
        container = build(Settings(database_url=database_url, payments=payments))
        try:
            yield container, server
        finally:
            container.close()


def confirmed_hold(container: Container) -> str:
    """A hold the vendor confirmed (its deposit authorized, unless that is switched off)."""
    day = (datetime.now(UTC) + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    start = day + timedelta(hours=10)
    rid = container.reservations.create_hold(
        HoldRequest("shop", start, start + timedelta(hours=1), "requester"), actor="test"
    ).reservation_id
    container.reservations.confirm(rid, actor="vendor")
    return rid


def test_a_commit_in_flight_is_left_alone_by_another_thread_of_the_same_daemon(
    database_url: str,
) -> None:
    """In a daemon, the partner's authorize request and Stripe's webhook for the same
    authorization both call commit(). While one commit runs, the other must not run it too
    (the soak saw the loser answered 500: duplicate payment_operations idempotency key)."""
    with stripe_container(database_url) as (container, server):
        rid = confirmed_hold(container)
        container.payments.authorize(
            rid, "requester", payment_method="pm_card_visa", actor="test", auto_commit=False
        )
        server.fail_next("POST", "/capture", status=None, delay=1.0)  # a slow vendor capture
        first = threading.Thread(target=container.payments.commit, args=(rid,),
                                 kwargs={"actor": "partner:acme"})  # fmt: skip
        first.start()
        deadline = time.monotonic() + 5
        while not server.requests_to("/capture"):  # the first commit is capturing now
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = len(server.requests)
        try:
            state = container.payments.commit(rid, actor="stripe:webhook")
            calls = [f"{r.method} {r.path}" for r in server.requests[before:]]
        finally:
            first.join(timeout=30)
        assert (state, calls) == ("COMMIT_IN_PROGRESS", [])
        assert load_reservation_document(container.db, rid)["state"] == "COMMITTED"


def test_a_late_canceled_event_leaves_a_released_deposit_released(database_url: str) -> None:
    """The partner cancels; the compensation cancels the vendor's deposit at Stripe, which
    then sends payment_intent.canceled. Handling that news about a reservation that is
    already final must change nothing and succeed (a 409 makes Stripe retry it for days)."""
    with stripe_container(database_url) as (container, server):
        rid = confirmed_hold(container)
        container.reservations.cancel(rid, actor="partner:acme", note="changed plans")
        document = load_reservation_document(container.db, rid)
        deposit = document["payment"]["vendorDeposit"]
        assert (document["state"], deposit["state"]) == ("CANCELLED", "released")

        # What POST /v1/stripe/webhooks does with the event Stripe sends.
        event_ = server.events_of("payment_intent.canceled", deposit["paymentIntentId"])[-1]
        payload, signature = server.signed_event(event_)
        kind, intent = parse_webhook(payload, signature, server.webhook_secret)
        assert kind == "payment_intent.canceled" and intent is not None
        refused = None
        try:
            container.payments.apply_intent(intent, actor="stripe:webhook")
        except InvalidTransition as exc:  # the endpoint answers 409
            refused = exc.message
        after = load_reservation_document(container.db, rid)
        assert (after["payment"]["vendorDeposit"]["state"], refused) == ("released", None)


def test_the_canceled_event_completes_a_release_whose_answer_was_lost(
    database_url: str,
) -> None:
    """The partner cancels; Stripe cancels the deposit but the answer is lost (a 500 after
    applying), so the compensation waits to retry and the database still says `authorized`.
    Stripe's payment_intent.canceled is that outcome: it completes the release at once
    (the 60 s soak's audit saw a cancelled reservation still 'authorized' at its end)."""
    with stripe_container(database_url) as (container, server):
        rid = confirmed_hold(container)
        server.fail_next("POST", "/cancel", status=500, after_apply=True, count=4)  # every try
        container.reservations.cancel(rid, actor="partner:acme", note="changed plans")
        document = load_reservation_document(container.db, rid)
        deposit = document["payment"]["vendorDeposit"]
        assert (document["state"], deposit["state"]) == ("CANCELLED", "authorized")
        assert [a["status"] for a in document["compensationActions"]] == ["pending"]

        event_ = server.events_of("payment_intent.canceled", deposit["paymentIntentId"])[-1]
        payload, signature = server.signed_event(event_)
        _kind, intent = parse_webhook(payload, signature, server.webhook_secret)
        assert intent is not None
        container.payments.apply_intent(intent, actor="stripe:webhook")
        after = load_reservation_document(container.db, rid)
        assert after["payment"]["vendorDeposit"]["state"] == "released"
        assert [a["status"] for a in after["compensationActions"]] == ["done"]
        assert audit(container.db, container.gateway) == []


def test_a_release_made_while_the_sweep_asked_the_provider_is_not_undone(
    database_url: str,
) -> None:
    """`stale_authorizations` asks Stripe about a cancelled reservation whose deposit is
    still 'authorized' (its release is waiting to retry). While it waits for the answer, the
    compensation's retry releases the deposit. The sweep must not write its older answer
    ('authorized') over that (the 60 s soak ended with such a reservation: authorized in the
    database, released at Stripe, nothing left to release it)."""
    with stripe_container(database_url) as (container, server):
        rid = confirmed_hold(container)
        server.fail_next("POST", "/cancel", status=500, count=4)  # every try, not applied
        container.reservations.cancel(rid, actor="partner:acme", note="changed plans")
        document = load_reservation_document(container.db, rid)
        assert document["payment"]["vendorDeposit"]["state"] == "authorized"
        (action,) = document["compensationActions"]
        reconciler = container.reconciler
        ask = reconciler._provider_money

        def asked_while_released(reservation_id: str) -> Any:
            answer = ask(reservation_id)  # Stripe: still requires_capture
            container.payments.compensations.run(ids=[action["id"]])  # the retry, meanwhile
            return answer

        reconciler._provider_money = asked_while_released  # type: ignore[method-assign]
        reconciler.stale_authorizations()
        after = load_reservation_document(container.db, rid)
        assert after["payment"]["vendorDeposit"]["state"] == "released"
        assert audit(container.db, container.gateway) == []


def test_two_workers_starting_the_same_deposit_authorization_both_succeed(
    backend: str, database_url: str
) -> None:
    """The vendor's confirmation authorizes its deposit in the request, and another
    daemon's `vendor_authorizations` job picks up the same confirmed reservation. Both start
    operation bkj:<id>:vendor:authorize; the one that comes second must use the first's row,
    not fail on the unique idempotency key (the soak saw the job fail this way)."""
    if backend == "sqlite":
        pytest.skip("SQLite writers take turns (BEGIN IMMEDIATE): the two cannot interleave")
    with stripe_container(database_url) as (container, _):
        payments = container.settings.payments.model_copy(
            update={"auto_vendor_authorization": False}
        )
        quiet = build(container.settings.model_copy(update={"payments": payments}))
        rid = confirmed_hold(quiet)  # confirmed; the deposit is not authorized yet
        quiet.close()
        assert load_reservation_document(container.db, rid)["state"] == "CONFIRMED_BY_VENDOR"
        # Both workers look for the operation's row before either has inserted it.
        barrier = threading.Barrier(2, timeout=10)
        waited: set[int] = set()

        def looked(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            sql = statement.lstrip()
            me = threading.get_ident()
            if sql.startswith("SELECT") and "FROM payment_operations" in sql and me not in waited:
                waited.add(me)  # each worker's first look only
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait()

        outcomes: dict[str, str] = {}

        def work(name: str, call: Callable[[], object]) -> None:
            try:
                call()
                outcomes[name] = "ok"
            except Exception as exc:
                outcomes[name] = type(exc).__name__

        def answer() -> object:  # what the vendor's confirmation runs next (on_confirmed)
            return container.payments.authorize(rid, "vendor", actor="system:payments")

        def job() -> None:
            report = container.reconciler.vendor_authorizations()
            assert report.errors == [], report.errors

        workers = [threading.Thread(target=work, args=("answer", answer)),
                   threading.Thread(target=work, args=("job", job))]  # fmt: skip
        event.listen(container.db.engine, "after_cursor_execute", looked)
        try:
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=30)
        finally:
            event.remove(container.db.engine, "after_cursor_execute", looked)
        document = load_reservation_document(container.db, rid)
    assert outcomes == {"answer": "ok", "job": "ok"}
    assert document["state"] == "AWAITING_REQUESTER_AUTH"


class Killed(BaseException):
    """SIGKILL, as far as the code running is concerned: no handler or cleanup runs."""


def test_a_daemon_killed_mid_webhook_batch_holds_the_rest_back_one_send_timeout_at_most(
    db: Database,
) -> None:
    """One daemon claims a batch of partner webhooks and dies sending its second row.
    Another daemon must be able to send the rest once a send's timeout has passed, not
    n send timeouts later for the n-th row (the soak saw events held back past its drain)."""
    clock = ManualClock(datetime(2026, 12, 1, 8, tzinfo=UTC))
    add_vendor(db, "shop", slot_interval_minutes=60)
    ApiKeyService(db, clock).add_partner("acme", "Acme", webhook_url="http://127.0.0.1:9/hooks")
    holds = ReservationService(db, clock, StageTTLs())
    for i in range(4):
        start = clock.now() + timedelta(days=1, hours=i)
        holds.create_hold(
            HoldRequest("shop", start, start + timedelta(hours=1), f"r{i}", partner_id="acme"),
            actor="test",
        )

    sent: list[str] = []

    class Sender:
        def __init__(self, dies_on: int | None) -> None:
            self.dies_on, self.calls = dies_on, 0

        def send(self, _url: str, _secret: str, *, message_id: str, **_: object) -> int:
            self.calls += 1
            if self.calls == self.dies_on:
                raise Killed
            sent.append(message_id)
            return 204

    first = WebhookService(db, clock, Sender(dies_on=2))
    first.fan_out()
    with pytest.raises(Killed):
        first.deliver_due()
    send_timeout = first.send_timeout
    clock.advance(send_timeout + timedelta(seconds=1))
    second = WebhookService(db, clock, Sender(dies_on=None))
    for _ in range(5):  # a few rounds: each sends the next event of every reservation
        second.deliver_due()
    with UnitOfWork(db, readonly=True) as uow:
        events = set(uow.session.exec(select(OutboxEvent.event_id)).all())
    assert events - set(sent) == set()


def test_a_job_run_that_outlives_its_lease_is_not_started_again_elsewhere(db: Database) -> None:
    """Daemon a's money sweep takes longer than the job lease (it asks Stripe about every
    reservation touched in 7 days). Daemon b's scheduler comes round meanwhile: it must skip
    the job while a's run is still going (the soak saw both sweeping at once).

    The manual clock stands for the time the sweep takes: it moves a third of the lease at a
    time, and each time the sweep waits (bounded) for what that much real time brings, a's
    heartbeat renewing the lease (every 10 ms of real time here)."""
    clock = ManualClock(datetime(2026, 12, 1, 8, tzinfo=UTC))
    lease = timedelta(seconds=60)
    seen: list[str] = []

    def expires_at() -> datetime:
        with UnitOfWork(db, readonly=True) as uow:
            row = uow.session.get(JobLease, "job:money_sweep")
            assert row is not None
            return row.expires_at

    def long_sweep() -> JobReport:
        for _ in range(4):  # the work takes longer than the lease
            clock.advance(lease / 3)
            deadline = time.monotonic() + 10
            while expires_at() < clock.now() + lease:  # a's renewal at this time
                assert time.monotonic() < deadline, "the lease was not renewed"
                time.sleep(0.005)
        seen.append("b ran" if b.run("money_sweep") is not None else "b skipped")
        return JobReport("money_sweep")

    a = JobRunner(db, clock, {"money_sweep": long_sweep}, owner="daemon-a", lease=lease,
                  heartbeat=timedelta(milliseconds=10))  # fmt: skip
    b = JobRunner(db, clock, {"money_sweep": lambda: JobReport("money_sweep")},
                  owner="daemon-b", lease=lease)  # fmt: skip
    report = a.run("money_sweep")
    assert report is not None and report.errors == []
    assert seen == ["b skipped"]
    assert b.run("money_sweep") is not None  # a's run is over: its lease is free


def test_the_run_log_never_shows_a_run_ending_after_the_next_one_started(db: Database) -> None:
    """The soak's check on `job_runs` saw daemon a's run end 1 ms after daemon b's began: a
    stamped its end after releasing the lease, and b took the job in between. The end is
    stamped before the release, so the log shows what the lease guarantees."""
    clock = ManualClock(datetime(2026, 12, 1, 8, tzinfo=UTC))
    b = JobRunner(db, clock, {"expiry": lambda: JobReport("expiry")}, owner="daemon-b")

    class ReleasesToB(JobRunner):
        def _release(self, name: str) -> None:
            super()._release(name)
            clock.advance(timedelta(milliseconds=1))
            assert b.run(name) is not None  # b takes the job the moment a lets it go
            clock.advance(timedelta(milliseconds=1))

    a = ReleasesToB(db, clock, {"expiry": lambda: JobReport("expiry")}, owner="daemon-a")
    assert a.run("expiry") is not None
    with UnitOfWork(db, readonly=True) as uow:
        runs = {r.owner: r for r in uow.session.exec(select(JobRun)).all()}
    assert set(runs) == {"daemon-a", "daemon-b"}
    a_end = runs["daemon-a"].finished_at
    assert a_end is not None and a_end <= runs["daemon-b"].started_at
