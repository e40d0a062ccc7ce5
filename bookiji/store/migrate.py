"""Run Alembic from code, so `bookiji db upgrade` needs no alembic.ini on the machine."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from bookiji.store.database import Database


def migrations_dir() -> Path:
    """`migrations/` beside the package in a checkout; `bookiji/_migrations` in a wheel."""
    package_root = Path(__file__).resolve().parent.parent
    for candidate in (package_root / "_migrations", package_root.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the migrations directory is missing from this installation")


def alembic_config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    cfg = alembic_config(db)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(db: Database, revision: str = "base") -> None:
    cfg = alembic_config(db)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(db: Database) -> str | None:
    """A read (a deferred BEGIN on SQLite): every command, the dashboard and /readyz check
    the schema first, and a WAL reader never waits behind another process's writer."""
    with db.read_engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def resolve(revision: str) -> str:
    """The migration `revision` names (an id, a unique prefix of one, `head`), checked before
    any database is opened; LookupError when it names none."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    script = ScriptDirectory.from_config(cfg)
    try:
        found = script.get_revisions(revision)
    except CommandError as exc:
        raise LookupError(str(exc)) from None
    if len(found) != 1 or found[0] is None:
        raise LookupError(f"{revision!r} does not name one migration")
    return found[0].revision


def head_revision(db: Database) -> str | None:
    return ScriptDirectory.from_config(alembic_config(db)).get_current_head()


def is_at_head(db: Database) -> bool:
    return current_revision(db) == head_revision(db)
