"""`bookiji init`: a settings file and a database at head."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import typer
from sqlalchemy.engine import make_url

from bookiji.cli.context import state
from bookiji.cli.output import JSON_OPTION, console, emit_json
from bookiji.config import DEFAULT_CONFIG_FILE, DEFAULT_DATABASE_URL, ConfigError
from bookiji.store import crypto, migrate
from bookiji.store.database import redact, sqlite_file

CONFIG_TEMPLATE = """\
# Bookiji settings. Every setting and its default: config.example.toml in the source tree.
# Environment variables BOOKIJI_* override this file (BOOKIJI_TTL__HOLD_MINUTES=5).
database_url = "{database_url}"
"""

KEY_FILE_LINES = """\
# Keys for personal data and credentials at rest, newest first (bookiji pii new-key).
# Back it up apart from the database (without it the sealed data cannot be read);
# readable only by Bookiji's user.
{key}
"""


def _write_key_file(path: Path) -> Path:
    if path.exists():
        return path  # an earlier init's key: never replace one (data sealed with it)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(KEY_FILE_LINES.format(key=crypto.new_key()))
    return path


def _absolute(url: str) -> str:
    """A SQLite URL with its file made absolute: the settings file is read from wherever the
    next command runs, and a relative path would then name another database."""
    database = sqlite_file(url)
    if database is None or database.is_absolute():
        return url
    return make_url(url).set(database=str(database.resolve())).render_as_string(hide_password=False)


def _make_dirs(directory: Path) -> list[Path]:
    """`mkdir -p`, returning the directories it made (outermost first), so that a refused
    init can take them back."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()][::-1]
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _make_room(url: str) -> list[Path]:
    """The SQLite file's directory, made before anything is written: a path where no
    database can be is a bad setting, named, not an OS error after the settings file."""
    database = sqlite_file(url)
    if database is None:
        return []
    try:
        return _make_dirs(database.parent)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the database {database}: {exc.strerror or exc} "
            "(check --database / database_url)"
        ) from None


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        ctx: typer.Context,
        json_output: bool = JSON_OPTION,
    ) -> None:
        """Write a settings file (unless one exists) and bring the database to head."""
        cli = state(ctx)
        path = Path(cli.config_path) if cli.config_path else Path(DEFAULT_CONFIG_FILE)
        wrote = False
        key_file: Path | None = None
        written: list[Path] = []  # removed again if init fails: a retry starts clean
        made: list[Path] = []  # directories, likewise (when nothing else was put in them)
        new_database: Path | None = None  # a SQLite file this init makes, likewise
        try:
            if not path.exists():
                url = _absolute(cli.database_url or DEFAULT_DATABASE_URL)
                made += _make_room(url)
                made += _make_dirs(path.parent)
                text = CONFIG_TEMPLATE.format(database_url=url)
                keys = path.parent / "bookiji-pii.keys"
                if not os.environ.get(crypto.ENV_KEYS) and not os.environ.get(crypto.ENV_KEYS_FILE):
                    if not keys.exists():
                        written.append(keys)
                    key_file = _write_key_file(keys)
                    text += f'pii_keys_file = "{key_file.resolve()}"\n'
                written.append(path)
                path.write_text(text, encoding="utf-8")
                wrote = True
            cli.config_path = str(path)
            database = sqlite_file(cli.settings().database_url)
            if database is not None and not database.exists():
                made += _make_room(cli.settings().database_url)
                new_database = database
            container = cli.container(require_schema=False, create=True)
            before = migrate.current_revision(container.db)
            migrate.upgrade(container.db)
            after = migrate.current_revision(container.db)
            # A database sealed with other keys (an init in a new directory made a new key
            # file for it): refused here, and the key file taken back.
            container.pii.check_keys(register=True)
        except BaseException:
            if new_database is not None:
                cli.drop_connections()
                for suffix in ("", "-wal", "-shm", "-journal"):
                    written.append(new_database.with_name(new_database.name + suffix))
            for created in written:
                created.unlink(missing_ok=True)
            for directory in reversed(made):
                with contextlib.suppress(OSError):  # not empty: something else lives there
                    directory.rmdir()
            raise
        if json_output:
            emit_json(
                {
                    "config": str(path),
                    "configWritten": wrote,
                    "database": redact(container.db.url),
                    "from": before,
                    "to": after,
                    "piiKeyFile": str(key_file) if key_file else None,
                }
            )
            return
        console.print(f"settings: {path} ({'written' if wrote else 'kept as it was'})")
        if key_file is not None:
            console.print(
                f"PII key: {key_file} (readable only by you; back it up apart from the "
                "database: without it the personal data cannot be read)"
            )
        console.print(f"database: {redact(container.db.url)} ({before or 'empty'} -> {after})")
