"""`bookiji pii new-key|rotate` and `bookiji requesters forget ID`."""

from __future__ import annotations

import typer
from rich.progress import Progress

from bookiji.cli.context import state
from bookiji.cli.output import JSON_OPTION, console, counted, emit_json
from bookiji.store.crypto import keyring, new_key


def register(app: typer.Typer) -> None:
    pii = typer.Typer(help="Encryption of personal data and credentials at rest.")
    requesters = typer.Typer(help="Requesters' personal data.")
    app.add_typer(pii, name="pii")
    app.add_typer(requesters, name="requesters")

    @pii.command("new-key")
    def new_key_command() -> None:
        """Print a new Fernet key. Put it FIRST in BOOKIJI_PII_KEYS or the key file, keep
        the old keys after it, then run `bookiji pii rotate`."""
        typer.echo(new_key())

    @pii.command("rotate")
    def rotate(
        ctx: typer.Context,
        json_output: bool = JSON_OPTION,
    ) -> None:
        """Re-encrypt every stored secret and personal field with the newest key (also seals
        rows written before encryption). Safe to stop and run again."""
        container = state(ctx).container()
        if not keyring().configured:
            raise typer.BadParameter("no PII key is configured (BOOKIJI_PII_KEYS / pii_keys_file)")
        with Progress(console=console, disable=json_output, transient=True) as bar:
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
        if json_output:
            emit_json(
                {
                    "pseudonym": erasure.pseudonym,
                    "reservations": erasure.reservations,
                    "bookings": erasure.bookings,
                    "storedAnswers": erasure.stored_answers,
                }
            )
            return
        console.print(
            f"erased: {counted(len(erasure.reservations), 'reservation')}, "
            f"{counted(erasure.bookings, 'booking')}, "
            f"{counted(erasure.stored_answers, 'stored answer')}; "
            f"the requester is now {erasure.pseudonym}"
        )
