"""The availability service on real databases: the document, the cache, and holds agreeing
with what availability lists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bookiji.domain.errors import NotFound, SlotUnavailable, ValidationFailed
from bookiji.domain.states import StageTTLs
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.availability import AvailabilityService
from bookiji.services.clock import ManualClock, SystemClock
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.store.database import Database
from bookiji.store.models import BusyInterval, CalendarConnection
from bookiji.store.uow import UnitOfWork
from tests.factories import add_vendor

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)  # Tuesday
DAY = datetime(2026, 12, 2, tzinfo=UTC)  # Wednesday
WEEKDAYS_9_TO_5 = {day: ["09:00-17:00"] for day in ("mon", "tue", "wed", "thu", "fri")}


def z(hour: float, day: datetime = DAY) -> datetime:
    return day + timedelta(hours=hour)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def services(db: Database, clock: ManualClock) -> tuple[AvailabilityService, ReservationService]:
    add_vendor(
        db,
        "salon",
        timezone="Europe/London",
        hours=WEEKDAYS_9_TO_5,
        slot_minutes=60,
        slot_interval_minutes=30,
        buffer_before_minutes=15,
        buffer_after_minutes=15,
        min_notice_minutes=60,
        max_advance_days=30,
    )
    add_vendor(db, "other")
    return (
        AvailabilityService(db, clock, cache_ttl=timedelta(minutes=5)),
        ReservationService(db, clock, StageTTLs()),
    )


def starts(document: dict[str, object]) -> list[str]:
    return [s["startTime"][11:16] for s in document["slots"]]  # type: ignore[index,union-attr]


def hold(reservations: ReservationService, vendor: str, start: datetime, minutes: int = 60) -> str:
    return reservations.create_hold(
        HoldRequest(vendor, start, start + timedelta(minutes=minutes), "req"), actor="test"
    ).reservation_id


def test_the_document_has_the_partner_api_shape(
    services: tuple[AvailabilityService, ReservationService],
) -> None:
    availability, _ = services
    document = availability.availability("salon", z(0), z(24))
    assert set(document) == {
        "vendorId",
        "timezone",
        "startTime",
        "endTime",
        "slotDuration",
        "slots",
        "sources",
        "cached",
        "computedAt",
    }
    assert document["vendorId"] == "salon" and document["timezone"] == "Europe/London"
    assert document["startTime"] == "2026-12-02T00:00:00Z"
    assert document["slotDuration"] == 60
    assert starts(document)[0] == "09:00" and starts(document)[-1] == "16:00"
    assert len(document["slots"]) == 15  # 09:00..16:00 every 30 min
    first = document["slots"][0]
    assert set(first) == {"startTime", "endTime", "confidence", "reasons"}
    assert first["endTime"] == "2026-12-02T10:00:00Z" and first["confidence"] == 1.0
    assert document["sources"] == [] and document["cached"] is False
    bare = availability.availability("salon", z(0), z(24), include_confidence=False)
    assert set(bare["slots"][0]) == {"startTime", "endTime"}
    custom = availability.availability("salon", z(0), z(24), slot_minutes=90)
    assert custom["slotDuration"] == 90 and starts(custom)[-1] == "15:30"


def test_a_hold_takes_its_block_out_of_availability_and_cancel_gives_it_back(
    services: tuple[AvailabilityService, ReservationService],
) -> None:
    availability, reservations = services
    before = availability.availability("salon", z(0), z(24))
    rid = hold(reservations, "salon", z(12))
    after = availability.availability("salon", z(0), z(24))
    assert after["cached"] is False  # the hold bumped the vendor's schedule version
    # Block [11:45, 13:15) with 15-min buffers on both sides of every slot.
    assert "12:00" not in starts(after)
    assert "11:00" not in starts(after) and "13:00" not in starts(after)
    assert "10:30" in starts(after) and "13:30" in starts(after)
    reservations.cancel(rid, actor="test")
    assert starts(availability.availability("salon", z(0), z(24))) == starts(before)


def test_holds_are_accepted_exactly_for_listed_slots(
    services: tuple[AvailabilityService, ReservationService],
) -> None:
    availability, reservations = services
    hold(reservations, "salon", z(12))
    listed = set(starts(availability.availability("salon", z(0), z(24))))
    for minutes in range(7 * 60, 18 * 60, 15):
        start = DAY + timedelta(minutes=minutes)
        verdict = availability.explain("salon", start)
        assert verdict["bookable"] == (start.strftime("%H:%M") in listed), start
    with pytest.raises(SlotUnavailable, match="not a slot start"):
        hold(reservations, "salon", z(9.25))
    with pytest.raises(SlotUnavailable, match=r"hold/booking res_\w+ \(HELD, slot 12:00-13:00Z\)"):
        hold(reservations, "salon", z(11))  # [11:00,12:00) meets the 12:00 hold's buffer
    with pytest.raises(SlotUnavailable, match="closed on Saturday"):
        hold(reservations, "salon", z(10, DAY + timedelta(days=3)))
    with pytest.raises(SlotUnavailable, match="not within the opening hours"):
        hold(reservations, "salon", z(16.5))
    hold(reservations, "salon", z(9.5))  # listed: accepted


def test_the_cache_answers_until_something_changes(
    services: tuple[AvailabilityService, ReservationService], clock: ManualClock
) -> None:
    availability, reservations = services
    assert availability.availability("salon", z(0), z(24))["cached"] is False
    assert availability.availability("salon", z(0), z(24))["cached"] is True
    hold(reservations, "other", z(10))  # another vendor's hold does not matter
    assert availability.availability("salon", z(0), z(24))["cached"] is True
    clock.advance(timedelta(minutes=6))  # past the TTL
    assert availability.availability("salon", z(0), z(24))["cached"] is False
    hold(reservations, "salon", z(14))
    fresh = availability.availability("salon", z(0), z(24))
    assert fresh["cached"] is False and "14:00" not in starts(fresh)


def test_the_quick_cached_answer_is_the_full_answer_or_nothing(
    services: tuple[AvailabilityService, ReservationService],
) -> None:
    """The API answers from `cached_json` on its event loop and computes in a thread only
    when it says None: it must never answer differently from `availability_json`."""
    availability, reservations = services
    assert availability.cached_json("salon", z(0), z(24)) is None  # nothing cached yet
    computed = availability.availability_json("salon", z(0), z(24))
    assert availability.cached_json("salon", z(0), z(24)) == (
        availability.availability_json("salon", z(0), z(24))
    )
    assert b'"cached":false' in computed
    hold(reservations, "salon", z(14))  # the schedule changed: the cached answer is void
    assert availability.cached_json("salon", z(0), z(24)) is None
    with pytest.raises(NotFound):
        availability.cached_json("nobody", z(0), z(24))
    with pytest.raises(ValidationFailed):
        availability.cached_json("salon", z(24), z(0))


def test_cached_answers_drop_slots_that_time_has_ruled_out(
    services: tuple[AvailabilityService, ReservationService], clock: ManualClock
) -> None:
    availability, _ = services
    clock.set(datetime(2026, 12, 2, 7, 0, tzinfo=UTC))
    first = availability.availability("salon", z(0), z(24))
    assert starts(first)[0] == "09:00"
    clock.advance(timedelta(minutes=4))  # 08:04 + 60 min notice: 09:00 is still fine
    assert starts(availability.availability("salon", z(0), z(24)))[0] == "09:00"
    clock.set(datetime(2026, 12, 2, 8, 4, tzinfo=UTC) + timedelta(minutes=0))
    availability.cache.clear()
    availability.availability("salon", z(0), z(24))
    clock.set(datetime(2026, 12, 2, 8, 8, tzinfo=UTC))  # 09:08 earliest: 09:00 must go
    cached = availability.availability("salon", z(0), z(24))
    assert cached["cached"] is True and starts(cached)[0] == "09:30"


def test_calendar_busy_times_block_and_are_explained(
    services: tuple[AvailabilityService, ReservationService], db: Database
) -> None:
    availability, reservations = services
    with UnitOfWork(db) as uow:
        uow.session.add(
            CalendarConnection(
                id="cal_1",
                vendor_id="salon",
                provider="ics",
                source="/tmp/x.ics",
                name="work",
                status="ok",
                last_synced_at=NOW,
                created_at=NOW,
            )
        )
        uow.flush()
        uow.session.add(
            BusyInterval(
                connection_id="cal_1",
                vendor_id="salon",
                start_at=z(10),
                end_at=z(10.5),
                summary="Dentist",
                fetched_at=NOW,
            )
        )
        uow.touch_schedule("salon")
        uow.commit()
    document = availability.availability("salon", z(0), z(24))
    assert document["sources"] == [
        {
            "calendar": "ics:work",
            "provider": "ics",
            "fetchedAt": "2026-12-01T08:00:00Z",
            "status": "ok",
        }
    ]
    assert "09:30" not in starts(document) and "10:00" not in starts(document)
    verdict = availability.explain("salon", z(10))
    assert not verdict["bookable"]
    assert any("ics:work 'Dentist'" in r["message"] for r in verdict["reasons"])
    with pytest.raises(SlotUnavailable, match="calendar event ics:work, ") as refused:
        hold(reservations, "salon", z(10))
    assert "Dentist" not in str(refused.value.message) + str(refused.value.details)


def test_a_refusal_names_no_event_title_and_no_other_partners_hold(
    services: tuple[AvailabilityService, ReservationService], db: Database
) -> None:
    """The event title is the vendor's private data (often a client's name) and another
    partner's hold is none of this partner's business; its own hold it may know by id.
    Only the operator's `--explain` shows the title (test above)."""
    _, reservations = services
    keys = ApiKeyService(db, SystemClock())
    keys.add_partner("acme", "Acme")
    keys.add_partner("globex", "Globex")
    with UnitOfWork(db) as uow:
        uow.session.add(CalendarConnection(
            id="cal_1", vendor_id="salon", provider="ics", source="/tmp/x.ics",
            name="ana@example.com", status="ok", last_synced_at=NOW, created_at=NOW,
        ))  # fmt: skip
        uow.flush()
        uow.session.add(BusyInterval(
            connection_id="cal_1", vendor_id="salon", start_at=z(10), end_at=z(10.5),
            summary="Therapy - Jane Doe", fetched_at=NOW,
        ))  # fmt: skip
        uow.touch_schedule("salon")
        uow.commit()

    def refusal(start: float, partner: str) -> str:
        request = HoldRequest("salon", z(start), z(start + 1), "req", partner_id=partner)
        with pytest.raises(SlotUnavailable) as refused:
            reservations.create_hold(request, actor=f"partner:{partner}")
        return f"{refused.value.message} {refused.value.details}"

    told = refusal(10, "acme")
    assert "a busy time in the vendor's calendar, " in told
    assert "Jane" not in told and "ana@example.com" not in told and "cal_1" not in told
    mine = reservations.create_hold(
        HoldRequest("salon", z(13), z(14), "req", partner_id="acme"), actor="partner:acme"
    ).reservation_id
    assert f"hold/booking {mine} (" in refusal(13, "acme")
    theirs = refusal(13, "globex")
    assert "another hold or booking, " in theirs and mine not in theirs


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"start": z(10), "end": z(9)}, ValidationFailed),
        ({"start": z(0), "end": z(0) + timedelta(days=94)}, ValidationFailed),
        ({"slot_minutes": 4}, ValidationFailed),
        ({"slot_minutes": 1441}, ValidationFailed),
        ({"vendor": "nobody"}, NotFound),
    ],
)
def test_bad_queries_get_clear_errors(
    services: tuple[AvailabilityService, ReservationService],
    kwargs: dict[str, object],
    error: type[Exception],
) -> None:
    availability, _ = services
    args = {"vendor": "salon", "start": z(0), "end": z(24), **kwargs}
    with pytest.raises(error):
        availability.availability(
            args.pop("vendor"),  # type: ignore[arg-type]
            args.pop("start"),  # type: ignore[arg-type]
            args.pop("end"),  # type: ignore[arg-type]
            **args,  # type: ignore[arg-type]
        )
