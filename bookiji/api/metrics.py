"""Prometheus metrics: request counts and latency by route and status, job runs and
failures, and gauges read from the database at scrape time (holds by state, transitions by
state, webhook backlog)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlmodel import col, func, select

from bookiji.store.models import ReservationTransition, WebhookDelivery
from bookiji.store.uow import UnitOfWork

if TYPE_CHECKING:
    from bookiji.bootstrap import Container


class _DatabaseGauges(Collector):
    def __init__(self, container: Container) -> None:
        self.container = container

    def collect(self) -> Iterator[GaugeMetricFamily]:
        holds = GaugeMetricFamily("bookiji_reservations", "Reservations by state", labels=["state"])
        moves = GaugeMetricFamily(
            "bookiji_transitions", "State transitions recorded, by target state", labels=["state"]
        )
        backlog = GaugeMetricFamily(
            "bookiji_webhook_backlog", "Webhook deliveries by status", labels=["status"]
        )
        try:
            with UnitOfWork(self.container.db, readonly=True) as uow:
                for state, count in uow.reservations.count_by_state().items():
                    holds.add_metric([state], count)
                for state, count in uow.session.exec(
                    select(ReservationTransition.to_state, func.count()).group_by(
                        col(ReservationTransition.to_state)
                    )
                ).all():
                    moves.add_metric([state], count)
                for status, count in uow.session.exec(
                    select(WebhookDelivery.status, func.count()).group_by(
                        col(WebhookDelivery.status)
                    )
                ).all():
                    backlog.add_metric([status], count)
        except Exception:  # noqa: S110 - a scrape must not fail with the database
            pass
        yield holds
        yield moves
        yield backlog


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
        self.job_runs = Counter("bookiji_job_runs", "Job runs", ["job"], registry=self.registry)
        self.job_failures = Counter(
            "bookiji_job_failures", "Job runs that hit errors", ["job"], registry=self.registry
        )
        self.registry.register(_DatabaseGauges(container))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_job(self, name: str, errors: int) -> None:
        self.job_runs.labels(name).inc()
        if errors:
            self.job_failures.labels(name).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
