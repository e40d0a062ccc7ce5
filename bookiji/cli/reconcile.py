"""`bookiji reconcile --once` and `bookiji audit`: the daemon's jobs once, for cron, and the
invariants check."""

from __future__ import annotations

import typer
from rich.markup import escape

from bookiji.cli.context import state
from bookiji.cli.output import JSON_OPTION, console, counted, emit_json, error_line, step_progress
from bookiji.daemon.jobs import job_runner
from bookiji.domain.errors import ValidationFailed
from bookiji.services.audit import audit as run_audit
from bookiji.services.reconcile import JobReport


def register(app: typer.Typer) -> None:
    @app.command("reconcile")
    def reconcile(
        ctx: typer.Context,
        once: bool = typer.Option(False, "--once", help="Run every job once and exit."),
        json_output: bool = JSON_OPTION,
    ) -> None:
        """Expire passed deadlines, finish or unwind stuck commits, release stale
        authorizations, retry compensations, and flag unexplained money.

        Exits 1 when a job hit errors (they are listed)."""
        if not once:
            raise ValidationFailed(
                "reconcile runs only with --once; 'bookiji daemon' runs it continuously"
            )
        runner = job_runner(state(ctx).container())
        outcome: dict[str, JobReport | None] = {}
        # A round after an outage can take minutes (stuck commits, calendars, webhooks):
        # each job is a step, on stderr, so stdout stays the report.
        with step_progress("reconciling: {task.description}", json_output=json_output) as progress:
            task = progress.add_task("", total=len(runner.jobs))
            for name in runner.jobs:
                progress.update(task, description=name)
                outcome[name] = runner.run(name)
                progress.advance(task)
        reports = [r for r in outcome.values() if r is not None]
        skipped = [name for name, r in outcome.items() if r is None]
        failed = any(r.errors for r in reports)
        if json_output:
            emit_json(
                {
                    "jobs": {r.name: r.document() for r in reports},
                    "skipped": skipped,
                    "ok": not failed,
                }
            )
        else:
            for name in skipped:
                console.print(f"{name}: skipped (another worker holds it)")
            for report in reports:
                console.print(f"{report.name}: {report.processed} processed")
                for item in report.items:
                    console.print("  " + escape(", ".join(f"{k}={v}" for k, v in item.items())))
                for error in report.errors:
                    console.print(f"  [red]error[/red] {escape(error)}")
        if failed:
            errors = sum(len(r.errors) for r in reports)
            error_line(f"reconcile: {counted(errors, 'error')} (listed above); the jobs retry them")
            raise typer.Exit(1)

    @app.command("audit")
    def audit(
        ctx: typer.Context,
        provider: bool = typer.Option(
            True, "--provider/--no-provider", help="Also check each payment at the provider."
        ),
        json_output: bool = JSON_OPTION,
    ) -> None:
        """Check the invariants (no overlaps, logs replay, money only where allowed).

        Exits 1 on any breach."""
        container = state(ctx).container()
        breaches = run_audit(container.db, container.gateway if provider else None)
        if json_output:
            emit_json(
                {
                    "clean": not breaches,
                    "breaches": [
                        {"invariant": b.invariant, "reservationId": b.reservation_id,
                         "message": b.message}
                        for b in breaches
                    ],
                }
            )  # fmt: skip
        elif breaches:
            for b in breaches:
                console.print(f"[red]{b.invariant}[/red] {b.reservation_id}: {escape(b.message)}")
        else:
            console.print("[green]audit clean[/green]: every invariant holds")
        if breaches:
            error_line(f"audit: {counted(len(breaches), 'invariant breach', 'invariant breaches')}")
            raise typer.Exit(1)
