"""`bookiji reservations`: create holds and walk them through the workflow."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import typer
from rich.markup import escape

from bookiji.cli.context import instant, state
from bookiji.cli.output import (
    JSON_OPTION,
    attempts,
    console,
    counted,
    emit_json,
    instant_cell,
    listing,
    print_listing,
    state_style,
)
from bookiji.domain.states import ReservationState
from bookiji.domain.timeutil import parse_instant
from bookiji.services.documents import load_reservation_document, reservation_summary
from bookiji.services.reservations import HoldRequest
from bookiji.store.uow import UnitOfWork

app = typer.Typer(
    help="Reservations: hold a slot, confirm, decline, cancel, inspect.", no_args_is_help=True
)

ACTOR = "operator:cli"


def _metadata(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc.msg}", param_hint="--metadata") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--metadata")
    return value


def _print_document(document: dict[str, Any], now: datetime) -> None:
    style = state_style(document["state"])
    console.print(
        f"[bold]{document['reservationId']}[/bold] [{style}]{document['state']}[/{style}]"
    )
    console.print(
        f"vendor {escape(document['vendorId'])}  requester {escape(document['requesterId'])}  "
        f"slot {document['slotStartTime']} -> {document['slotEndTime']}"
    )
    if document["stateDeadline"]:
        deadline = parse_instant(document["stateDeadline"], field="stateDeadline")
        # Expiry is a job: until it runs, a passed deadline still holds the slot.
        passed = (
            " (passed; the daemon or `bookiji reconcile --once` moves it on)"
            if deadline <= now
            else ""
        )
        console.print(f"deadline {instant_cell(deadline)}{passed}")
    payment = document["payment"]
    for label, key in (
        ("vendor deposit", "vendorDeposit"),
        ("requester payment", "requesterPayment"),
    ):
        party = payment[key]
        ref = f", {party['paymentIntentId']}" if party["paymentIntentId"] else ""
        console.print(f"{label}: {party['amount']} {payment['currency']} ({party['state']}{ref})")
    for action in document["compensationActions"]:
        error = f", last error: {escape(action['lastError'])}" if action["lastError"] else ""
        console.print(
            f"compensation {action['id']}: {action['party']} {action['action']} "
            f"{action['status']} after {attempts(action['attempts'])}{error}"
        )
    for note in document["vendorNotifications"]:
        error = f", last error: {escape(note['lastError'])}" if note["lastError"] else ""
        console.print(
            f"vendor asked by {note['channel']}: {note['status']} "
            f"after {attempts(note['attempts'])}{error}"
        )
    if document["cancelNote"]:
        console.print(f"cancel note: {escape(document['cancelNote'])}")
    steps = [
        (
            instant_cell(step["at"]),
            step["from"] or "-",
            step["to"],
            escape(step["actor"]),
            escape(step["reason"]),
        )
        for step in document["stateHistory"]
    ]
    columns = ("at", "from", "to", "actor", "reason")
    print_listing(listing("state history", columns, steps, keys=()))


def _show(ctx: typer.Context, reservation_id: str, json_output: bool) -> None:
    container = state(ctx).container()
    document = load_reservation_document(container.db, reservation_id)
    if json_output:
        emit_json(document)
    else:
        _print_document(document, container.clock.now())


@app.command("create")
def create(
    ctx: typer.Context,
    vendor: str = typer.Option(..., "--vendor", metavar="V", help="Vendor id."),
    start: str = typer.Option(..., "--start", metavar="ISO", help="Slot start, RFC 3339."),
    end: str = typer.Option(..., "--end", metavar="ISO", help="Slot end, RFC 3339."),
    requester: str = typer.Option(..., "--requester", metavar="R", help="Requester id."),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key", metavar="K"),
    metadata: str | None = typer.Option(None, "--metadata", metavar="JSON", help="A JSON object."),
    contact_name: str | None = typer.Option(None, "--contact-name", help="Stored encrypted."),
    contact_email: str | None = typer.Option(None, "--contact-email", help="Stored encrypted."),
    contact_phone: str | None = typer.Option(None, "--contact-phone", help="Stored encrypted."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Hold a slot for a requester and ask the vendor to confirm it (INTENT_CREATED -> HELD
    -> AWAITING_VENDOR_CONFIRMATION)."""
    contact = {
        k: v
        for k, v in (("name", contact_name), ("email", contact_email), ("phone", contact_phone))
        if v is not None
    }
    request = HoldRequest(
        vendor_id=vendor,
        slot_start=instant(start, option="--start"),
        slot_end=instant(end, option="--end"),
        requester_id=requester,
        idempotency_key=idempotency_key,
        metadata=_metadata(metadata),
        contact=contact or None,
    )
    outcome = state(ctx).container().reservations.create_hold(request, actor=ACTOR)
    if not json_output:
        verb = "replayed (same idempotency key)" if outcome.replayed else "held"
        console.print(f"{verb}: {outcome.reservation_id}")
    _show(ctx, outcome.reservation_id, json_output)


@app.command("show")
def show(
    ctx: typer.Context,
    reservation_id: str = typer.Argument(..., metavar="ID"),
    json_output: bool = JSON_OPTION,
) -> None:
    """One reservation: state, deadline, payments, full state history."""
    _show(ctx, reservation_id, json_output)


@app.command("list")
def list_(
    ctx: typer.Context,
    state_filter: str | None = typer.Option(None, "--state", metavar="S", help="Only this state."),
    vendor: str | None = typer.Option(None, "--vendor", metavar="V"),
    limit: int = typer.Option(50, "--limit", metavar="N", min=1, max=10_000),
    json_output: bool = JSON_OPTION,
) -> None:
    """Newest first."""
    if state_filter is not None:
        try:
            state_filter = ReservationState(state_filter.upper()).value
        except ValueError:
            raise typer.BadParameter(
                f"unknown state {state_filter!r}; one of: "
                + ", ".join(s.value for s in ReservationState),
                param_hint="--state",
            ) from None
    container = state(ctx).container()
    with UnitOfWork(container.db, readonly=True) as uow:
        rows = uow.reservations.list(state=state_filter, vendor_id=vendor, limit=limit)
        summaries = [reservation_summary(r) for r in rows]
    if json_output:
        emit_json(summaries)
        return
    cells = [
        (
            r["reservationId"],
            f"[{state_style(r['state'])}]{r['state']}[/]",
            escape(r["vendorId"]),
            escape(r["requesterId"]),
            instant_cell(r["slotStartTime"]),
            instant_cell(r["stateDeadline"], "-"),
        )
        for r in summaries
    ]
    columns = ("id", "state", "vendor", "requester", "slot start", "deadline")
    print_listing(listing(counted(len(summaries), "reservation"), columns, cells))


def _act(
    ctx: typer.Context, reservation_id: str, changed: bool, verb: str, json_output: bool
) -> None:
    if not json_output:
        console.print(
            f"{verb}: {reservation_id}" if changed else f"already {verb}: {reservation_id}"
        )
    _show(ctx, reservation_id, json_output)


@app.command("confirm")
def confirm(
    ctx: typer.Context,
    reservation_id: str = typer.Argument(..., metavar="ID"),
    json_output: bool = JSON_OPTION,
) -> None:
    """Confirm on the vendor's behalf (-> CONFIRMED_BY_VENDOR), then authorize the vendor's
    deposit with its saved payment method when one is on file."""
    changed = state(ctx).container().reservations.confirm(reservation_id, actor=ACTOR)
    _act(ctx, reservation_id, changed, "confirmed", json_output)


@app.command("decline")
def decline(
    ctx: typer.Context,
    reservation_id: str = typer.Argument(..., metavar="ID"),
    json_output: bool = JSON_OPTION,
) -> None:
    """Decline on the vendor's behalf (-> CANCELLED)."""
    changed = state(ctx).container().reservations.decline(reservation_id, actor=ACTOR)
    _act(ctx, reservation_id, changed, "declined", json_output)


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    reservation_id: str = typer.Argument(..., metavar="ID"),
    reason: str | None = typer.Option(
        None,
        "--reason",
        help="Why, in your words: shown as the cancel note, stored encrypted, erased by "
        "`requesters forget` (the state history says `cancelled`).",
    ),
    json_output: bool = JSON_OPTION,
) -> None:
    """Cancel a reservation that is not committing or final (-> CANCELLED)."""
    changed = state(ctx).container().reservations.cancel(reservation_id, actor=ACTOR, note=reason)
    _act(ctx, reservation_id, changed, "cancelled", json_output)


@app.command("authorize")
def authorize(
    ctx: typer.Context,
    reservation_id: str = typer.Argument(..., metavar="ID"),
    party: str = typer.Option(..., "--party", metavar="vendor|requester"),
    payment_method: str | None = typer.Option(
        None, "--payment-method", metavar="PM", help="Card/payment method id (e.g. pm_card_visa)."
    ),
    json_output: bool = JSON_OPTION,
) -> None:
    """Authorize one party's money (manual capture). Once both are in, the commit runs."""
    if party not in ("vendor", "requester"):
        raise typer.BadParameter("must be vendor or requester", param_hint="--party")
    outcome = (
        state(ctx)
        .container()
        .payments.authorize(reservation_id, party, payment_method=payment_method, actor=ACTOR)
    )
    if not json_output:
        console.print(f"{party} money: {outcome.money} ({outcome.intent_id or 'no payment'})")
        if outcome.client_secret:
            console.print(
                "the card needs authentication: hand the client secret to the card holder"
            )
    _show(ctx, reservation_id, json_output)


@app.command("commit")
def commit(
    ctx: typer.Context,
    reservation_id: str = typer.Argument(..., metavar="ID"),
    json_output: bool = JSON_OPTION,
) -> None:
    """Revalidate, capture both authorizations and book (or fail with compensation)."""
    final = state(ctx).container().payments.commit(reservation_id, actor=ACTOR)
    if not json_output:
        console.print(f"commit: {reservation_id} is {final}")
    _show(ctx, reservation_id, json_output)
