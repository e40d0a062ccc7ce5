"""The figures `/metrics` reads from the database at scrape time (what the alert rules in
deploy/prometheus/alerts.yml are built on), through the Metrics class on SQLite and
Postgres; and a scrape that cannot read the database still answers."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bookiji.api.metrics import STATES, Metrics
from bookiji.bootstrap import build
from bookiji.config import Settings
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.clock import ManualClock
from bookiji.store.database import Database
from bookiji.store.models import (
    CalendarConnection,
    CompensationAction,
    JobRun,
    Reservation,
    ReservationTransition,
    WebhookDelivery,
)
from bookiji.store.uow import UnitOfWork
from tests.conftest import T0
from tests.factories import add_vendor

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: Metrics) -> Samples:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def metrics_for(database_url: str, clock: ManualClock) -> Metrics:
    return Metrics(build(Settings(database_url=database_url), clock=clock))


def reservation(
    uow: UnitOfWork, rid: str, state: str, hour: int, moves: list[tuple[str, datetime]]
) -> None:
    """A reservation row of vendor `shop` in `state`, with one transition row per move."""
    start = T0 + timedelta(days=1, hours=hour)
    uow.session.add(
        Reservation(
            id=rid, vendor_id="shop", requester_id="alice", slot_start=start,
            slot_end=start + timedelta(hours=1), block_start=start,
            block_end=start + timedelta(hours=1), state=state, currency="gbp",
            created_at=moves[0][1], updated_at=T0 - timedelta(seconds=10),
        )
    )  # fmt: skip
    uow.session.flush()
    previous = None
    for to_state, at in moves:
        uow.session.add(
            ReservationTransition(
                reservation_id=rid, from_state=previous, to_state=to_state, reason="test",
                actor="test", at=at,
            )
        )  # fmt: skip
        previous = to_state


def compensation(uow: UnitOfWork, rid: str, party: str, status: str) -> None:
    uow.session.add(
        CompensationAction(
            id=f"cmp_{rid}_{party}", reservation_id=rid, kind="cancel_authorization",
            party=party, currency="gbp", status=status,
            idempotency_key=f"bkj:{rid}:{party}:cancel", created_at=T0, updated_at=T0,
        )
    )  # fmt: skip


def test_an_empty_database_exports_every_state_and_status_as_zero(database_url: str) -> None:
    samples = scrape(metrics_for(database_url, ManualClock(T0)))
    assert value(samples, "bookiji_database_up") == 1
    for state in STATES:
        assert value(samples, "bookiji_reservations", state=state) == 0
        assert value(samples, "bookiji_transitions", state=state) == 0
    for status in ("pending", "delivered", "dead"):
        assert value(samples, "bookiji_webhook_backlog", status=status) == 0
    for status in ("pending", "done", "failed"):
        assert value(samples, "bookiji_compensation_actions", status=status) == 0
    for status in ("never_synced", "ok", "degraded"):
        assert value(samples, "bookiji_calendar_connections", status=status) == 0
    assert value(samples, "bookiji_compensated_reservations_total") == 0
    assert value(samples, "bookiji_commit_in_progress_oldest_seconds") == 0
    assert named(samples, "bookiji_job_last_run_timestamp_seconds") == {}


def test_database_figures(database_url: str) -> None:
    db = Database(database_url)
    add_vendor(db, "shop")
    ApiKeyService(db, ManualClock(T0)).add_partner("acme", "Acme")
    path = ["HELD", "AWAITING_VENDOR_CONFIRMATION", "CONFIRMED_BY_VENDOR", "AWAITING_VENDOR_AUTH",
            "VENDOR_AUTHORIZED", "AWAITING_REQUESTER_AUTH", "AUTHORIZED_BOTH"]  # fmt: skip

    def walk(end: datetime, *tail: str) -> list[tuple[str, datetime]]:
        """The happy path up to AUTHORIZED_BOTH a minute apart, then `tail`, the last at `end`."""
        states = [*path, *tail]
        return [(s, end - timedelta(minutes=len(states) - 1 - i)) for i, s in enumerate(states)]

    minutes, hours = timedelta(minutes=1), timedelta(hours=1)
    with UnitOfWork(db) as uow:
        # In progress for 7 minutes (its row was touched 10 s ago: the age is the state's).
        stuck = walk(T0 - 7 * minutes, "COMMIT_IN_PROGRESS")
        reservation(uow, "res_stuck", "COMMIT_IN_PROGRESS", 1, stuck)
        busy = walk(T0 - 2 * minutes, "COMMIT_IN_PROGRESS")
        reservation(uow, "res_busy", "COMMIT_IN_PROGRESS", 3, busy)
        # Passed COMMIT_IN_PROGRESS hours ago and finished: not in progress any more.
        done = walk(T0 - 3 * hours, "COMMIT_IN_PROGRESS", "COMMITTED")
        reservation(uow, "res_done", "COMMITTED", 5, done)
        failed = walk(T0 - hours, "COMMIT_IN_PROGRESS", "FAILED_COMMIT")
        reservation(uow, "res_failed", "FAILED_COMMIT", 7, failed)
        reservation(uow, "res_new", "HELD", 9, [("HELD", T0)])
        compensation(uow, "res_failed", "vendor", "done")
        compensation(uow, "res_failed", "requester", "failed")
        compensation(uow, "res_done", "requester", "pending")
        calendars = {
            "cal_1": "ok",
            "cal_2": "degraded",
            "cal_3": "degraded",
            "cal_4": "never_synced",
        }
        for cid, status in calendars.items():
            source = f"https://cal.example/{cid}.ics"
            connection = CalendarConnection(
                id=cid,
                vendor_id="shop",
                provider="ics",
                source=source,
                status=status,
                created_at=T0,
            )
            uow.session.add(connection)
        for n, status in enumerate(["dead", "dead", "pending", "delivered"]):
            delivery = WebhookDelivery(
                id=f"whd_{n}",
                event_id=f"evt_{n}",
                event_seq=n,
                partner_id="acme",
                status=status,
                created_at=T0,
            )
            uow.session.add(delivery)
        for name, ago in [("expiry", 90), ("expiry", 30), ("money_sweep", 3600)]:
            started = T0 - timedelta(seconds=ago)
            uow.session.add(JobRun(name=name, owner="t", started_at=started, finished_at=started))
        uow.commit()
    db.dispose()

    samples = scrape(metrics_for(database_url, ManualClock(T0)))
    assert value(samples, "bookiji_database_up") == 1
    assert value(samples, "bookiji_reservations", state="COMMIT_IN_PROGRESS") == 2
    assert value(samples, "bookiji_reservations", state="COMMITTED") == 1
    assert value(samples, "bookiji_reservations", state="HELD") == 1
    assert value(samples, "bookiji_reservations", state="EXPIRED") == 0
    # Commit attempts, successes, failures and payment flows for the rate rules.
    assert value(samples, "bookiji_transitions", state="COMMIT_IN_PROGRESS") == 4
    assert value(samples, "bookiji_transitions", state="COMMITTED") == 1
    assert value(samples, "bookiji_transitions", state="FAILED_COMMIT") == 1
    assert value(samples, "bookiji_transitions", state="VENDOR_AUTHORIZED") == 4
    assert value(samples, "bookiji_transitions", state="HELD") == 5
    assert value(samples, "bookiji_commit_in_progress_oldest_seconds") == 7 * 60
    assert named(samples, "bookiji_compensation_actions") == {
        (("status", "done"),): 1,
        (("status", "failed"),): 1,
        (("status", "pending"),): 1,
    }
    assert value(samples, "bookiji_compensated_reservations_total") == 2  # distinct reservations
    assert named(samples, "bookiji_calendar_connections") == {
        (("status", "degraded"),): 2,
        (("status", "never_synced"),): 1,
        (("status", "ok"),): 1,
    }
    assert value(samples, "bookiji_webhook_backlog", status="dead") == 2
    assert value(samples, "bookiji_webhook_backlog", status="pending") == 1
    assert named(samples, "bookiji_job_last_run_timestamp_seconds") == {
        (("name", "expiry"),): (T0 - timedelta(seconds=30)).timestamp(),
        (("name", "money_sweep"),): (T0 - timedelta(hours=1)).timestamp(),
    }

    later = scrape(metrics_for(database_url, ManualClock(T0 + timedelta(minutes=1))))
    assert value(later, "bookiji_commit_in_progress_oldest_seconds") == 8 * 60


def test_job_counters_are_labelled_name_not_job(database_url: str) -> None:
    metrics = metrics_for(database_url, ManualClock(T0))
    metrics.observe_job("expiry", errors=0)
    metrics.observe_job("expiry", errors=2)
    samples = scrape(metrics)
    assert value(samples, "bookiji_job_runs_total", name="expiry") == 2
    assert value(samples, "bookiji_job_failures_total", name="expiry") == 1


@pytest.mark.parametrize("where", ["sqlite-without-schema", "postgres-refused"])
def test_a_scrape_without_the_database_says_so_and_exports_no_figures(
    where: str, tmp_path: Path
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'empty.db'}"
        if where == "sqlite-without-schema"
        else "postgresql+psycopg://bookiji@127.0.0.1:9/nothing?connect_timeout=2"
    )
    metrics = metrics_for(url, ManualClock(T0))
    metrics.observe_request("GET", "/healthz", 200, 0.001)
    samples = scrape(metrics)
    assert value(samples, "bookiji_database_up") == 0
    assert value(samples, "bookiji_http_requests_total", method="GET", route="/healthz",
                 status="200") == 1  # fmt: skip
    # No zeros in their place: a drop to 0 would read as a counter reset to rate functions.
    names = {name for name, _ in samples}
    for figure in ("bookiji_reservations", "bookiji_transitions", "bookiji_webhook_backlog",
                   "bookiji_compensation_actions", "bookiji_compensated_reservations_total",
                   "bookiji_commit_in_progress_oldest_seconds", "bookiji_calendar_connections",
                   "bookiji_job_last_run_timestamp_seconds"):  # fmt: skip
        assert figure not in names
