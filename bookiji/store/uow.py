"""Unit of work: one database transaction, with the repositories bound to it.

Leaving the block without `commit()` rolls back, so a service that raises half-way
writes nothing. Rows read inside stay readable (detached) after the block.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from sqlmodel import Session, SQLModel

from bookiji.store.database import Database
from bookiji.store.inserts import insert_rows
from bookiji.store.repositories import (
    IdempotencyRepository,
    OutboxRepository,
    ReservationRepository,
    TransitionRepository,
    VendorRepository,
)


class UnitOfWork:
    def __init__(self, db: Database, *, readonly: bool = False) -> None:
        self.db = db
        self.readonly = readonly

    def __enter__(self) -> UnitOfWork:
        engine = self.db.read_engine if self.readonly else self.db.engine
        self._gate = None if self.readonly else self.db.write_gate
        if self._gate is not None:
            self._gate.__enter__()
        self.session = Session(engine, expire_on_commit=False, autoflush=True)
        self.vendors = VendorRepository(self.session)
        self.reservations = ReservationRepository(self.session)
        self.transitions = TransitionRepository(self.session)
        self.outbox = OutboxRepository(self.session)
        self.idempotency = IdempotencyRepository(self.session)
        self._touched_schedules: set[str] = set()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # close() rolls back whatever was not committed but, unlike rollback(), leaves the
        # loaded objects readable: services return rows read inside the unit of work.
        try:
            self.session.close()
        finally:
            if self._gate is not None:
                self._gate.__exit__(None, None, None)

    def flush(self) -> None:
        self.session.flush()

    def insert(self, model: type[SQLModel], rows: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Plain INSERTs of rows keyed by column name, without the ORM's per-object
        bookkeeping: for a hot path that writes rows it never reads back (a new hold)."""
        table = model.__table__  # type: ignore[attr-defined]
        insert_rows(self.session.connection(), table, [rows] if isinstance(rows, dict) else rows)

    def touch_schedule(self, vendor_id: str) -> None:
        """Note that this transaction changes what the vendor can offer; committing bumps the
        vendor's schedule version once, which invalidates cached availability answers."""
        self._touched_schedules.add(vendor_id)

    def commit(self) -> None:
        if self.readonly:
            raise RuntimeError("a read-only unit of work cannot commit")
        if self._touched_schedules:
            self.vendors.bump_schedule_versions(sorted(self._touched_schedules))
        self._touched_schedules.clear()
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()
