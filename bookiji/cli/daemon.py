"""`bookiji daemon`: the partner API and the scheduled jobs in one process."""

from __future__ import annotations

import typer

from bookiji.cli.context import state
from bookiji.domain.errors import ValidationFailed


def register(app: typer.Typer) -> None:
    @app.command("daemon")
    def daemon(
        ctx: typer.Context,
        host: str | None = typer.Option(None, "--host", help="Bind address (default 127.0.0.1)."),
        port: int | None = typer.Option(
            None, "--port", min=0, max=65535, help="Port (default 8421; 0: any free port)."
        ),
    ) -> None:
        """Serve the partner API and run expiry, reconciliation, calendar sync and webhook
        delivery on their schedules. SIGTERM / Ctrl-C drain and exit 0."""
        from bookiji.daemon.run import run_daemon

        if host is not None and not host.strip():
            raise ValidationFailed("--host: the address is empty (leave it out for 127.0.0.1)")
        cli = state(ctx)
        settings = cli.settings()
        # Refuses a database that is not at head, with the usual hint, and keys that do not
        # open the stored data or whose newest is unrecorded (a typo listed first is not a
        # rotation): one error line, before the port is bound or a job runs.
        cli.container(check_keys=False).pii.check_keys(register=True, sample=True)
        code = run_daemon(
            settings,
            host=settings.api.host if host is None else host,
            port=settings.api.port if port is None else port,
        )
        raise typer.Exit(code)
