"""Vendors come from an operator's TOML file: validated whole, imported in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from bookiji.domain.errors import NotFound
from bookiji.domain.vendors import VendorFileInvalid, VendorSpec, parse_vendor_document
from bookiji.services.clock import Clock
from bookiji.services.ids import new_id
from bookiji.store.database import Database
from bookiji.store.models import CalendarConnection, Vendor
from bookiji.store.uow import UnitOfWork


@dataclass(frozen=True)
class ImportReport:
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    calendars_added: int


def read_vendor_file(path: Path) -> list[VendorSpec]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VendorFileInvalid(
            f"{path}: file not found", details={"file": str(path), "problems": []}
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VendorFileInvalid(
            f"{path}: cannot read: {exc.__class__.__name__}",
            details={"file": str(path), "problems": []},
        ) from None
    # Calendar paths in the file are relative to it, not to wherever the command runs.
    return parse_vendor_document(text, filename=str(path), base_dir=str(path.absolute().parent))


def _fields(spec: VendorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "timezone": spec.timezone,
        "slot_minutes": spec.slot_minutes,
        "slot_interval_minutes": spec.slot_interval_minutes,
        "buffer_before_minutes": spec.buffer_before_minutes,
        "buffer_after_minutes": spec.buffer_after_minutes,
        "min_notice_minutes": spec.min_notice_minutes,
        "max_advance_days": spec.max_advance_days,
        "currency": spec.currency,
        "price": spec.price,
        "deposit": spec.deposit,
        "hours": spec.hours_document(),
        "overrides": spec.overrides_document(),
        "payment_customer_ref": spec.payment.get("customer"),
        "payment_method_ref": spec.payment.get("payment_method"),
        "payment_account_ref": spec.payment.get("account"),
        "notify_email": spec.notify.get("email"),
        "notify_webhook_url": spec.notify.get("webhook"),
        "notify_sms": spec.notify.get("sms"),
    }


def spec_of(vendor: Vendor) -> VendorSpec:
    """Rebuild the validated spec from a stored row (availability works on specs)."""
    return VendorSpec.from_documents(
        id=vendor.id,
        name=vendor.name,
        timezone=vendor.timezone,
        slot_minutes=vendor.slot_minutes,
        slot_interval_minutes=vendor.slot_interval_minutes,
        buffer_before_minutes=vendor.buffer_before_minutes,
        buffer_after_minutes=vendor.buffer_after_minutes,
        min_notice_minutes=vendor.min_notice_minutes,
        max_advance_days=vendor.max_advance_days,
        currency=vendor.currency,
        price=vendor.price,
        deposit=vendor.deposit,
        hours=vendor.hours,
        overrides=vendor.overrides,
    )


class VendorService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def import_file(self, path: Path) -> ImportReport:
        """Create or update every vendor in the file, or nothing if any of it is invalid.

        Calendars declared in the file are added when new, and take the file's `name` and
        `credentials` when they have changed (the vendor counts as updated); connections
        made another way (OAuth) are otherwise left alone.
        """
        specs = read_vendor_file(path)
        return self.import_specs(specs)

    def import_specs(self, specs: Sequence[VendorSpec]) -> ImportReport:
        now = self.clock.now()
        created: list[str] = []
        updated: list[str] = []
        unchanged: list[str] = []
        calendars_added = 0
        with UnitOfWork(self.db) as uow:
            # Calendar sources are sealed, so the database cannot refuse a vendor's second
            # connection to one source: they are compared below, under these row locks, which
            # `CalendarService.connect` takes too.
            uow.vendors.lock([spec.id for spec in specs])
            for spec in specs:
                fields = _fields(spec)
                vendor = uow.vendors.get(spec.id)
                if vendor is None:
                    uow.vendors.add(Vendor(id=spec.id, created_at=now, updated_at=now, **fields))
                    created.append(spec.id)
                elif any(getattr(vendor, key) != value for key, value in fields.items()):
                    for key, value in fields.items():
                        setattr(vendor, key, value)
                    vendor.updated_at = now
                    uow.touch_schedule(spec.id)
                    updated.append(spec.id)
                else:
                    unchanged.append(spec.id)
                uow.flush()
                existing = {
                    (c.provider, c.source): c
                    for c in uow.session.exec(
                        select(CalendarConnection).where(
                            col(CalendarConnection.vendor_id) == spec.id
                        )
                    ).all()
                }
                for calendar in spec.calendars:
                    known = existing.get((calendar.provider, calendar.source))
                    if known is not None:
                        # What the file gives wins; what it leaves out (a name or token an
                        # OAuth connect stored) is kept.
                        changes = {
                            key: value
                            for key, value in (
                                ("name", calendar.name),
                                ("credentials_ref", calendar.credentials),
                            )
                            if value is not None and getattr(known, key) != value
                        }
                        if changes:
                            for key, value in changes.items():
                                setattr(known, key, value)
                            uow.touch_schedule(spec.id)
                            if spec.id in unchanged:
                                unchanged.remove(spec.id)
                                updated.append(spec.id)
                        continue
                    connection = CalendarConnection(
                        id=new_id("cal"),
                        vendor_id=spec.id,
                        provider=calendar.provider,
                        source=calendar.source,
                        name=calendar.name,
                        credentials_ref=calendar.credentials,
                        created_at=now,
                    )
                    uow.session.add(connection)
                    existing[(calendar.provider, calendar.source)] = connection
                    calendars_added += 1
                    uow.touch_schedule(spec.id)
            uow.commit()
        return ImportReport(created, updated, unchanged, calendars_added)

    def all(self) -> list[Vendor]:
        with UnitOfWork(self.db, readonly=True) as uow:
            return list(uow.vendors.list())

    def get(self, vendor_id: str) -> tuple[Vendor, list[CalendarConnection]]:
        with UnitOfWork(self.db, readonly=True) as uow:
            vendor = uow.vendors.get(vendor_id)
            if vendor is None:
                raise NotFound(f"unknown vendor {vendor_id!r}", details={"vendorId": vendor_id})
            calendars = uow.session.exec(
                select(CalendarConnection)
                .where(col(CalendarConnection.vendor_id) == vendor_id)
                .order_by(col(CalendarConnection.created_at))
            ).all()
            return vendor, list(calendars)
