"""Prometheus metrics: request counts and latency by route and status, job runs and
failures, and figures read from the database at scrape time.

The database figures describe the installation, not the process: every daemon sharing one
database exports the same values, so alert rules aggregate them with `max`, never `sum`
(see deploy/prometheus/alerts.yml). Each is one grouped or indexed query. A scrape never
fails with the database: when a query fails, `bookiji_database_up` is 0 and none of the
database figures is exported for that scrape (a partial or zeroed set would look like a
drop, and rate functions would read it as a counter reset).

Labels and states a figure can have are always exported, with 0 when there are no rows, so
the first dead letter or failed commit moves an existing series (rules using `delta` or
`increase` see it) instead of creating one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlmodel import col, func, select

from bookiji.domain.states import ReservationState
from bookiji.store.models import (
    CalendarConnection,
    CompensationAction,
    JobRun,
    Reservation,
    ReservationTransition,
    WebhookDelivery,
)
from bookiji.store.uow import UnitOfWork

if TYPE_CHECKING:
    from bookiji.bootstrap import Container

STATES = tuple(state.value for state in ReservationState)
WEBHOOK_STATUSES = ("pending", "delivered", "dead")
COMPENSATION_STATUSES = ("pending", "done", "failed")
CALENDAR_STATUSES = ("never_synced", "ok", "degraded")
COMMITTING = ReservationState.COMMIT_IN_PROGRESS.value
#: Commits in progress looked at for the oldest (by deadline; normally there are a handful).
OLDEST_COMMITS_CHECKED = 200


@dataclass
class _Snapshot:
    """Everything one scrape reads from the database, collected before any is exported."""

    reservations: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    transitions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    webhooks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WEBHOOK_STATUSES, 0))
    compensations: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(COMPENSATION_STATUSES, 0)
    )
    compensated: int = 0
    calendars: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CALENDAR_STATUSES, 0))
    oldest_commit_seconds: float = 0.0
    job_last_run: dict[str, float] = field(default_factory=dict)


def _grouped(uow: UnitOfWork, column: object, into: dict[str, int]) -> None:
    for key, count in uow.session.exec(select(column, func.count()).group_by(column)).all():  # type: ignore[call-overload]
        into[str(key)] = int(count)


class _DatabaseGauges(Collector):
    def __init__(self, container: Container) -> None:
        self.container = container
        self.job_names = tuple(container.settings.daemon.jobs.model_dump())

    def read(self) -> _Snapshot:
        snap = _Snapshot()
        now = self.container.clock.now()
        with UnitOfWork(self.container.db, readonly=True) as uow:
            snap.reservations.update(uow.reservations.count_by_state())
            _grouped(uow, col(ReservationTransition.to_state), snap.transitions)
            _grouped(uow, col(WebhookDelivery.status), snap.webhooks)
            _grouped(uow, col(CompensationAction.status), snap.compensations)
            _grouped(uow, col(CalendarConnection.status), snap.calendars)
            snap.compensated = int(
                uow.session.exec(
                    select(func.count(func.distinct(col(CompensationAction.reservation_id))))
                ).one()
            )
            # When the oldest commit still in progress entered that state. Two steps with
            # plans that cannot go wrong: the few reservations in progress, earliest deadline
            # first, from the (state, state_deadline) index; then their transition rows by
            # the (reservation_id, id) index. (One join lets a planner walk every commit ever
            # made through the (to_state, at) index instead.)
            committing = uow.session.exec(
                select(Reservation.id)
                .where(col(Reservation.state) == COMMITTING)
                .order_by(col(Reservation.state_deadline))
                .limit(OLDEST_COMMITS_CHECKED)
            ).all()
            entered = None
            if committing:
                entered = uow.session.exec(
                    select(func.min(col(ReservationTransition.at)))
                    .where(col(ReservationTransition.reservation_id).in_(committing))
                    .where(col(ReservationTransition.to_state) == COMMITTING)
                ).one()
            if entered is not None:
                snap.oldest_commit_seconds = max(0.0, (now - entered).total_seconds())
            for name in self.job_names:  # one (name, started_at) index lookup each
                last = uow.session.exec(
                    select(func.max(col(JobRun.started_at))).where(col(JobRun.name) == name)
                ).one()
                if last is not None:
                    snap.job_last_run[name] = last.timestamp()
        return snap

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "bookiji_database_up",
            "1 if this scrape could read the database figures, 0 if not (they are then absent)",
        )
        try:
            snap = self.read()
        except Exception:  # a scrape must not fail with the database
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield _labelled(
            GaugeMetricFamily("bookiji_reservations", "Reservations by state", labels=["state"]),
            snap.reservations,
        )
        yield _labelled(
            GaugeMetricFamily(
                "bookiji_transitions",
                "State transitions ever recorded, by target state (only grows)",
                labels=["state"],
            ),
            snap.transitions,
        )
        yield _labelled(
            GaugeMetricFamily(
                "bookiji_webhook_backlog",
                "Webhook deliveries by status (dead = dead letters not replayed)",
                labels=["status"],
            ),
            snap.webhooks,
        )
        yield _labelled(
            GaugeMetricFamily(
                "bookiji_compensation_actions",
                "Compensation actions (release or refund one party's money) by status",
                labels=["status"],
            ),
            snap.compensations,
        )
        compensated = CounterMetricFamily(
            "bookiji_compensated_reservations",
            "Reservations that ever needed a compensation action",
        )
        compensated.add_metric([], snap.compensated)
        yield compensated
        yield GaugeMetricFamily(
            "bookiji_commit_in_progress_oldest_seconds",
            "Seconds since the oldest reservation still in COMMIT_IN_PROGRESS entered it "
            "(0 when none is)",
            value=snap.oldest_commit_seconds,
        )
        yield _labelled(
            GaugeMetricFamily(
                "bookiji_calendar_connections", "Calendar connections by status", labels=["status"]
            ),
            snap.calendars,
        )
        yield _labelled(
            GaugeMetricFamily(
                "bookiji_job_last_run_timestamp_seconds",
                "When the last run of each job started, by any daemon or `reconcile --once` "
                "(absent for a job that never ran)",
                labels=["name"],
            ),
            snap.job_last_run,
        )


def _labelled(family: GaugeMetricFamily, values: dict[str, int] | dict[str, float]) -> Metric:
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class Metrics:
    def __init__(self, container: Container) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bookiji_http_requests", "HTTP requests", ["method", "route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "bookiji_http_request_seconds", "HTTP request latency", ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )  # fmt: skip
        # The label is `name`, not `job`: Prometheus sets `job` on every scraped series (the
        # scrape job) and would rename ours to `exported_job`.
        self.job_runs = Counter("bookiji_job_runs", "Job runs", ["name"], registry=self.registry)
        self.job_failures = Counter(
            "bookiji_job_failures", "Job runs that hit errors", ["name"], registry=self.registry
        )
        # What the provider holds that the last money sweep found no reason for; the other
        # jobs fix such money, so one that stays is for a person (BookijiMoneyUnexplained).
        self.money_unexplained = Gauge(
            "bookiji_money_unexplained",
            "Payments at the provider the last money sweep could not explain",
            registry=self.registry,
        )
        self.registry.register(_DatabaseGauges(container))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_job(self, name: str, errors: int, findings: int | None = None) -> None:
        self.job_runs.labels(name).inc()
        if errors:
            self.job_failures.labels(name).inc()
        if name == "money_sweep" and findings is not None:
            self.money_unexplained.set(findings)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
