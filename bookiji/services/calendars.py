"""Calendar connections and the busy-time cache they fill.

A sync reads the provider outside any database transaction (network time never holds a
write lock), then replaces that connection's cached busy periods in one transaction. A
failed read keeps the last good data and marks the connection degraded, which lowers the
confidence of the vendor's slots; it never stops availability from answering.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, delete, select

from bookiji.domain.busy import BusyPeriod
from bookiji.domain.errors import Conflict, NotFound, ValidationFailed
from bookiji.services.availability import MAX_SLOT_MINUTES
from bookiji.services.clock import Clock
from bookiji.services.ids import new_id
from bookiji.services.ports import CalendarSource, CalendarUnavailable, RenewsCredentials
from bookiji.store.database import Database
from bookiji.store.models import BusyInterval, CalendarConnection, Vendor
from bookiji.store.uow import UnitOfWork

PROVIDERS = ("ics", "google", "outlook")

SourceBuilder = Callable[[CalendarConnection, Vendor], CalendarSource]


@dataclass(frozen=True)
class SyncResult:
    connection_id: str
    vendor_id: str
    provider: str
    status: str  # "ok" | "degraded"
    busy_periods: int
    error: str | None = None
    retryable: bool | None = None


class CalendarService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        build_source: SourceBuilder,
        *,
        lookback: timedelta = timedelta(days=1),
    ) -> None:
        self.db = db
        self.clock = clock
        self.build_source = build_source
        self.lookback = lookback

    def connections(self, vendor_id: str | None = None) -> list[CalendarConnection]:
        with UnitOfWork(self.db, readonly=True) as uow:
            stmt = select(CalendarConnection).order_by(
                col(CalendarConnection.vendor_id), col(CalendarConnection.created_at)
            )
            if vendor_id is not None:
                stmt = stmt.where(col(CalendarConnection.vendor_id) == vendor_id)
            return list(uow.session.exec(stmt).all())

    def connect(
        self,
        vendor_id: str,
        provider: str,
        source: str,
        *,
        name: str | None = None,
        credentials_ref: str | None = None,
        replace: bool = False,
    ) -> CalendarConnection:
        """Add (or update the credentials of) a connection; it syncs on the next run.

        A vendor has one connection per provider and source. Sources are sealed (random
        tokens), so the database cannot compare them: the vendor's connections are opened and
        compared here, under a lock on the vendor's row that every adding transaction takes
        first, so two adds of one source cannot both find none.

        Other credentials for a source already connected with credentials are refused
        (`Conflict` naming the connection) unless `replace`: Google's `primary` names a
        different calendar for every account, so a second account's consent would silently
        take the first one's place."""
        if provider not in PROVIDERS:
            raise ValidationFailed(f"unknown calendar provider {provider!r}")
        now = self.clock.now()
        with UnitOfWork(self.db) as uow:
            if uow.vendors.get(vendor_id, for_update=True) is None:
                raise NotFound(f"unknown vendor {vendor_id!r}", details={"vendorId": vendor_id})
            existing = next(
                (c for c in self._connections_of(uow, vendor_id, provider) if c.source == source),
                None,
            )
            if (
                existing is not None
                and not replace
                and existing.credentials_ref is not None
                and credentials_ref is not None
                and existing.credentials_ref != credentials_ref
            ):
                raise self._already_connected(existing)
            connection = existing or CalendarConnection(
                id=new_id("cal"),
                vendor_id=vendor_id,
                provider=provider,
                source=source,
                created_at=now,
            )
            connection.name = name or connection.name
            if credentials_ref is not None:
                connection.credentials_ref = credentials_ref
            uow.session.add(connection)
            uow.touch_schedule(vendor_id)
            uow.commit()
            return connection

    def refuse_if_connected(self, vendor_id: str, provider: str, source: str) -> None:
        """`connect`'s refusal, asked before a consent flow: a vendor who granted access only
        to be refused would have to grant it again."""
        for existing in self.connections(vendor_id):
            if (existing.provider, existing.source) == (provider, source) and (
                existing.credentials_ref
            ):
                raise self._already_connected(existing)

    @staticmethod
    def _already_connected(existing: CalendarConnection) -> Conflict:
        return Conflict(
            f"vendor {existing.vendor_id!r} already has {existing.provider} calendar "
            f"{existing.source!r} connected as {existing.id} (perhaps with another account); "
            "connect with --replace to replace its credentials, or name another calendar",
            details={"connectionId": existing.id},
        )

    @staticmethod
    def _connections_of(uow: UnitOfWork, vendor_id: str, provider: str) -> list[CalendarConnection]:
        return list(
            uow.session.exec(
                select(CalendarConnection).where(
                    col(CalendarConnection.vendor_id) == vendor_id,
                    col(CalendarConnection.provider) == provider,
                )
            ).all()
        )

    def disconnect(self, connection_id: str) -> CalendarConnection:
        """Remove a connection and its cached busy times (the vendor's slots reopen)."""
        with UnitOfWork(self.db) as uow:
            connection = uow.session.get(CalendarConnection, connection_id)
            if connection is None:
                raise NotFound(
                    f"no calendar connection {connection_id!r}",
                    details={"connectionId": connection_id},
                )
            uow.session.execute(
                delete(BusyInterval).where(col(BusyInterval.connection_id) == connection_id)
            )
            uow.session.delete(connection)
            uow.touch_schedule(connection.vendor_id)
            uow.commit()
            return connection

    def sync(
        self,
        vendor_id: str | None = None,
        *,
        on_result: Callable[[SyncResult], None] | None = None,
    ) -> list[SyncResult]:
        results = []
        for connection in self.connections(vendor_id):
            result = self.sync_one(connection.id)
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results

    def sync_one(self, connection_id: str) -> SyncResult:
        now = self.clock.now()
        with UnitOfWork(self.db, readonly=True) as uow:
            connection = uow.session.get(CalendarConnection, connection_id)
            if connection is None:
                raise NotFound(f"no calendar connection {connection_id!r}")
            vendor = uow.vendors.get(connection.vendor_id)
            assert vendor is not None
        # Every block a bookable slot can make: a slot starts from now to the horizon and
        # lasts up to a day, and its buffers reach further on either side.
        start = now - max(self.lookback, timedelta(minutes=vendor.buffer_before_minutes))
        end = (
            now
            + timedelta(days=vendor.max_advance_days + 1)
            + timedelta(minutes=MAX_SLOT_MINUTES + vendor.buffer_after_minutes)
        )
        try:
            source = self.build_source(connection, vendor)
            periods = source.busy(start, end)
            renewed = None
            if isinstance(source, RenewsCredentials):
                renewed = source.renewed_credentials()
        except CalendarUnavailable as exc:
            return self._record_failure(connection, now, exc.message, exc.retryable)
        except Exception as exc:  # an adapter bug must not take availability down with it
            return self._record_failure(
                connection, now, f"unexpected {type(exc).__name__} reading the calendar", True
            )
        return self._record_success(connection, now, periods, renewed)

    def _record_success(
        self,
        connection: CalendarConnection,
        now: datetime,
        periods: list[BusyPeriod],
        renewed_credentials: str | None = None,
    ) -> SyncResult:
        with UnitOfWork(self.db) as uow:
            row = uow.session.get(CalendarConnection, connection.id)
            if row is None:  # disconnected while we were reading
                return SyncResult(
                    connection.id, connection.vendor_id, connection.provider, "disconnected", 0
                )
            uow.session.execute(
                delete(BusyInterval).where(col(BusyInterval.connection_id) == connection.id)
            )
            for period in periods:
                uow.session.add(
                    BusyInterval(
                        connection_id=connection.id,
                        vendor_id=connection.vendor_id,
                        start_at=period.start,
                        end_at=period.end,
                        tentative=period.tentative,
                        summary=period.summary,
                        fetched_at=now,
                    )
                )
            row.status = "ok"
            row.last_synced_at = now
            row.last_attempt_at = now
            row.last_error = None
            # A rotated refresh token replaces the one it was read with; not credentials a
            # reconnect stored meanwhile.
            unchanged = row.credentials_ref == connection.credentials_ref
            if renewed_credentials is not None and unchanged:
                row.credentials_ref = renewed_credentials
            uow.touch_schedule(connection.vendor_id)
            uow.commit()
        return SyncResult(
            connection.id, connection.vendor_id, connection.provider, "ok", len(periods)
        )

    def _record_failure(
        self, connection: CalendarConnection, now: datetime, message: str, retryable: bool
    ) -> SyncResult:
        with UnitOfWork(self.db) as uow:
            row = uow.session.get(CalendarConnection, connection.id)
            if row is not None:
                row.status = "degraded"
                row.last_attempt_at = now
                row.last_error = message
                uow.touch_schedule(connection.vendor_id)
                uow.commit()
        return SyncResult(
            connection.id,
            connection.vendor_id,
            connection.provider,
            "degraded",
            0,
            error=message,
            retryable=retryable,
        )
