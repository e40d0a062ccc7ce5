"""`bookiji tui`: the support dashboard, on the database the CLI and the daemon use."""

from __future__ import annotations

import typer

from bookiji.cli.context import state


def register(app: typer.Typer) -> None:
    @app.command("tui")
    def tui(
        ctx: typer.Context,
        database: str | None = typer.Option(
            None, "--database", metavar="URL", help="Database URL; overrides the settings file."
        ),
    ) -> None:
        """Support dashboard: live state transitions, an overview of what is stuck, and
        reservations to inspect and act on (cancel, force compensation, retry a webhook,
        reconcile now). Keyboard first: press ? for the keys; q quits."""
        cli = state(ctx)
        if database is not None:
            cli.database_url = database
        # Built (and the schema checked) before the screen takes over the terminal, so a bad
        # URL or an old schema is the usual one red line, not a broken screen.
        container = cli.container()
        from bookiji.tui.app import DashboardApp

        DashboardApp(container).run()
