"""`bookiji`: the entry point, global options and the error policy.

Exit codes: 0 done; 1 refused (slot taken, not found, invalid transition, a conflict with
what is stored, a dependency down); 2 bad usage or bad input (unknown option, malformed time,
invalid file or config); 130 interrupted. Errors are one line on stderr, never a traceback;
with `--json`, every refusal also prints the error envelope on stdout.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import warnings

import icalendar
import typer
from sqlalchemy.exc import SQLAlchemyError

from bookiji.cli import apikeys as apikey_commands
from bookiji.cli import availability as availability_commands
from bookiji.cli import calendars as calendar_commands
from bookiji.cli import compensate as compensate_commands
from bookiji.cli import daemon as daemon_commands
from bookiji.cli import db as db_commands
from bookiji.cli import demo as demo_commands
from bookiji.cli import partners as partner_commands
from bookiji.cli import pii as pii_commands
from bookiji.cli import reconcile as reconcile_commands
from bookiji.cli import reservations as reservation_commands
from bookiji.cli import setup as setup_commands
from bookiji.cli import tui as tui_commands
from bookiji.cli import vendors as vendor_commands
from bookiji.cli import webhooks as webhook_commands
from bookiji.cli.context import CliState
from bookiji.cli.output import (
    console,
    emit_json,
    error_line,
    forget_json_request,
    json_requested,
    note_json_argument,
)
from bookiji.config import ConfigError
from bookiji.domain.errors import BookijiError, Unavailable, ValidationFailed

try:  # typer >= 0.2x ships its own copy of click and raises that copy's errors
    import typer._click as click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer raises click's own
    import click  # type: ignore[no-redef]
    from click import UsageError  # type: ignore[assignment]


class Interrupted(Exception):
    """Ctrl-C during a command. Typer turns a KeyboardInterrupt into a silent exit 130 before
    `main` sees it; this passes through Typer, so `main` can say so."""


class _Group(typer.core.TyperGroup):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted from None


class InvalidSettings(BookijiError):
    """Settings (file, environment, --database) that cannot be used: exit 2, like bad input."""

    code = "invalid_settings"


class DatabaseUnusable(BookijiError):
    """The database file is there but cannot serve (not a database, read-only, a directory
    that cannot be opened): retrying will not help until the operator fixes the file."""

    code = "database_unusable"


#: SQLite's own words for a file it cannot use (they name no path or secret): the operator
#: reads them as they are, instead of a generic "check the URL" that hides the cause.
_SQLITE_UNUSABLE = (
    "file is not a database",
    "unable to open database file",
    "attempt to write a readonly database",
    "database disk image is malformed",
    "disk I/O error",
)


class OsFailure(BookijiError):
    """The operating system refused (a file, a directory, a socket): exit 1."""

    code = "os_error"


app = typer.Typer(
    cls=_Group,
    name="bookiji",
    help="Bookiji core: availability, holds, vendor confirmation and atomic booking commit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: str | None = typer.Option(
        None,
        "--config",
        metavar="PATH",
        help="Settings file (default: $BOOKIJI_CONFIG, ./bookiji.toml).",
    ),
    database: str | None = typer.Option(
        None, "--database", metavar="URL", help="Database URL; overrides the settings file."
    ),
) -> None:
    ctx.obj = CliState(config_path=config, database_url=database)
    ctx.call_on_close(ctx.obj.close)


app.add_typer(db_commands.app, name="db")
app.add_typer(vendor_commands.app, name="vendors")
app.add_typer(reservation_commands.app, name="reservations")
app.add_typer(calendar_commands.app, name="calendars")
app.add_typer(partner_commands.app, name="partners")
app.add_typer(apikey_commands.app, name="apikeys")
app.add_typer(webhook_commands.app, name="webhooks")
setup_commands.register(app)
availability_commands.register(app)
reconcile_commands.register(app)
compensate_commands.register(app)
daemon_commands.register(app)
demo_commands.register(app)
tui_commands.register(app)
pii_commands.register(app)


def refuse(exc: BookijiError) -> None:
    """One red line for people; with `--json`, also the API's error envelope on stdout, where
    a script finds the code and every detail (each problem of a vendors file, say)."""
    if json_requested():
        emit_json(exc.to_envelope())
        error_line(f"{exc.message} [{exc.code}]")
        return
    message = exc.message
    if len(exc.details.get("problems") or ()) > 1 and message.endswith(")"):
        message = message[:-1] + "; --json lists them all)"
    error_line(f"{message} [{exc.code}]")


def database_problem(exc: SQLAlchemyError) -> BookijiError:
    """What a database failure means to the operator. Driver messages can echo connection
    strings: say what failed, never the raw text."""
    said = str(getattr(exc, "orig", ""))
    if isinstance(getattr(exc, "orig", None), sqlite3.Error):
        known = next((words for words in _SQLITE_UNUSABLE if words in said), None)
        if known is not None:
            return DatabaseUnusable(f"the SQLite database cannot be used: {known}")
    if "database is locked" in said:
        # SQLite's busy timeout ran out behind another process's write transaction: the
        # database is reachable, and the same command works once that writer is done.
        return Unavailable(
            "the database is locked by another writer; try again when it has finished"
        )
    return Unavailable(
        f"database error ({exc.__class__.__name__}); "
        "check the database URL and that the server is reachable"
    )


def _shown_on_the_console(record: logging.LogRecord) -> bool:
    """Errors, and our services' warnings; not libraries' or adapters' warnings: adapters
    report their failures as the calendar's (or payment's) error, which the command prints."""
    if record.levelno >= logging.ERROR:
        return True
    return record.name.startswith("bookiji.") and not record.name.startswith(
        "bookiji.integrations."
    )


def quiet_libraries() -> None:
    """The CLI says what went wrong in one red line (and a command's report): what libraries
    and our adapters log or warn on the way would come before it on stderr. The filter sits
    on the console handler, which the daemon replaces with its JSON log."""
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig, plus the filter
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_shown_on_the_console)
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    # icalendar guesses "/mozilla.org/.../America/New_York" as America/New_York, and says so
    # on every read of such a feed.
    warnings.filterwarnings("ignore", category=icalendar.GloballyUniqueTZIDGuessed)


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    forget_json_request()
    note_json_argument(args)
    try:
        result = command.main(args=args, prog_name="bookiji", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            # `bookiji` or `bookiji vendors` alone: show the help as help, not as an error.
            console.print(exc.ctx.get_help(), markup=False)
            return 2
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        if json_requested():
            emit_json(ValidationFailed(exc.format_message()).to_envelope())
        error_line(f"{exc.format_message()}{hint}")
        code = 2
    except typer.Abort:
        error_line("aborted")
        code = 1
    except ConfigError as exc:
        refuse(InvalidSettings(str(exc)))
        code = 2
    except BookijiError as exc:
        refuse(exc)
        code = 2 if isinstance(exc, ValidationFailed) else 1
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None)
        # A BookijiError raised inside a column type (sealed data) speaks for itself.
        refuse(cause if isinstance(cause, BookijiError) else database_problem(exc))
        code = 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        refuse(OsFailure(f"{exc.__class__.__name__}: {exc.strerror or exc}{where}"))
        code = 1
    except (Interrupted, KeyboardInterrupt):
        error_line("interrupted")
        code = 130
    return code


def run() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
