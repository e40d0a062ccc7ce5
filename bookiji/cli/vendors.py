"""`bookiji vendors`: import from TOML, list, show."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from bookiji.cli.context import state
from bookiji.cli.output import JSON_OPTION, console, counted, emit_json, listing, print_listing
from bookiji.domain.timeutil import format_instant
from bookiji.integrations.ics import shown_source
from bookiji.services.documents import vendor_document

app = typer.Typer(
    help="Vendors: import them from a TOML file, list and show them.", no_args_is_help=True
)


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Path = typer.Argument(..., metavar="FILE.toml", help="Vendors file."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Create or update vendors by id. An invalid file imports nothing."""
    report = state(ctx).container().vendors.import_file(file)
    if json_output:
        emit_json(
            {
                "created": report.created,
                "updated": report.updated,
                "unchanged": report.unchanged,
                "calendarsAdded": report.calendars_added,
            }
        )
        return
    console.print(
        f"imported {file}: {len(report.created)} created, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged, {counted(report.calendars_added, 'calendar')} added"
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    json_output: bool = JSON_OPTION,
) -> None:
    """Every vendor with its timezone, slot length and prices."""
    vendors = state(ctx).container().vendors.all()
    if json_output:
        emit_json([vendor_document(v) for v in vendors])
        return
    rows = [
        (
            escape(v.id),
            escape(v.name),
            v.timezone,
            f"{v.slot_minutes} min / every {v.slot_interval_minutes}",
            f"{v.buffer_before_minutes}+{v.buffer_after_minutes} min",
            f"{v.price} {v.currency}",
            f"{v.deposit} {v.currency}",
        )
        for v in vendors
    ]
    columns = ("id", "name", "timezone", "slot", "buffers", "price", "deposit")
    print_listing(listing(counted(len(vendors), "vendor"), columns, rows))


@app.command("show")
def show(
    ctx: typer.Context,
    vendor_id: str = typer.Argument(..., metavar="ID"),
    json_output: bool = JSON_OPTION,
) -> None:
    """One vendor: rules, hours, overrides and calendar connections."""
    vendor, calendars = state(ctx).container().vendors.get(vendor_id)
    calendar_docs = [
        {
            "id": c.id,
            "provider": c.provider,
            "source": shown_source(c.source),
            "name": c.name,
            "status": c.status,
            "lastSyncedAt": format_instant(c.last_synced_at),
        }
        for c in calendars
    ]
    if json_output:
        emit_json(vendor_document(vendor, calendar_docs))
        return
    console.print(f"[bold]{escape(vendor.name)}[/bold] ({vendor.id}) — {vendor.timezone}")
    console.print(
        f"slots {vendor.slot_minutes} min every {vendor.slot_interval_minutes} min; "
        f"buffers {vendor.buffer_before_minutes} before / {vendor.buffer_after_minutes} after; "
        f"notice {vendor.min_notice_minutes} min; horizon {vendor.max_advance_days} days"
    )
    console.print(
        f"price {vendor.price} {vendor.currency}; deposit {vendor.deposit} {vendor.currency}"
    )
    hours = Table(title="weekly hours")
    hours.add_column("day")
    hours.add_column("open")
    for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"):
        hours.add_row(day, ", ".join(vendor.hours.get(day, [])) or "closed")
    console.print(hours)
    for override in vendor.overrides:
        ranges = override.get("hours") or []
        console.print(f"override {override['date']}: {', '.join(ranges) or 'closed'}")
    for c in calendar_docs:
        console.print(
            f"calendar {c['id']}: {c['provider']} {escape(str(c['source']))} ({c['status']})"
        )
