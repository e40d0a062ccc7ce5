"""`bookiji compensate ID`: unwind a reservation an operator judges stuck."""

from __future__ import annotations

import typer

from bookiji.cli.context import state
from bookiji.cli.output import JSON_OPTION, attempts, console, emit_json
from bookiji.services.documents import load_reservation_document


def register(app: typer.Typer) -> None:
    @app.command("compensate")
    def compensate(
        ctx: typer.Context,
        reservation_id: str = typer.Argument(..., metavar="ID"),
        yes: bool = typer.Option(False, "--yes", help="Do it without asking."),
        refund: bool = typer.Option(
            False, "--refund", help="Also refund a COMMITTED reservation (both parties)."
        ),
        json_output: bool = JSON_OPTION,
    ) -> None:
        """Release every authorization and refund every capture of a reservation.

        Shows what it will do and asks first (unless --yes); safe to run twice. A COMMITTED
        reservation is refused unless --refund is given."""
        container = state(ctx).container()
        payments = container.payments
        plan = payments.compensation_preview(reservation_id, refund=refund)
        if not json_output:
            if not plan:
                console.print(
                    "no money to release or refund; the reservation is failed if not final"
                )
            for step in plan:
                console.print(
                    f"will {step['action'].replace('_', ' ')} for the {step['party']} "
                    f"({step['paymentIntentId'] or 'no provider payment'})"
                )
        if not yes:
            if json_output:
                raise typer.BadParameter("--json needs --yes (no prompt)", param_hint="--yes")
            typer.confirm("Proceed?", abort=True)
        payments.force_compensate(reservation_id, refund=refund, actor="operator:cli")
        document = load_reservation_document(container.db, reservation_id)
        if json_output:
            emit_json({"plan": plan, "reservation": document})
            return
        for action in document["compensationActions"]:
            console.print(
                f"{action['party']} {action['action']}: {action['status']} "
                f"({attempts(action['attempts'])})"
            )
        console.print(f"{reservation_id} is {document['state']}")
