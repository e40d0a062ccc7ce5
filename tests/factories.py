"""Test data builders that go through the real services."""

from __future__ import annotations

from datetime import UTC, datetime

from bookiji.domain.vendors import VendorSpec
from bookiji.services.clock import ManualClock
from bookiji.services.vendors import VendorService
from bookiji.store.database import Database

ALWAYS_OPEN = {day: ["00:00-24:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def vendor_spec(vendor_id: str = "v1", **overrides: object) -> VendorSpec:
    fields: dict[str, object] = {
        "id": vendor_id,
        "name": f"Vendor {vendor_id}",
        "timezone": "UTC",
        "slot_minutes": 60,
        "slot_interval_minutes": 5,  # a fine grid: tests pick any 5-minute start
        "buffer_before_minutes": 0,
        "buffer_after_minutes": 0,
        "min_notice_minutes": 0,
        "max_advance_days": 365,
        "currency": "gbp",
        "price": 5000,
        "deposit": 1000,
        "hours": ALWAYS_OPEN,
    }
    fields.update(overrides)
    return VendorSpec.from_documents(**fields)  # type: ignore[arg-type]


def add_vendor(db: Database, vendor_id: str = "v1", **overrides: object) -> VendorSpec:
    spec = vendor_spec(vendor_id, **overrides)
    VendorService(db, ManualClock(datetime(2026, 1, 1, tzinfo=UTC))).import_specs([spec])
    return spec
