"""The daemon's jobs by name, and the runner that claims each before running it (shared with
`bookiji reconcile --once`, so cron and daemons never run the same job at once)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta

from bookiji.bootstrap import Container
from bookiji.services.jobs import JobRunner
from bookiji.services.reconcile import JobReport


def all_jobs(container: Container) -> dict[str, Callable[[], JobReport]]:
    """Every job the daemon runs, by name (the names of `[daemon.jobs]`)."""
    jobs = dict(container.reconciler.jobs())

    def calendar_sync() -> JobReport:
        report = JobReport("calendar_sync")
        for result in container.calendars.sync():
            report.add(connectionId=result.connection_id, status=result.status)
            if result.error:
                report.errors.append(f"{result.connection_id}: {result.error}")
        return report

    def webhooks() -> JobReport:
        report = JobReport("webhooks")
        forgotten = container.apikeys.forget_replaced_webhook_secrets()
        if forgotten:
            report.add(replacedWebhookSecretsErased=forgotten)
        container.webhooks.fan_out()
        for result in container.webhooks.deliver_due():
            report.add(
                eventId=result.event_id,
                reservationId=result.reservation_id,
                partnerId=result.partner_id,
                status=result.status,
            )
            # A partner's endpoint failing is not the job failing: it is retried, and listed
            # by `bookiji webhooks list --status pending|dead`.
        return report

    jobs["calendar_sync"] = calendar_sync
    jobs["webhooks"] = webhooks
    return jobs


def job_runner(container: Container, *, owner: str | None = None) -> JobRunner:
    return JobRunner(
        container.db,
        container.clock,
        all_jobs(container),
        owner=owner or f"{socket.gethostname()}:{os.getpid()}",
        lease=timedelta(seconds=container.settings.daemon.job_lease_seconds),
    )
