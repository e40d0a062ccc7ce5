"""`bookiji webhooks`: what partners were sent, replaying dead letters, testing endpoints."""

from __future__ import annotations

import typer
from rich.markup import escape

from bookiji.cli.context import state
from bookiji.cli.output import (
    JSON_OPTION,
    console,
    counted,
    emit_json,
    instant_cell,
    listing,
    print_listing,
)
from bookiji.services.webhooks import WebhookService

app = typer.Typer(
    help="Partner webhooks: list deliveries, replay dead letters, send a test event.",
    no_args_is_help=True,
)
STATUS_STYLES = {"delivered": "green", "dead": "red", "pending": "cyan"}


def _service(ctx: typer.Context) -> WebhookService:
    return state(ctx).container().webhooks


@app.command("list")
def list_(
    ctx: typer.Context,
    status: str | None = typer.Option(
        None, "--status", metavar="pending|delivered|dead", help="Only deliveries in this status."
    ),
    partner: str | None = typer.Option(None, "--partner", metavar="P", help="Only this partner."),
    limit: int = typer.Option(100, "--limit", metavar="N", min=1, max=10_000),
    json_output: bool = JSON_OPTION,
) -> None:
    """Webhook deliveries, newest event first."""
    deliveries = _service(ctx).list(status=status, partner_id=partner, limit=limit)
    if json_output:
        emit_json([d.document() for d in deliveries])
        return
    rows = []
    for d in deliveries:
        last = d.last_error or (str(d.last_status) if d.last_status is not None else "")
        style = STATUS_STYLES.get(d.status, "")
        rows.append(
            (
                d.event_id,
                d.event_type or "",
                escape(d.partner_id),
                d.reservation_id or "",
                f"[{style}]{d.status}[/{style}]" if style else d.status,
                str(d.attempts),
                f"after {d.waiting_for}" if d.waiting_for else instant_cell(d.next_attempt_at),
                escape(last),
            )
        )
    columns = ("event", "type", "partner", "reservation", "status", "attempts", "next", "last")
    # The ids are what an operator copies: the event into `replay`, the reservation into
    # `reservations show`.
    table = listing(
        counted(len(deliveries), "webhook delivery", "webhook deliveries"),
        columns,
        rows,
        keys=("event", "reservation"),
    )
    print_listing(table)


@app.command("replay")
def replay(
    ctx: typer.Context,
    event_id: str = typer.Argument(..., metavar="EVENT_ID"),
    partner: str | None = typer.Option(None, "--partner", metavar="P", help="Only this partner."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Send an event again (a dead letter, or one already delivered): it goes back to
    pending with its attempts reset and is sent on the next delivery run, under the same
    webhook-id so the receiver can tell it is the same event. A row still pending (waiting
    out its backoff, or in flight) is left as it was, and says when it is next tried."""
    deliveries = _service(ctx).replay(event_id, partner_id=partner)
    if json_output:
        emit_json([d.document() for d in deliveries])
        return
    for d in deliveries:
        if d.attempts:  # it was pending already, in its backoff: replay leaves such rows be
            when = instant_cell(d.next_attempt_at, "not scheduled")
            console.print(
                f"{d.event_id} to {d.partner_id}: already pending, left as it was "
                f"(attempt {d.attempts + 1} at {when})"
            )
        else:
            console.print(f"{d.event_id} to {d.partner_id}: {d.status}, due now")


@app.command("test")
def test(
    ctx: typer.Context,
    partner: str = typer.Option(..., "--partner", metavar="P", help="Partner id."),
    json_output: bool = JSON_OPTION,
) -> None:
    """POST a signed `webhook.test` event to the partner's endpoint now (nothing is stored).

    Exits 1 unless the endpoint answered 2xx."""
    status = _service(ctx).send_test(partner)
    ok = 200 <= status < 300
    if json_output:
        emit_json({"partnerId": partner, "status": status, "ok": ok})
    else:
        console.print(f"{partner}: endpoint answered HTTP {status}" + ("" if ok else " (not 2xx)"))
    if not ok:
        raise typer.Exit(1)
