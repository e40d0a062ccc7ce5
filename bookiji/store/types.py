"""Column types that keep our invariants at the database boundary."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

#: JSON everywhere; JSONB on Postgres so documents are stored parsed and indexable.
JSONDocument = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

#: 64-bit ids on Postgres; SQLite only auto-increments a column declared INTEGER.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on every backend.

    Naive datetimes are refused at bind time: a naive value is a bug upstream, and storing it
    would silently shift times by the server's offset. SQLite stores the UTC wall clock in
    SQLAlchemy's fixed-width text format, so string comparison (used by the overlap trigger)
    orders instants correctly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime refused: times are timezone-aware UTC inside")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return cast(datetime, value.replace(tzinfo=None))
        return cast(datetime, value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text written by hand
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return cast(datetime, value.replace(tzinfo=UTC))
        return cast(datetime, value.astimezone(UTC))
