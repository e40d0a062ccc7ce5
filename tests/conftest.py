"""Shared fixtures: a fresh, migrated database per test on SQLite and on Postgres.

Postgres: one template database is migrated per test run and each test gets its own copy
(`CREATE DATABASE ... TEMPLATE`), so tests never see each other's rows. SQLite: the migrated
file is copied. Without BOOKIJI_TEST_POSTGRES_URL the Postgres half is skipped with a reason.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from bookiji.domain.states import StageTTLs
from bookiji.services.clock import ManualClock
from bookiji.store import crypto, migrate
from bookiji.store.database import Database, normalize_url

# One throw-away PII key per test run (never a key in the repo); daemons and CLI processes
# started by the tests inherit it.
os.environ.setdefault("BOOKIJI_PII_KEYS", Fernet.generate_key().decode())

POSTGRES_ENV = "BOOKIJI_TEST_POSTGRES_URL"
REDIS_ENV = "BOOKIJI_TEST_REDIS_URL"
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)  # a Tuesday


def postgres_admin_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def _admin_connect(url: str):  # type: ignore[no-untyped-def]
    import psycopg

    plain = make_url(normalize_url(url)).set(drivername="postgresql")
    return psycopg.connect(plain.render_as_string(hide_password=False), autocommit=True)


def _database_url(admin_url: str, name: str) -> str:
    return (
        make_url(normalize_url(admin_url)).set(database=name).render_as_string(hide_password=False)
    )


class PostgresFactory:
    """Creates throw-away databases cloned from a migrated template."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.template = f"bookiji_tpl_{uuid.uuid4().hex[:10]}"
        self.created: list[str] = []

    def create_template(self) -> None:
        with _admin_connect(self.admin_url) as conn:
            conn.execute(f'CREATE DATABASE "{self.template}"')
        db = Database(_database_url(self.admin_url, self.template))
        try:
            migrate.upgrade(db)
        finally:
            db.dispose()

    def empty(self) -> str:
        name = f"bookiji_t_{uuid.uuid4().hex[:12]}"
        with _admin_connect(self.admin_url) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return _database_url(self.admin_url, name)

    def clone(self) -> str:
        name = f"bookiji_t_{uuid.uuid4().hex[:12]}"
        with _admin_connect(self.admin_url) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.append(name)
        return _database_url(self.admin_url, name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with _admin_connect(self.admin_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_all(self) -> None:
        with _admin_connect(self.admin_url) as conn:
            for name in [*self.created, self.template]:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_factory() -> Iterator[PostgresFactory]:
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip(f"{POSTGRES_ENV} is not set: Postgres variants are skipped")
    factory = PostgresFactory(admin)
    factory.create_template()
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    db = Database(f"sqlite:///{path}")
    migrate.upgrade(db)
    db.dispose()
    return path


@pytest.fixture(autouse=True)
def _restore_pii_keyring() -> Iterator[None]:
    """The process's PII keyring as it was before each test: an in-process CLI run installs
    the keys of its settings (a key file `init` wrote, say), and data a later test seals
    in-process must be sealed with the key the daemons it starts are given."""
    saved = crypto._keyring
    yield
    crypto._keyring = saved


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at head, on the backend of this test's parameter."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "bookiji.db"
        shutil.copyfile(template, target)
        yield f"sqlite:///{target}"
        return
    factory: PostgresFactory = request.getfixturevalue("postgres_factory")
    url = factory.clone()
    yield url
    factory.drop(url)


@pytest.fixture
def empty_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A database with no schema at all, for migration tests."""
    if backend == "sqlite":
        (tmp_path / "empty.db").touch()  # a zero-byte file is an empty SQLite database
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    factory: PostgresFactory = request.getfixturevalue("postgres_factory")
    url = factory.empty()
    yield url
    factory.drop(url)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def ttls() -> StageTTLs:
    return StageTTLs()
