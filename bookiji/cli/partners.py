"""`bookiji partners`: add partners (webhook secret shown once), rotate that secret, change
their webhook URL, disable or enable them, list them."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from bookiji.cli.apikeys import MAX_OVERLAP_DAYS, apikey_service, parse_duration
from bookiji.cli.output import (
    JSON_OPTION,
    console,
    counted,
    emit_json,
    err_console,
    instant_cell,
    listing,
    print_listing,
)
from bookiji.domain.errors import ValidationFailed
from bookiji.domain.timeutil import format_instant
from bookiji.services.apikeys import shown_webhook_url
from bookiji.store.models import Partner

app = typer.Typer(
    help="API partners: add, rotate their webhook signing secret, change their webhook URL, "
    "disable or enable, list.",
    no_args_is_help=True,
)
SHOWN_ONCE = (
    "the webhook signing secret is shown only now; give it to the partner over a safe channel."
)


def partner_document(p: Partner) -> dict[str, Any]:
    """A partner without its webhook secret (nor the URL's query, where tokens live)."""
    return {
        "id": p.id,
        "name": p.name,
        "webhookUrl": shown_webhook_url(p.webhook_url),
        "hasWebhookSecret": bool(p.webhook_secret),
        # Until then deliveries are also signed with the secret before the last rotation.
        "previousWebhookSecretUntil": format_instant(p.previous_webhook_secret_until),
        "createdAt": format_instant(p.created_at),
        "disabledAt": format_instant(p.disabled_at),
    }


def _show_secret(partner: Partner, secret: str, *, json_output: bool, what: str) -> None:
    if json_output:
        emit_json({**partner_document(partner), "webhookSecret": secret})
    else:
        console.print(f"{what} {escape(partner.id)}; webhook signing secret:")
        console.print(secret, markup=False)
    err_console.print(f"[bold yellow]warning:[/bold yellow] {SHOWN_ONCE}")


@app.command("add")
def add(
    ctx: typer.Context,
    partner_id: str = typer.Argument(..., metavar="ID", help="Lowercase a-z, 0-9 and '-'."),
    name: str = typer.Option(..., "--name", metavar="N"),
    webhook_url: str | None = typer.Option(None, "--webhook-url", metavar="U"),
    json_output: bool = JSON_OPTION,
) -> None:
    """Add a partner and print its webhook signing secret once."""
    partner, secret = apikey_service(ctx).add_partner(partner_id, name, webhook_url)
    _show_secret(partner, secret, json_output=json_output, what="added partner")


@app.command("rotate-webhook-secret")
def rotate_webhook_secret(
    ctx: typer.Context,
    partner_id: str = typer.Argument(..., metavar="ID"),
    overlap: str = typer.Option(
        "24h",
        "--overlap",
        metavar="24h",
        help="How long deliveries are also signed with the old secret (0: not at all).",
    ),
    json_output: bool = JSON_OPTION,
) -> None:
    """Replace the webhook signing secret; for the overlap, deliveries carry a signature
    with the old secret too, so the partner can switch without rejecting any."""
    window = parse_duration(overlap, option="--overlap", max_days=MAX_OVERLAP_DAYS, allow_zero=True)
    service = apikey_service(ctx)
    secret = service.rotate_webhook_secret(partner_id, overlap=window)
    partner = service.get_partner(partner_id)
    _show_secret(partner, secret, json_output=json_output, what="new secret for")
    if not json_output:
        until = partner.previous_webhook_secret_until
        console.print(
            f"the old secret also signs deliveries until {instant_cell(until)}"
            if until is not None
            else "the old secret no longer signs deliveries"
        )


@app.command("set-webhook-url")
def set_webhook_url(
    ctx: typer.Context,
    partner_id: str = typer.Argument(..., metavar="ID"),
    url: str | None = typer.Argument(None, metavar="URL", help="Omit with --none."),
    none: bool = typer.Option(False, "--none", help="Stop sending this partner webhooks."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Send the partner's webhooks to URL from now on (events not yet delivered included)."""
    if (url is None) == (not none):
        raise ValidationFailed("give a URL, or --none to stop sending webhooks")
    partner = apikey_service(ctx).set_webhook_url(partner_id, None if none else url)
    _show(
        partner, json_output, "webhooks to " + (shown_webhook_url(partner.webhook_url) or "nowhere")
    )


@app.command("disable")
def disable(
    ctx: typer.Context,
    partner_id: str = typer.Argument(..., metavar="ID"),
    json_output: bool = JSON_OPTION,
) -> None:
    """Refuse the partner's keys from the next request on, and hold its webhooks."""
    _show(apikey_service(ctx).set_partner_disabled(partner_id, True), json_output, "disabled")


@app.command("enable")
def enable(
    ctx: typer.Context,
    partner_id: str = typer.Argument(..., metavar="ID"),
    json_output: bool = JSON_OPTION,
) -> None:
    """Accept the partner's keys again; held webhooks are sent."""
    _show(apikey_service(ctx).set_partner_disabled(partner_id, False), json_output, "enabled")


def _show(partner: Partner, json_output: bool, what: str) -> None:
    if json_output:
        emit_json(partner_document(partner))
    else:
        console.print(f"partner {escape(partner.id)}: {escape(what)}")


@app.command("list")
def list_(ctx: typer.Context, json_output: bool = JSON_OPTION) -> None:
    """Every partner with its webhook URL; secrets are never listed."""
    partners = apikey_service(ctx).list_partners()
    if json_output:
        emit_json([partner_document(p) for p in partners])
        return
    rows = [
        (
            escape(p.id),
            escape(p.name),
            escape(shown_webhook_url(p.webhook_url) or ""),
            instant_cell(p.created_at),
            instant_cell(p.disabled_at),
        )
        for p in partners
    ]
    columns = ("id", "name", "webhook url", "created", "disabled")
    print_listing(listing(counted(len(partners), "partner"), columns, rows))
