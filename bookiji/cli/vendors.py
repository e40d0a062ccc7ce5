"""`bookiji vendors`: import from TOML, list, show."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from sqlmodel import col, select

from bookiji.cli.context import state
from bookiji.cli.output import console, emit_json
from bookiji.domain.errors import NotFound
from bookiji.domain.timeutil import format_instant
from bookiji.services.documents import vendor_document
from bookiji.store.models import CalendarConnection
from bookiji.store.uow import UnitOfWork

app = typer.Typer(
    help="Vendors: import them from a TOML file, list and show them.", no_args_is_help=True
)


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Path = typer.Argument(..., metavar="FILE.toml", help="Vendors file."),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
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
        f"{len(report.unchanged)} unchanged, {report.calendars_added} calendars added"
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Every vendor with its timezone, slot length and prices."""
    # Read here rather than through VendorService.all(): its rows come back expired by the
    # unit of work's rollback, and reading them raises DetachedInstanceError.
    with UnitOfWork(state(ctx).container().db, readonly=True) as uow:
        vendors = list(uow.vendors.list())
        uow.session.expunge_all()  # detach them loaded, before the rollback expires them
    if json_output:
        emit_json([vendor_document(v) for v in vendors])
        return
    table = Table(title=f"{len(vendors)} vendors")
    for column in ("id", "name", "timezone", "slot", "buffers", "price", "deposit"):
        table.add_column(column)
    for v in vendors:
        table.add_row(
            v.id,
            v.name,
            v.timezone,
            f"{v.slot_minutes} min / every {v.slot_interval_minutes}",
            f"{v.buffer_before_minutes}+{v.buffer_after_minutes} min",
            f"{v.price} {v.currency}",
            f"{v.deposit} {v.currency}",
        )
    console.print(table)


@app.command("show")
def show(
    ctx: typer.Context,
    vendor_id: str = typer.Argument(..., metavar="ID"),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """One vendor: rules, hours, overrides and calendar connections."""
    # Read here rather than through VendorService.get(), for the reason given in list_().
    with UnitOfWork(state(ctx).container().db, readonly=True) as uow:
        vendor = uow.vendors.get(vendor_id)
        if vendor is None:
            raise NotFound(f"unknown vendor {vendor_id!r}", details={"vendorId": vendor_id})
        calendars = uow.session.exec(
            select(CalendarConnection)
            .where(col(CalendarConnection.vendor_id) == vendor_id)
            .order_by(col(CalendarConnection.created_at))
        ).all()
        uow.session.expunge_all()
    calendar_docs = [
        {
            "id": c.id,
            "provider": c.provider,
            "source": c.source,
            "name": c.name,
            "status": c.status,
            "lastSyncedAt": format_instant(c.last_synced_at),
        }
        for c in calendars
    ]
    if json_output:
        emit_json(vendor_document(vendor, calendar_docs))
        return
    console.print(f"[bold]{vendor.name}[/bold] ({vendor.id}) — {vendor.timezone}")
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
        console.print(f"calendar {c['id']}: {c['provider']} {c['source']} ({c['status']})")
