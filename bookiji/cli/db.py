"""`bookiji db`: schema migrations."""

from __future__ import annotations

import typer

from bookiji.cli.context import state
from bookiji.cli.output import JSON_OPTION, console, emit_json
from bookiji.domain.errors import ValidationFailed
from bookiji.store import migrate
from bookiji.store.database import redact

app = typer.Typer(
    help="Database schema: upgrade to the newest migration, show the current one.",
    no_args_is_help=True,
)


@app.command("upgrade")
def upgrade(
    ctx: typer.Context,
    revision: str = typer.Argument("head", help="Target revision."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Apply migrations up to REVISION (default: head). Migrations only go forward."""
    try:  # before the database is opened (or, on SQLite, created)
        target = migrate.resolve(revision)
    except LookupError:
        raise ValidationFailed(
            f"no migration {revision!r} ('bookiji db current' names the newest)",
            details={"revision": revision},
        ) from None
    container = state(ctx).container(require_schema=False, create=True)
    where = redact(container.db.url)
    before = migrate.current_revision(container.db)
    migrate.upgrade(container.db, target)
    after = migrate.current_revision(container.db)
    if json_output:
        emit_json({"database": where, "from": before, "to": after})
    elif before != after:
        console.print(f"database {where}: {before or 'empty'} -> {after}")
    elif after == target:
        console.print(f"database {where}: already at {after}; nothing to apply")
    else:
        # An older target: alembic's upgrade does nothing, which read as success.
        console.print(
            f"database {where}: at {after}, already past {target}; nothing applied "
            "(migrations only go forward: to go back, restore the backup taken before "
            "the upgrade)"
        )


@app.command("current")
def current(
    ctx: typer.Context,
    json_output: bool = JSON_OPTION,
) -> None:
    """Show the applied revision and whether it is the newest."""
    container = state(ctx).container(require_schema=False)
    revision = migrate.current_revision(container.db)
    head = migrate.head_revision(container.db)
    if json_output:
        emit_json(
            {
                "database": redact(container.db.url),
                "current": revision,
                "head": head,
                "atHead": revision == head,
            }
        )
        return
    status = "at head" if revision == head else f"behind head ({head})"
    console.print(f"database {redact(container.db.url)}: {revision or 'no schema'} ({status})")
