"""`bookiji apikeys`: issue partner API keys (shown once), list, rotate with overlap, revoke."""

from __future__ import annotations

import re
from datetime import timedelta
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
    instant_cell,
    listing,
    print_listing,
)
from bookiji.domain.timeutil import format_instant
from bookiji.services.apikeys import SCOPES, ApiKeyService, key_status
from bookiji.store.models import PartnerApiKey

app = typer.Typer(
    help="Partner API keys: create (shown once), list, rotate with overlap, revoke.",
    no_args_is_help=True,
)
SHOWN_ONCE = "this is the only time the API key is shown (only a hash is stored); keep it safe now."

_DURATION = re.compile(r"\s*(\d+)\s*([dhms])\s*")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
#: A key's lifetime, and how long a rotated key keeps working: beyond these a mistyped
#: duration (or one past the calendar's end) is refused, not stored as "practically never".
MAX_EXPIRY_DAYS = 3650
MAX_OVERLAP_DAYS = 365


def parse_duration(
    value: str, *, option: str, max_days: int, allow_zero: bool = False
) -> timedelta:
    """`90d`, `24h`, `30m`, `45s`, up to `max_days` (and `0`, which needs no unit, where zero
    is allowed); anything else is a usage error (exit 2)."""
    if allow_zero and value.strip() == "0":
        return timedelta(0)
    match = _DURATION.fullmatch(value)
    if match is None:
        raise typer.BadParameter(
            f"{value!r} is not a duration like 90d, 24h, 30m or 45s", param_hint=option
        )
    amount = int(match.group(1))
    if amount == 0 and not allow_zero:
        raise typer.BadParameter("the duration must be longer than zero", param_hint=option)
    try:
        duration = timedelta(**{_UNITS[match.group(2)]: amount})
    except OverflowError:
        duration = timedelta.max
    if duration > timedelta(days=max_days):
        raise typer.BadParameter(f"{value!r} is too long (at most {max_days}d)", param_hint=option)
    return duration


def apikey_service(ctx: typer.Context) -> ApiKeyService:
    return state(ctx).container().apikeys


def key_document(key: PartnerApiKey, service: ApiKeyService) -> dict[str, Any]:
    """Everything about a key except its secret, which is never stored."""
    return {
        "id": key.id,
        "partnerId": key.partner_id,
        "prefix": key.prefix,
        "scopes": sorted(map(str, key.scopes)),
        "status": key_status(key, service.clock.now()),
        "createdAt": format_instant(key.created_at),
        "expiresAt": format_instant(key.expires_at),
        "revokedAt": format_instant(key.revoked_at),
        "lastUsedAt": format_instant(key.last_used_at),
        "rotatedFrom": key.rotated_from,
    }


def _show_new_key(
    key: PartnerApiKey, plaintext: str, service: ApiKeyService, *, json_output: bool, what: str
) -> None:
    if json_output:
        emit_json({**key_document(key, service), "key": plaintext})
    else:
        expires = instant_cell(key.expires_at, "never")
        console.print(
            f"{what} {key.id} for partner {escape(key.partner_id)} "
            f"(prefix {key.prefix}, scopes {', '.join(sorted(map(str, key.scopes)))}, "
            f"expires {expires})"
        )
        console.print(plaintext, markup=False)
    err_console.print(f"[bold yellow]warning:[/bold yellow] {SHOWN_ONCE}")


@app.command("create")
def create(
    ctx: typer.Context,
    partner: str = typer.Option(..., "--partner", metavar="P", help="Partner id."),
    scopes: str | None = typer.Option(
        None,
        "--scopes",
        metavar="a,b",
        help=f"Comma-separated scopes (default: all of {', '.join(sorted(SCOPES))}).",
    ),
    expires_in: str | None = typer.Option(
        None, "--expires-in", metavar="90d|24h|30m", help="Lifetime (default: no expiry)."
    ),
    json_output: bool = JSON_OPTION,
) -> None:
    """Issue a key and print it once."""
    lifetime = (
        None
        if expires_in is None
        else parse_duration(expires_in, option="--expires-in", max_days=MAX_EXPIRY_DAYS)
    )
    scope_list = None if scopes is None else scopes.split(",")
    service = apikey_service(ctx)
    key, plaintext = service.create_key(partner, scopes=scope_list, expires_in=lifetime)
    _show_new_key(key, plaintext, service, json_output=json_output, what="created key")


@app.command("list")
def list_(
    ctx: typer.Context,
    partner: str | None = typer.Option(None, "--partner", metavar="P"),
    json_output: bool = JSON_OPTION,
) -> None:
    """Keys with prefix, scopes and dates. Secrets are never shown (they are not stored)."""
    service = apikey_service(ctx)
    keys = service.list_keys(partner)
    if json_output:
        emit_json([key_document(k, service) for k in keys])
        return
    rows = []
    for k in keys:
        doc = key_document(k, service)
        rows.append(
            (
                k.id,
                escape(k.partner_id),
                k.prefix,
                doc["status"],
                "\n".join(doc["scopes"]),
                instant_cell(doc["createdAt"]),
                instant_cell(doc["expiresAt"], "never"),
                instant_cell(doc["revokedAt"]),
                instant_cell(doc["lastUsedAt"], "never"),
            )
        )
    columns = ("id", "partner", "prefix", "status", "scopes", "created", "expires", "revoked",
               "last used")  # fmt: skip
    print_listing(listing(counted(len(keys), "API key"), columns, rows))


@app.command("rotate")
def rotate(
    ctx: typer.Context,
    key_id: str = typer.Argument(..., metavar="KEY_ID"),
    overlap: str = typer.Option(
        "24h", "--overlap", metavar="24h", help="How long the old key keeps working."
    ),
    json_output: bool = JSON_OPTION,
) -> None:
    """Issue a successor with the same partner and scopes; the old key expires after the
    overlap."""
    window = parse_duration(overlap, option="--overlap", max_days=MAX_OVERLAP_DAYS, allow_zero=True)
    service = apikey_service(ctx)
    key, plaintext = service.rotate(key_id, overlap=window)
    if not json_output:
        old = service.get_key(key_id)
        console.print(
            f"{key_id} keeps working until {instant_cell(old.expires_at)}"
            if window
            else f"{key_id} no longer works"
        )
    _show_new_key(key, plaintext, service, json_output=json_output, what="rotated into key")


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    key_id: str = typer.Argument(..., metavar="KEY_ID"),
    json_output: bool = JSON_OPTION,
) -> None:
    """Stop a key now; requests with it are refused from the next one on."""
    service = apikey_service(ctx)
    key = service.revoke(key_id)
    if json_output:
        emit_json(key_document(key, service))
    else:
        console.print(f"revoked {key.id} (prefix {key.prefix}) at {instant_cell(key.revoked_at)}")
