"""`bookiji pii new-key|check|begin-rotation|rotate` and `bookiji requesters forget ID`."""

from __future__ import annotations

import typer
from rich.progress import Progress

from bookiji.cli.context import state
from bookiji.cli.output import (
    JSON_OPTION,
    console,
    counted,
    emit_json,
    err_console,
    shows_progress,
)
from bookiji.store.crypto import keyring, new_key


def register(app: typer.Typer) -> None:
    pii = typer.Typer(help="Encryption of personal data and credentials at rest.")
    requesters = typer.Typer(help="Requesters' personal data.")
    app.add_typer(pii, name="pii")
    app.add_typer(requesters, name="requesters")

    @pii.command("new-key")
    def new_key_command(json_output: bool = JSON_OPTION) -> None:
        """Print a new Fernet key. To rotate to it: list it after the old keys and restart
        the daemons, then list it FIRST (old keys after it) and run `bookiji pii
        begin-rotation`, restart the daemons, run `bookiji pii rotate`, drop the old keys."""
        if json_output:
            emit_json({"key": new_key()})
            return
        typer.echo(new_key())

    @pii.command("check")
    def check(ctx: typer.Context, json_output: bool = JSON_OPTION) -> None:
        """Check that the configured keys open the stored data (every key-check record and
        a sample of stored values, and that the newest key is recorded) without writing
        anything: run it with the new settings before a deploy. A daemon refuses to start
        where this fails."""
        result = state(ctx).container(check_keys=False).pii.check_keys(register=False)
        if json_output:
            emit_json({"ok": True, "keyRecords": result.records, "sampledValues": result.sampled})
            return
        if not result.records and not result.sampled:
            console.print("nothing is encrypted in this database yet: any key will do")
            return
        console.print(
            f"the PII keys open the stored data ({counted(result.records, 'key record')}, "
            f"{counted(result.sampled, 'sampled value')})"
        )

    @pii.command("begin-rotation")
    def begin_rotation(ctx: typer.Context, json_output: bool = JSON_OPTION) -> None:
        """Record the first listed key (a new one, from `pii new-key`) as the key that seals
        from now on: the only way to start sealing with a new key (a daemon or command
        started with an unrecorded key first is refused). Run it with the new key first and
        the old keys after it; then restart every daemon with that list and run `bookiji
        pii rotate`. Refused unless the keys open the stored data."""
        container = state(ctx).container(check_keys=False)
        if not keyring().configured:
            raise typer.BadParameter("no PII key is configured (BOOKIJI_PII_KEYS / pii_keys_file)")
        result = container.pii.begin_rotation()
        if json_output:
            emit_json({"registered": result.registered, "keyRecords": result.records})
            return
        if not result.registered:
            console.print("the newest key is already recorded in this database: nothing to do")
            return
        console.print(
            "the newest key is recorded: restart every daemon with this key list (it now "
            "seals new data), then run `bookiji pii rotate`"
        )

    @pii.command("rotate")
    def rotate(
        ctx: typer.Context,
        json_output: bool = JSON_OPTION,
    ) -> None:
        """Re-encrypt every stored secret and personal field with the newest key (also seals
        rows written before encryption), then retire the old keys' records. Safe to stop and
        run again. Run it after `pii begin-rotation`, once every daemon runs with the new
        key first: refused while the newest key is not recorded."""
        container = state(ctx).container()
        if not keyring().configured:
            raise typer.BadParameter("no PII key is configured (BOOKIJI_PII_KEYS / pii_keys_file)")
        # On stderr like every other bar: stdout is the report alone.
        shown = shows_progress(json_output=json_output)
        with Progress(console=err_console, disable=not shown, transient=True) as bar:
            task = bar.add_task("re-encrypting", total=None)
            result = container.pii.rotate(
                lambda done, total: bar.update(task, completed=done, total=total)
            )
        if json_output:
            emit_json({"examined": result.examined, "resealed": result.resealed})
            return
        changed = sum(result.resealed.values())
        console.print(f"{result.examined} stored values examined; {changed} re-encrypted")
        for column, count in result.resealed.items():
            if count:
                console.print(f"  {column}: {count}")

    @requesters.command("forget")
    def forget(
        ctx: typer.Context,
        requester_id: str = typer.Argument(..., metavar="REQUESTER_ID"),
        partner: str | None = typer.Option(None, "--partner", help="Only this partner's."),
        yes: bool = typer.Option(False, "--yes", help="Do it without asking."),
        json_output: bool = JSON_OPTION,
    ) -> None:
        """Erase a requester's personal data: contact details, metadata and their id (replaced
        by a pseudonym). Amounts, payment references, states and the transition log stay."""
        container = state(ctx).container()
        if not yes:
            if json_output:
                raise typer.BadParameter("--json needs --yes (no prompt)", param_hint="--yes")
            typer.confirm(
                "Erase this requester's personal data from every matching reservation? "
                "This cannot be undone.",
                abort=True,
            )
        erasure = container.pii.forget(requester_id, partner_id=partner)
        if erasure.wal_truncated is False:
            err_console.print(
                "[bold yellow]warning:[/bold yellow] another connection was reading, so the "
                "SQLite write-ahead log (the database file's -wal) still holds the erased "
                "values' old copies: it is emptied when the last connection closes (every "
                "process using the database stopped) or by the next erasure",
                markup=True,
            )
        if json_output:
            emit_json(
                {
                    "pseudonym": erasure.pseudonym,
                    "reservations": erasure.reservations,
                    "bookings": erasure.bookings,
                    "storedAnswers": erasure.stored_answers,
                    "walTruncated": erasure.wal_truncated,
                }
            )
            return
        console.print(
            f"erased: {counted(len(erasure.reservations), 'reservation')}, "
            f"{counted(erasure.bookings, 'booking')}, "
            f"{counted(erasure.stored_answers, 'stored answer')}; "
            f"the requester is now {erasure.pseudonym}"
        )
