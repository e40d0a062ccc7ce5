"""`bookiji reconcile --once`: the daemon's jobs, once, for cron."""

from __future__ import annotations

import typer

from bookiji.cli.context import state
from bookiji.cli.output import console, emit_json
from bookiji.domain.errors import ValidationFailed
from bookiji.domain.timeutil import format_instant


def register(app: typer.Typer) -> None:
    @app.command("reconcile")
    def reconcile(
        ctx: typer.Context,
        once: bool = typer.Option(False, "--once", help="Run every job once and exit."),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Expire holds and stages whose deadline passed."""
        if not once:
            raise ValidationFailed(
                "reconcile runs only with --once; 'bookiji daemon' runs it continuously"
            )
        container = state(ctx).container()
        expired = container.reservations.expire_due(
            batch_size=container.settings.reconcile.batch_size
        )
        if json_output:
            emit_json(
                {
                    "jobs": {
                        "expiry": {
                            "processed": len(expired),
                            "reservations": [
                                {
                                    "reservationId": e.reservation_id,
                                    "from": e.from_state,
                                    "to": e.to_state,
                                    "deadline": format_instant(e.deadline),
                                }
                                for e in expired
                            ],
                        }
                    }
                }
            )
            return
        console.print(f"expiry: {len(expired)} reservations moved past their deadline")
        for e in expired:
            console.print(f"  {e.reservation_id}: {e.from_state} -> {e.to_state}")
