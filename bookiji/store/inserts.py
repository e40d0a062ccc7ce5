"""INSERTs compiled once and handed to the driver as SQL, for rows a hot path never reads back.

A hold writes about ten rows; through `Connection.execute(table.insert(), rows)` each
statement paid SQLAlchemy's per-call compiling work (cache key, parameter processing set-up)
again, about as much CPU as SQLite spends writing the row. The SQL here is still the one
SQLAlchemy compiles for the dialect (casts and all), and each value still goes through its
column type's bind processor (UTC timestamps, sealed JSON), so what lands in the table is
byte for byte what the ORM would write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import StatementError

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class PreparedInsert:
    sql: str
    #: (row key, its column type's bind processor), in the order the statement wants them.
    fields: tuple[tuple[str, Processor], ...]
    #: Python-side defaults of the columns the rows leave out: (name, value or factory).
    defaults: tuple[tuple[str, Any, bool], ...]
    positional: bool

    def parameters(self, row: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        values = row
        if self.defaults:  # only then a merged copy per row
            values = {**{name: (make(None) if call else make)
                         for name, make, call in self.defaults}, **row}  # fmt: skip
        if self.positional:
            return tuple(p(values[k]) if p is not None else values[k] for k, p in self.fields)
        return {k: (p(values[k]) if p is not None else values[k]) for k, p in self.fields}


_PREPARED: dict[tuple[str, tuple[str, ...], str], PreparedInsert] = {}


def prepare(table: Table, keys: tuple[str, ...], dialect: Dialect) -> PreparedInsert:
    cache_key = (table.name, keys, dialect.name)
    prepared = _PREPARED.get(cache_key)
    if prepared is not None:
        return prepared
    unknown = set(keys) - set(table.c.keys())
    if unknown:
        raise ValueError(f"{table.name} has no column(s) {sorted(unknown)}")
    missing = [c for c in table.c if c.key not in keys and c.default is not None]
    defaults = tuple(
        (c.key, getattr(c.default, "arg", None), bool(getattr(c.default, "is_callable", False)))
        for c in missing
    )
    compiled = table.insert().compile(
        dialect=dialect, column_keys=[*keys, *(c.key for c in missing)], for_executemany=True
    )
    names = list(compiled.positiontup or compiled.binds)
    fields = tuple(
        (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names
    )
    prepared = PreparedInsert(compiled.string, fields, defaults, compiled.positiontup is not None)
    _PREPARED[cache_key] = prepared
    return prepared


def insert_rows(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Every row must have the same keys (the statement is compiled for the first's)."""
    if not rows:
        return
    keys = tuple(rows[0])
    prepared = prepare(table, keys, connection.dialect)
    if any(tuple(row) != keys for row in rows[1:]):
        raise ValueError(f"rows for {table.name} do not all have the same columns")
    try:
        parameters = [prepared.parameters(row) for row in rows]
    except Exception as exc:  # a value its type refuses (say, personal data and no key)
        # As SQLAlchemy reports it, with the values hidden: they may be personal data.
        raise StatementError(
            f"({type(exc).__qualname__}) {exc}", prepared.sql, None, exc, hide_parameters=True
        ) from exc
    # The driver's SQL, no compiling or caching per call; errors are still SQLAlchemy's
    # (IntegrityError for an overlap), and a lost connection is still noticed by the pool.
    connection.exec_driver_sql(prepared.sql, parameters)
