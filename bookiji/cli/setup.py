"""`bookiji init`: a settings file and a database at head."""

from __future__ import annotations

from pathlib import Path

import typer

from bookiji.cli.context import state
from bookiji.cli.output import console, emit_json
from bookiji.config import DEFAULT_CONFIG_FILE, DEFAULT_DATABASE_URL
from bookiji.store import migrate
from bookiji.store.database import redact

CONFIG_TEMPLATE = """\
# Bookiji settings. Every setting and its default: config.example.toml in the source tree.
# Environment variables BOOKIJI_* override this file (BOOKIJI_TTL__HOLD_MINUTES=5).
database_url = "{database_url}"
"""


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        ctx: typer.Context,
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Write a settings file (unless one exists) and bring the database to head."""
        cli = state(ctx)
        path = Path(cli.config_path) if cli.config_path else Path(DEFAULT_CONFIG_FILE)
        wrote = False
        if not path.exists():
            url = cli.database_url or DEFAULT_DATABASE_URL
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(CONFIG_TEMPLATE.format(database_url=url), encoding="utf-8")
            wrote = True
        cli.config_path = str(path)
        container = cli.container(require_schema=False)
        before = migrate.current_revision(container.db)
        migrate.upgrade(container.db)
        after = migrate.current_revision(container.db)
        if json_output:
            emit_json(
                {
                    "config": str(path),
                    "configWritten": wrote,
                    "database": redact(container.db.url),
                    "from": before,
                    "to": after,
                }
            )
            return
        console.print(f"settings: {path} ({'written' if wrote else 'kept as it was'})")
        console.print(f"database: {redact(container.db.url)} ({before or 'empty'} -> {after})")
