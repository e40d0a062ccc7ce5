"""Per-invocation state: global options, and the container built from them on first use."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import typer

from bookiji import telemetry
from bookiji.bootstrap import Container, build
from bookiji.config import ConfigError, Settings, load_settings
from bookiji.domain.errors import BookijiError, ValidationFailed
from bookiji.domain.timeutil import parse_instant
from bookiji.store import migrate
from bookiji.store.database import redact, sqlite_file


class SchemaNotReady(BookijiError):
    code = "schema_not_ready"
    http_status = 503


@dataclass
class CliState:
    config_path: str | None = None
    database_url: str | None = None
    _settings: Settings | None = None
    _container: Container | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        if self._settings is None:
            # An empty --database is refused as the empty setting is, not taken as "unset".
            given = self.database_url is not None
            overrides = {"database_url": self.database_url} if given else {}
            settings = load_settings(
                self.config_path, given_as={"database_url": "--database"}, **overrides
            )
            if (
                settings.database_url.startswith("sqlite")
                and sqlite_file(settings.database_url) is None
            ):  # in memory: every command would start, and end, on an empty database
                raise ConfigError(
                    "invalid configuration: database_url: a SQLite URL names a file, as in "
                    "sqlite:///path/to/bookiji.db"
                )
            self._settings = settings
        return self._settings

    def container(
        self, *, require_schema: bool = True, create: bool = False, check_keys: bool = True
    ) -> Container:
        """`create`: a SQLite file may be made here (init, db upgrade); every other command
        refuses a path with no database file. With the schema required, the PII keys must
        open the stored data's key-check records and the newest must have one (one small
        read; a database without records gets one per key), so no command reads or seals
        with a wrong key, nor begins a rotation by accident; `check_keys=False` for the
        commands that check more themselves (`daemon`, `pii check`, `pii begin-rotation`)."""
        if self._container is None:
            settings = self.settings()
            if not create:
                # Opening a SQLite file creates it (and its directories): a mistyped path
                # would leave an empty database behind instead of an error.
                missing = sqlite_file(settings.database_url)
                if missing is not None and not missing.exists():
                    raise SchemaNotReady(
                        f"no database file at {missing.resolve()}: run 'bookiji init', "
                        "or check --database / database_url"
                    )
            telemetry.configure(settings)
            self._container = build(settings)
            if require_schema and not migrate.is_at_head(self._container.db):
                current = migrate.current_revision(self._container.db)
                where = redact(self._container.db.url)
                hint = "run 'bookiji init'" if current is None else "run 'bookiji db upgrade'"
                raise SchemaNotReady(
                    f"database {where} is at revision {current or 'none'}, not at head: {hint}"
                )
            if require_schema and check_keys:
                self._container.pii.check_keys(register=True, sample=False)
        return self._container

    def drop_connections(self) -> None:
        """Close the database's connections, the container kept (init takes back a SQLite
        file it made, and no connection may write to it afterwards)."""
        if self._container is not None:
            self._container.db.dispose()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            telemetry.shutdown()


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):
        obj = CliState()
        ctx.find_root().obj = obj
    return obj


def instant(value: str, *, option: str) -> datetime:
    """Parse an RFC 3339 option value; a bad one is a usage error (exit 2). Lenient, unlike
    the API: an operator may type `2026-12-01 10:00Z`."""
    try:
        return parse_instant(value, field=option, strict=False)
    except ValidationFailed as exc:
        # The hint names the option already ("Invalid value for --start: ...").
        message = exc.message.removeprefix(f"{option}: ")
        raise typer.BadParameter(message, param_hint=option) from None
