"""`bookiji calendars`: connect vendors' calendars, list them, sync busy times, disconnect."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from bookiji.cli.context import state
from bookiji.cli.output import (
    JSON_OPTION,
    console,
    counted,
    emit_json,
    err_console,
    error_line,
    instant_cell,
    listing,
    print_listing,
    step_progress,
)
from bookiji.domain.errors import ValidationFailed
from bookiji.domain.timeutil import format_instant
from bookiji.integrations.calendar_sources import stored_json
from bookiji.integrations.ics import shown_source
from bookiji.services.calendars import SyncResult
from bookiji.store.models import CalendarConnection

app = typer.Typer(
    help="Vendors' calendars: connect (OAuth), list, sync busy times, disconnect.",
    no_args_is_help=True,
)


def _document(c: CalendarConnection) -> dict[str, Any]:
    return {
        "id": c.id,
        "vendorId": c.vendor_id,
        "provider": c.provider,
        "source": shown_source(c.source),
        "name": c.name,
        "status": c.status,
        "lastSyncedAt": format_instant(c.last_synced_at),
        "lastAttemptAt": format_instant(c.last_attempt_at),
        "lastError": c.last_error,
        "hasCredentials": bool(c.credentials_ref),
    }


def _result(r: SyncResult) -> dict[str, Any]:
    return {
        "connectionId": r.connection_id,
        "vendorId": r.vendor_id,
        "provider": r.provider,
        "status": r.status,
        "busyPeriods": r.busy_periods,
        "error": r.error,
        "retryable": r.retryable,
    }


@app.command("list")
def list_(
    ctx: typer.Context,
    vendor: str | None = typer.Option(None, "--vendor", metavar="V"),
    json_output: bool = JSON_OPTION,
) -> None:
    """Calendar connections with their sync status."""
    container = state(ctx).container()
    if vendor is not None:  # a typo is not "0 calendar connections"
        container.vendors.get(vendor)
    connections = container.calendars.connections(vendor)
    if json_output:
        emit_json([_document(c) for c in connections])
        return
    rows = [
        (
            escape(c.id),
            escape(c.vendor_id),
            c.provider,
            escape(shown_source(c.source)),
            c.status,
            instant_cell(c.last_synced_at, "never"),
            escape(c.last_error or ""),
        )
        for c in connections
    ]
    columns = ("id", "vendor", "provider", "source", "status", "last synced", "last error")
    print_listing(listing(counted(len(connections), "calendar connection"), columns, rows))


@app.command("sync")
def sync(
    ctx: typer.Context,
    vendor: str | None = typer.Option(None, "--vendor", metavar="V"),
    json_output: bool = JSON_OPTION,
) -> None:
    """Read every connected calendar now and refresh the busy-time cache.

    Exits 1 when any calendar failed (its last good data is kept)."""
    container = state(ctx).container()
    service = container.calendars
    if vendor is not None:  # a typo is not "0 calendars synced"
        container.vendors.get(vendor)
    connections = service.connections(vendor)
    results: list[SyncResult] = []
    with step_progress("syncing calendars", json_output=json_output) as progress:
        task = progress.add_task("sync", total=len(connections))
        for connection in connections:
            results.append(service.sync_one(connection.id))
            progress.advance(task)
    if json_output:
        emit_json([_result(r) for r in results])
    else:
        for r in results:
            if r.status == "ok":
                console.print(
                    f"{r.connection_id} ({r.provider}, {r.vendor_id}): ok, "
                    f"{r.busy_periods} busy periods"
                )
            else:
                console.print(
                    f"{r.connection_id} ({r.provider}, {r.vendor_id}): "
                    f"[red]{r.status}[/red]: {escape(r.error or '')}"
                )
        failed = sum(r.status != "ok" for r in results)
        console.print(
            f"{counted(len(results) - failed, 'calendar')} synced"
            + (f", [red]{failed} failed[/red] (their last good data is kept)" if failed else "")
        )
    failures = sum(r.status != "ok" for r in results)
    if failures:
        error_line(f"{counted(failures, 'calendar')} failed to sync; their last good data is kept")
        raise typer.Exit(1)


@app.command("disconnect")
def disconnect(
    ctx: typer.Context,
    connection_id: str = typer.Argument(..., metavar="ID"),
    json_output: bool = JSON_OPTION,
) -> None:
    """Remove a connection and its cached busy times."""
    removed = state(ctx).container().calendars.disconnect(connection_id)
    if json_output:
        emit_json({"disconnected": removed.id, "vendorId": removed.vendor_id})
    else:
        console.print(f"disconnected {removed.id} ({removed.provider}) from {removed.vendor_id}")


@app.command("connect")
def connect(
    ctx: typer.Context,
    provider: str = typer.Argument(..., metavar="google|outlook"),
    vendor: str = typer.Option(..., "--vendor", metavar="V"),
    calendar: str | None = typer.Option(
        None,
        "--calendar",
        help="Google calendar id (default primary) or Outlook mailbox (default: the account).",
    ),
    name: str | None = typer.Option(
        None, "--name", help="The calendar's label; partners see it in availability answers."
    ),
    port: int = typer.Option(
        0, "--port", min=0, max=65535, help="Loopback port for the redirect (0: any)."
    ),
    no_browser: bool = typer.Option(False, "--no-browser", help="Only print the consent URL."),
    timeout: float = typer.Option(
        300.0, "--timeout", min=1, max=3600, help="Seconds to wait for consent (1-3600)."
    ),
    replace: bool = typer.Option(
        False,
        "--replace",
        help="Replace the credentials of this calendar's existing connection (another account).",
    ),
    json_output: bool = JSON_OPTION,
) -> None:
    """Let a vendor grant read access to their calendar (OAuth authorization code).

    Prints the consent URL, waits for the redirect on 127.0.0.1 and stores the refresh
    token with the connection. The token is never printed. A calendar already connected
    with credentials is refused unless --replace."""
    cli = state(ctx)
    container = cli.container()
    settings = container.settings
    # Before the consent: a vendor who granted access for nothing would have to do it again.
    container.vendors.get(vendor)
    known = calendar or ("primary" if provider == "google" else None)
    if known is not None and not replace:
        container.calendars.refuse_if_connected(vendor, provider, known)

    def show(url: str) -> None:
        err_console.print("Open this URL to grant access:", markup=False)
        if json_output:  # stdout is the JSON document alone, for the script reading it
            print(url, file=sys.stderr, flush=True)  # noqa: T201
        else:
            print(url, flush=True)  # noqa: T201 - the URL is the output a person needs

    if provider == "google":
        from bookiji.integrations.google_oauth import run_google_consent

        google = settings.calendars.google
        if not google.client_secrets_file:
            raise ValidationFailed("set calendars.google.client_secrets_file (an OAuth client)")
        try:
            client = json.loads(Path(google.client_secrets_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise ValidationFailed(
                f"cannot read the OAuth client file {google.client_secrets_file}"
            ) from None
        inner = (
            client.get("installed") or client.get("web") or client
            if isinstance(client, dict)
            else None
        )
        if not isinstance(inner, dict):
            raise ValidationFailed(
                f"the OAuth client file {google.client_secrets_file} is not a Google client "
                'secrets file (a JSON object with an "installed" or "web" object)'
            )
        if google.auth_uri:
            inner["auth_uri"] = google.auth_uri
        if google.token_uri:
            inner["token_uri"] = google.token_uri
        info = run_google_consent(
            {"installed": inner},
            open_browser=not no_browser,
            on_url=show,
            port=port,
            timeout=timeout,
        )
        source = calendar or "primary"
    elif provider == "outlook":
        from bookiji.integrations.outlook_calendar import run_outlook_consent

        outlook = settings.calendars.outlook
        if not outlook.tenant_id or not outlook.client_id:
            raise ValidationFailed("set calendars.outlook.tenant_id and client_id")
        info = run_outlook_consent(
            tenant_id=outlook.tenant_id,
            client_id=outlook.client_id,
            client_secret=outlook.client_secret,
            authority_base=outlook.authority_base,
            on_url=show,
            port=port,
            timeout=timeout,
            verify=outlook.ca_bundle or True,
        )
        # getSchedule names the mailbox even for the signed-in user: use the consenting
        # account's address unless another mailbox the user may read was asked for.
        source = calendar or str((info.get("account") or {}).get("username") or "me")
    else:
        raise ValidationFailed(f"connect supports google and outlook, not {provider!r}")
    connection = container.calendars.connect(
        vendor, provider, source, name=name, credentials_ref=stored_json(info), replace=replace
    )
    if json_output:
        emit_json(_document(connection))
    else:
        console.print(f"connected {connection.id}: {provider} {source} for {vendor}")
