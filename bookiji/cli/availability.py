"""`bookiji availability`: bookable slots of a vendor, or why an instant is not bookable."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import typer
from rich.markup import escape
from rich.table import Table

from bookiji.cli.context import instant, state
from bookiji.cli.output import console, emit_json, instant_cell, json_option, print_listing
from bookiji.domain.errors import ValidationFailed


def register(app: typer.Typer) -> None:
    @app.command("availability")
    def availability(
        ctx: typer.Context,
        vendor: str = typer.Argument(..., metavar="VENDOR"),
        start: str | None = typer.Option(None, "--start", metavar="ISO", help="Window start."),
        end: str | None = typer.Option(None, "--end", metavar="ISO", help="Window end."),
        slot_minutes: int | None = typer.Option(
            None, "--slot-minutes", metavar="N", help="Slot length (default: the vendor's)."
        ),
        explain_at: str | None = typer.Option(
            None,
            "--explain",
            metavar="AT",
            help="Explain whether a slot starting at AT is bookable.",
        ),
        json_output: bool = json_option("The partner API document."),
    ) -> None:
        """Bookable slots in [--start, --end], grouped by the vendor's local day."""
        service = state(ctx).container().availability
        if explain_at is not None:
            if start is not None or end is not None:  # which did the operator mean?
                raise ValidationFailed(
                    "--explain AT asks about one instant: leave out --start/--end"
                )
            at = instant(explain_at, option="--explain")
            verdict = service.explain(vendor, at, slot_minutes=slot_minutes)
            if json_output:
                emit_json(verdict)
            else:
                _print_explanation(verdict)
            return
        if start is None or end is None:
            raise ValidationFailed("--start and --end are required (or use --explain AT)")
        document = service.availability(
            vendor,
            instant(start, option="--start"),
            instant(end, option="--end"),
            slot_minutes=slot_minutes,
        )
        if json_output:
            emit_json(document)
        else:
            _print_slots(document)


def _print_explanation(verdict: dict[str, Any]) -> None:
    zone = ZoneInfo(verdict["timezone"])
    local = datetime.fromisoformat(verdict["startTime"]).astimezone(zone)
    head = f"{verdict['vendorId']} {verdict['startTime']} ({local:%a %Y-%m-%d %H:%M} local)"
    if verdict["bookable"]:
        console.print(f"[green]bookable[/green]: {escape(head)}")
        return
    console.print(f"[red]not bookable[/red]: {escape(head)}")
    for reason in verdict["reasons"]:
        console.print(f"  - {escape(reason['message'])} [dim]({reason['rule']})[/dim]")


def _print_slots(document: dict[str, Any]) -> None:
    zone = ZoneInfo(document["timezone"])
    days: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for slot in document["slots"]:
        local = datetime.fromisoformat(slot["startTime"]).astimezone(zone)
        days[local.strftime("%a %Y-%m-%d")].append(
            (local.strftime("%H:%M"), slot.get("confidence", 1.0))
        )
    cached = " (cached)" if document["cached"] else ""
    table = Table(
        title=f"{document['vendorId']}: {len(document['slots'])} slots of "
        f"{document['slotDuration']} min{cached}"
    )
    table.add_column(f"day ({document['timezone']})")
    table.add_column("slots", justify="right")
    table.add_column("starts (local)")
    table.add_column("lowest confidence", justify="right")
    for day, entries in days.items():
        table.add_row(
            day,
            str(len(entries)),
            " ".join(t for t, _ in entries),
            f"{min(c for _, c in entries):.2f}",
        )
    print_listing(table)
    if document["slots"]:
        console.print("reasons: " + "; ".join(escape(r) for r in document["slots"][0]["reasons"]))
    for source in document["sources"]:
        console.print(
            f"calendar {escape(source['calendar'])}: {source['status']}, "
            f"fetched {instant_cell(source['fetchedAt'], 'never')}"
        )
