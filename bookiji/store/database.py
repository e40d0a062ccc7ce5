"""Engines for SQLite (embedded default) and Postgres, with the settings each needs."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections import namedtuple
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine, Executable, create_engine, event
from sqlalchemy.engine import Connection, Row, make_url
from sqlalchemy.exc import DBAPIError

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: SQLite connections kept aside for `read_first`, about one per concurrent reader.
IDLE_READERS = 8
#: How long such a read waits for a lock: it may be holding up the API's event loop.
READ_BUSY_TIMEOUT_MS = 2_000
#: How long `truncate_wal` keeps trying while readers hold the log, and in what steps.
CHECKPOINT_WAIT_SECONDS = 3.0
CHECKPOINT_STEP_MS = 100


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (`postgres://`, `postgresql://`) and use psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def redact(url: str) -> str:
    """The URL with any password replaced, safe for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL we cannot parse is not echoed at all
        return "<unparseable database url>"


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL; None for other databases and in-memory SQLite."""
    parsed = make_url(normalize_url(url))
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    return Path(database).expanduser()


class Database:
    """One engine per process. On SQLite, write transactions start with BEGIN IMMEDIATE so
    the check-then-insert of a hold is serialised across processes; reads use a deferred
    BEGIN so watchers (the dashboard) never take the write lock."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        # hide_parameters: error messages (and so logs) never carry the values of a statement,
        # which may be personal data or secrets.
        kwargs: dict[str, Any] = {"echo": echo, "future": True, "hide_parameters": True}
        if self.is_sqlite:
            path = sqlite_file(self.url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {
                "check_same_thread": False,
                "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            }
            # Pooled: opening a connection (and its PRAGMAs) costs more than most queries, so
            # the pool keeps one for each of the daemon's request threads (8 by default) and
            # then some: a smaller pool opened and closed overflow connections on every busy
            # request (bench/api_load.py: 16 clients, availability +15 %, creates +30 %).
            # Processes never share a Database object; each builds its own after fork.
            kwargs["pool_size"] = 16
            kwargs["max_overflow"] = 10
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 10
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self.read_engine: Engine = self.engine.execution_options(sqlite_begin="DEFERRED")
        # For `read_first`: one SELECT needs no BEGIN, on its own it reads one snapshot.
        self._one_read_engine: Engine = self.engine.execution_options(sqlite_begin=None)
        self._idle_readers: list[Connection] = []  # list.pop/append: atomic, no lock
        # SQLite has one writer at a time. Threads of this process queue for it here, in
        # order, instead of in SQLite's busy handler, which sleeps in growing steps (up to
        # 100 ms) and made the slowest writes under load wait for seconds. Other processes
        # still meet the busy timeout. Re-entrant, like the nesting it replaces.
        self.write_gate: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self.is_sqlite else contextlib.nullcontext()
        )

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def local_reads(self) -> bool:
        """Whether a small read costs less than handing it to a thread: a read of a local
        SQLite file in WAL mode is a few page lookups that never wait for a writer, while a
        Postgres read waits a network round trip. The API answers hot reads on its event
        loop only when this holds."""
        return self.is_sqlite

    def read_first(self, statement: Executable, params: dict[str, Any]) -> Row[Any] | None:
        """The first row of one read, on a plain connection (no ORM session to set up).

        On SQLite these reads reuse connections kept aside for them: checking one out of
        the pool (and resetting it on return) cost as much as the read itself, on every API
        request (bench/api_load.py). They may run on the API's event loop, so they wait at
        most `READ_BUSY_TIMEOUT_MS` for a lock (a WAL reader normally never waits) and are
        then discarded, never handed back to the pool with that short timeout. Postgres
        connections go back to the pool, which pings them before reuse.
        """
        if not self.is_sqlite:
            with self._one_read_engine.connect() as connection:
                return connection.execute(statement, params).first()
        try:
            connection = self._idle_readers.pop()
        except IndexError:
            connection = self._one_read_engine.connect()
            connection.exec_driver_sql(f"PRAGMA busy_timeout={READ_BUSY_TIMEOUT_MS}")
            connection.rollback()  # from here on only the driver connection is used
        try:
            row = _plain_read(statement, self.engine.dialect).first(
                connection.connection.dbapi_connection, params
            )
        except BaseException:
            connection.invalidate()  # in an unknown state: never reused
            raise
        if len(self._idle_readers) < IDLE_READERS:
            self._idle_readers.append(connection)
        else:
            connection.invalidate()
        return cast("Row[Any] | None", row)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def truncate_wal(self, *, wait_seconds: float = CHECKPOINT_WAIT_SECONDS) -> bool:
        """SQLite: copy the write-ahead log into the database file and truncate it to zero
        bytes, so the page images it held (the values before an erasure) are gone. Another
        connection in the middle of a read holds it up: retried for `wait_seconds`, then
        False (the log is truncated later: by a later call, or when the last connection to
        the database closes). Waits in short steps, never the 30 s busy timeout."""
        if not self.is_sqlite:
            raise RuntimeError("only SQLite has a write-ahead log file to truncate")
        deadline = time.monotonic() + wait_seconds
        with self.write_gate, self._one_read_engine.connect() as connection:
            raw = cast("sqlite3.Connection", connection.connection.dbapi_connection)
            raw.execute(f"PRAGMA busy_timeout={CHECKPOINT_STEP_MS}")
            try:
                while True:
                    try:
                        busy = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                    except sqlite3.OperationalError:  # locked: as busy (best effort, after
                        busy = 1  # a committed erasure: never an error for its caller)
                    if not busy:
                        return True
                    if time.monotonic() >= deadline:
                        return False
                    time.sleep(CHECKPOINT_STEP_MS / 1000)
            finally:
                raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")

    def dispose(self) -> None:
        while self._idle_readers:
            self._idle_readers.pop().invalidate()
        self.engine.dispose()


class _PlainRead:
    """One SELECT compiled once and run on the bare `sqlite3` connection: SQLAlchemy's
    per-execute work (cache key, context, result set-up) cost more than the read itself,
    twice per API request. Same SQL, and each column still goes through its type's result
    processor, so the row reads as SQLAlchemy's would (by index or by name)."""

    def __init__(self, statement: Executable, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        columns = compiled._result_columns  # (key, name, objects, type) per column; none
        self.processors = tuple(  # for text(), whose values come as the driver gives them
            column[3]._cached_result_processor(dialect, None) for column in columns
        )
        self.row = namedtuple("Row", [column[0] for column in columns]) if columns else None
        self.binds = {
            name: bind.type._cached_bind_processor(dialect) for name, bind in compiled.binds.items()
        }

    def first(self, dbapi_connection: Any, params: dict[str, Any]) -> Any:
        values = []
        for name in self.names:
            process = self.binds.get(name)
            values.append(process(params[name]) if process is not None else params[name])
        try:
            cursor = dbapi_connection.execute(self.sql, values)
            try:
                found = cursor.fetchone()
            finally:
                cursor.close()  # ends the statement: no snapshot stays open to pin the WAL
        except sqlite3.Error as exc:  # as SQLAlchemy raises it, for the callers' handlers
            raise DBAPIError.instance(
                self.sql, values, exc, sqlite3.Error, hide_parameters=True
            ) from exc
        if found is None:
            return None
        if self.row is None:
            return tuple(found)
        return self.row(
            *(p(v) if p is not None else v for p, v in zip(self.processors, found, strict=True))
        )


_PLAIN_READS: dict[int, tuple[Executable, _PlainRead]] = {}


def _plain_read(statement: Executable, dialect: Any) -> _PlainRead:
    cached = _PLAIN_READS.get(id(statement))
    if cached is None or cached[0] is not statement:
        cached = (statement, _PlainRead(statement, dialect))
        _PLAIN_READS[id(statement)] = cached
    return cached[1]


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit the caller saw survives power loss too, not only a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        # Deleted and overwritten content is zeroed, not left in free space of a page or in
        # free pages, where erased personal data would still sit in the file (many builds,
        # Debian's among them, have it on already; not all). 500 holds: within noise.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        if mode is not None:
            connection.exec_driver_sql(f"BEGIN {mode}")
