"""The ICS adapter on real .ics files (tests/calendars/fixtures/ics) and over loopback HTTP."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from bookiji.domain.busy import BusyPeriod
from bookiji.integrations.ics import IcsCalendarSource, shown_source
from bookiji.services.ports import CalendarUnavailable
from tests.calendars.ics_support import FIXTURES, LoopbackCalendarServer, loopback_server


def utc(month: int, day: int, hour: int = 0, minute: int = 0, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def read(name: str, start: datetime, end: datetime, zone: str = "UTC") -> list[BusyPeriod]:
    return IcsCalendarSource(str(FIXTURES / name), vendor_timezone=zone).busy(start, end)


def spans(periods: list[BusyPeriod]) -> list[tuple[datetime, datetime, str | None]]:
    return [(p.start, p.end, p.summary) for p in periods]


# --- expansion ------------------------------------------------------------------------------


def test_weekly_rule_skips_exdate_and_adds_rdate() -> None:
    periods = read("weekly_exdate_rdate.ics", utc(11, 1), utc(11, 24))
    assert spans(periods) == [
        (utc(11, 2, 10), utc(11, 2, 11), "Yoga class"),
        (utc(11, 11, 15), utc(11, 11, 16), "Yoga class"),  # RDATE, same duration
        (utc(11, 16, 10), utc(11, 16, 11), "Yoga class"),
        (utc(11, 23, 10), utc(11, 23, 11), "Yoga class"),
    ]


def test_recurrence_override_moves_one_instance_and_cancels_another() -> None:
    periods = read("recurrence_override.ics", utc(11, 1), utc(12, 1))
    assert spans(periods) == [
        (utc(11, 3, 14), utc(11, 3, 15), "Team sync"),
        (utc(11, 12, 16), utc(11, 12, 17), "Team sync (moved)"),
        (utc(11, 24, 14), utc(11, 24, 15), "Team sync"),
    ]


def test_new_york_times_follow_the_dst_changes() -> None:
    spring = read("new_york_dst.ics", utc(3, 7), utc(3, 10))
    assert [(p.start, p.end) for p in spring] == [
        (utc(3, 7, 14), utc(3, 7, 15)),  # EST, UTC-5
        (utc(3, 8, 6), utc(3, 8, 8)),  # 01:00-04:00 local is two real hours
        (utc(3, 8, 13), utc(3, 8, 14)),  # EDT, UTC-4
        (utc(3, 9, 13), utc(3, 9, 14)),
    ]
    autumn = read("new_york_dst.ics", utc(10, 31), utc(11, 3))
    assert [p.start for p in autumn] == [utc(10, 31, 13), utc(11, 1, 14), utc(11, 2, 14)]


def test_a_custom_tzid_uses_the_vtimezone_in_the_file() -> None:
    # The vendor zone (UTC) must not leak in: the file defines +02:00 / +03:00 itself.
    periods = read("custom_vtimezone.ics", utc(1, 1), utc(12, 31))
    assert spans(periods) == [
        (utc(3, 10, 7), utc(3, 10, 8), "Winter review"),
        (utc(7, 10, 6), utc(7, 10, 7), "Summer review"),
    ]


def test_floating_times_are_the_vendors_wall_clock() -> None:
    periods = read("floating.ics", utc(1, 1), utc(12, 31), zone="Europe/London")
    assert spans(periods) == [
        (utc(1, 15, 9), utc(1, 15, 10), "Dentist"),  # GMT
        (utc(7, 15, 8), utc(7, 15, 11), "Summer fair"),  # BST
    ]


def test_all_day_events_block_the_vendors_local_days() -> None:
    periods = read("all_day.ics", utc(11, 1), utc(12, 1), zone="Asia/Kolkata")
    assert spans(periods) == [
        (utc(11, 7, 18, 30), utc(11, 8, 18, 30), "Diwali"),
        (utc(11, 10, 18, 30), utc(11, 13, 18, 30), "Conference"),  # three days
        (utc(11, 19, 18, 30), utc(11, 20, 18, 30), "Day off"),  # DATE without DTEND: one day
    ]


def test_all_day_events_west_of_utc_reach_into_the_next_utc_day() -> None:
    # 8 Nov in Los Angeles ends at 08:00Z on 9 Nov, hours after the UTC date has changed.
    periods = read("all_day.ics", utc(11, 9), utc(11, 9, 6), zone="America/Los_Angeles")
    assert spans(periods) == [(utc(11, 9), utc(11, 9, 6), "Diwali")]


def test_results_are_clipped_to_the_window() -> None:
    periods = read("all_day.ics", utc(11, 8), utc(11, 8, 12), zone="Asia/Kolkata")
    assert spans(periods) == [(utc(11, 8), utc(11, 8, 12), "Diwali")]


def test_duration_instead_of_dtend_and_instants_do_not_block() -> None:
    periods = read("duration.ics", utc(11, 30), utc(12, 10), zone="Europe/Berlin")
    assert spans(periods) == [
        (utc(12, 1, 9), utc(12, 1, 11, 30), "Workshop"),
        # no "Reminder (no end)": a DATE-TIME without DTEND or DURATION takes no time
        (utc(12, 2, 23), utc(12, 4, 23), "Retreat"),  # DATE + P2D, Berlin days
    ]


def test_transparent_and_cancelled_are_free_and_tentative_is_flagged() -> None:
    periods = read("status_transp.ics", utc(12, 7), utc(12, 8))
    assert [(p.summary, p.tentative) for p in periods] == [
        ("Standup", False),
        ("Maybe lunch", True),
        ("Focus time", False),
    ]


def test_rules_end_at_count_and_until() -> None:
    periods = read("count_until.ics", utc(12, 1), utc(12, 31))
    assert spans(periods) == [
        (utc(12, 1, 8), utc(12, 1, 9), "Physio"),
        (utc(12, 1, 19), utc(12, 1, 20, 30), "Night class"),
        (utc(12, 2, 8), utc(12, 2, 9), "Physio"),
        (utc(12, 3, 8), utc(12, 3, 9), "Physio"),
        (utc(12, 8, 19), utc(12, 8, 20, 30), "Night class"),
        (utc(12, 15, 19), utc(12, 15, 20, 30), "Night class"),  # UNTIL is inclusive
    ]


def write_events(tmp_path: Path, *events: str) -> str:
    body = (
        "".join(
            f"BEGIN:VEVENT\r\nDTSTAMP:20260101T000000Z\r\n{e.strip()}\r\nEND:VEVENT\r\n"
            for e in events
        )
        .replace("\n", "\r\n")
        .replace("\r\r\n", "\r\n")
    )
    path = tmp_path / "cal.ics"
    path.write_text(
        f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n{body}END:VCALENDAR\r\n",
        newline="",
    )
    return str(path)


def test_an_all_day_event_ending_where_it_starts_is_one_day(tmp_path: Path) -> None:
    """DTEND;VALUE=DATE equal to DTSTART (some exporters write it) read as no time at all."""
    path = write_events(
        tmp_path,
        "UID:a\nDTSTART;VALUE=DATE:20270104\nDTEND;VALUE=DATE:20270104\nSUMMARY:Day off",
    )
    periods = IcsCalendarSource(path, vendor_timezone="Europe/Berlin").busy(
        utc(1, 1, year=2027), utc(1, 15, year=2027)
    )
    assert spans(periods) == [
        (utc(1, 3, 23, year=2027), utc(1, 4, 23, year=2027), "Day off"),
    ]


def test_events_sharing_a_uid_are_all_busy(tmp_path: Path) -> None:
    """Two masters with one UID (a broken export): only the first was kept, so the second
    one's time was offered as free."""
    path = write_events(
        tmp_path,
        "UID:same\nDTSTART:20270104T100000Z\nDTEND:20270104T110000Z\nSUMMARY:A",
        "UID:same\nDTSTART:20270105T100000Z\nDTEND:20270105T110000Z\nSUMMARY:B",
        "UID:same\nDTSTART:20270106T100000Z\nDTEND:20270106T110000Z\nRRULE:FREQ=DAILY;COUNT=2"
        "\nSUMMARY:C",
    )
    periods = IcsCalendarSource(path, vendor_timezone="UTC").busy(
        utc(1, 1, year=2027), utc(1, 15, year=2027)
    )
    assert spans(periods) == [
        (utc(1, 4, 10, year=2027), utc(1, 4, 11, year=2027), "A"),
        (utc(1, 5, 10, year=2027), utc(1, 5, 11, year=2027), "B"),
        (utc(1, 6, 10, year=2027), utc(1, 6, 11, year=2027), "C"),
        (utc(1, 7, 10, year=2027), utc(1, 7, 11, year=2027), "C"),
    ]


# --- files ----------------------------------------------------------------------------------


def test_a_missing_file_is_not_retryable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ics"
    with pytest.raises(CalendarUnavailable) as caught:
        IcsCalendarSource(str(missing), vendor_timezone="UTC").busy(utc(1, 1), utc(1, 2))
    assert caught.value.retryable is False
    assert str(missing) in caught.value.message


@pytest.mark.parametrize(
    "body",
    [b"<html><body>Sign in</body></html>", b"", b"BEGIN:VEVENT\r\nEND:VEVENT\r\n"],
    ids=["html", "empty", "bare-vevent"],
)
def test_a_file_that_is_not_a_calendar(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "odd.ics"
    path.write_bytes(body)
    with pytest.raises(CalendarUnavailable, match="not an iCalendar file") as caught:
        IcsCalendarSource(str(path), vendor_timezone="UTC").busy(utc(1, 1), utc(1, 2))
    assert caught.value.retryable is False


def test_a_broken_event_makes_the_calendar_unavailable_rather_than_free(tmp_path: Path) -> None:
    path = tmp_path / "broken.ics"
    path.write_bytes(
        (FIXTURES / "duration.ics").read_bytes().replace(b"DURATION:PT2H30M", b"DURATION:soon")
    )
    with pytest.raises(CalendarUnavailable, match="malformed event") as caught:
        IcsCalendarSource(str(path), vendor_timezone="UTC").busy(utc(11, 30), utc(12, 10))
    assert caught.value.retryable is False


# --- HTTP -----------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[LoopbackCalendarServer]:
    with loopback_server() as running:
        yield running


def test_a_calendar_over_http_following_a_redirect(server: LoopbackCalendarServer) -> None:
    server.serve("/cal.ics", (FIXTURES / "status_transp.ics").read_bytes())
    url = server.serve("/old.ics", status=301, headers={"Location": "/cal.ics"})
    periods = IcsCalendarSource(url, vendor_timezone="UTC").busy(utc(12, 7), utc(12, 8))
    assert [p.summary for p in periods] == ["Standup", "Maybe lunch", "Focus time"]
    assert [r.path for r in server.requests] == ["/old.ics", "/cal.ics"]


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(401, False), (403, False), (404, False), (429, True), (500, True), (503, True)],
)
def test_http_errors(server: LoopbackCalendarServer, status: int, retryable: bool) -> None:
    url = server.serve("/cal.ics", b"nope", status=status)
    with pytest.raises(CalendarUnavailable) as caught:
        IcsCalendarSource(url, vendor_timezone="UTC").busy(utc(1, 1), utc(1, 2))
    assert (caught.value.retryable, caught.value.status) == (retryable, status)
    assert f"HTTP {status}" in caught.value.message
    assert url in caught.value.message


def test_a_stalled_server_times_out_as_retryable(server: LoopbackCalendarServer) -> None:
    url = server.serve("/slow.ics", b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", delay=10)
    began = time.monotonic()
    with pytest.raises(CalendarUnavailable) as caught:
        IcsCalendarSource(url, vendor_timezone="UTC", timeout=0.3).busy(utc(1, 1), utc(1, 2))
    assert time.monotonic() - began < 5
    assert caught.value.retryable is True
    assert caught.value.status is None


def test_a_refused_connection_is_retryable() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and is closed now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = IcsCalendarSource(f"http://127.0.0.1:{port}/cal.ics", vendor_timezone="UTC")
    with pytest.raises(CalendarUnavailable) as caught:
        source.busy(utc(1, 1), utc(1, 2))
    assert caught.value.retryable is True


def test_a_redirect_loop_is_not_retryable(server: LoopbackCalendarServer) -> None:
    url = server.serve("/loop.ics", status=302, headers={"Location": "/loop.ics"})
    with pytest.raises(CalendarUnavailable, match="TooManyRedirects") as caught:
        IcsCalendarSource(url, vendor_timezone="UTC").busy(utc(1, 1), utc(1, 2))
    assert caught.value.retryable is False


def test_a_garbage_body_is_not_a_calendar(server: LoopbackCalendarServer) -> None:
    url = server.serve("/cal.ics", b"\x89PNG\r\n\x1a\n garbage \x00\xff")
    with pytest.raises(CalendarUnavailable, match="not an iCalendar file") as caught:
        IcsCalendarSource(url, vendor_timezone="UTC").busy(utc(1, 1), utc(1, 2))
    assert caught.value.retryable is False


def test_credentials_in_the_url_are_used_but_never_echoed(
    server: LoopbackCalendarServer,
) -> None:
    server.serve("/private/ok.ics", (FIXTURES / "status_transp.ics").read_bytes())
    server.serve("/private/gone.ics", b"", status=404)
    secret_url = server.base_url.replace("://", "://alice:s3cr3t-pw@")
    ok = IcsCalendarSource(f"{secret_url}/private/ok.ics?token=t0k3n", vendor_timezone="UTC")
    assert len(ok.busy(utc(12, 7), utc(12, 8))) == 3
    assert server.requests[-1].authorization == "Basic YWxpY2U6czNjcjN0LXB3"  # alice:s3cr3t-pw

    gone = IcsCalendarSource(f"{secret_url}/private/gone.ics?token=t0k3n", vendor_timezone="UTC")
    with pytest.raises(CalendarUnavailable) as caught:
        gone.busy(utc(12, 7), utc(12, 8))
    message = caught.value.message
    assert f"{server.base_url}/private/gone.ics" in message
    for secret in ("alice", "s3cr3t-pw", "t0k3n"):
        assert secret not in message
        assert secret not in gone.display_name


def test_google_private_feed_secrets_in_the_path_are_masked(
    server: LoopbackCalendarServer,
) -> None:
    url = server.serve("/calendar/ical/me/private-0123abcd/basic.ics", b"", status=404)
    source = IcsCalendarSource(url, vendor_timezone="UTC")
    with pytest.raises(CalendarUnavailable) as caught:
        source.busy(utc(1, 1), utc(1, 2))
    assert "0123abcd" not in caught.value.message and "private-…" in caught.value.message


ICLOUD_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDEyMw"
OUTLOOK_ID = "0a1b2c3d4e5f60718293a4b5c6d7e8f9@contoso.com"
OUTLOOK_SECRET = "a8f5f167f44f4964e6c998dee827110c11386758013718063"


@pytest.mark.parametrize(
    ("path", "shown_path", "secrets"),
    [
        (f"/published/2/{ICLOUD_TOKEN}", "/published/2/…", [ICLOUD_TOKEN]),
        (
            f"/owa/calendar/{OUTLOOK_ID}/{OUTLOOK_SECRET}/calendar.ics",
            "/owa/calendar/…/…/calendar.ics",
            [OUTLOOK_ID, OUTLOOK_SECRET, "contoso"],
        ),
    ],
    ids=["icloud", "outlook"],
)
def test_published_feed_tokens_in_the_path_are_masked(
    server: LoopbackCalendarServer, path: str, shown_path: str, secrets: list[str]
) -> None:
    """Only Google's `private-...` segment was masked: iCloud's and Outlook's published-feed
    secrets were printed in sync output, `calendars list` and the stored last error."""
    url = server.serve(path, b"", status=404)
    source = IcsCalendarSource(url, vendor_timezone="UTC")
    with pytest.raises(CalendarUnavailable) as caught:
        source.busy(utc(1, 1), utc(1, 2))
    for shown in (caught.value.message, source.display_name, shown_source(url)):
        assert f"{server.base_url}{shown_path}" in shown
        for secret in secrets:
            assert secret not in shown


def test_an_oversized_feed_is_refused(
    server: LoopbackCalendarServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bookiji.integrations.ics as ics

    monkeypatch.setattr(ics, "MAX_FEED_BYTES", 1024)
    url = server.serve("/big.ics", b"BEGIN:VCALENDAR\r\n" + b"X-PAD:" + b"x" * 4096 + b"\r\n")
    with pytest.raises(CalendarUnavailable, match="larger than") as caught:
        IcsCalendarSource(url, vendor_timezone="UTC").busy(utc(1, 1), utc(1, 2))
    assert caught.value.retryable is False


def test_webcal_is_fetched_over_https() -> None:
    seen: list[httpx.URL] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, content=(FIXTURES / "status_transp.ics").read_bytes())

    client = httpx.Client(transport=httpx.MockTransport(answer))
    source = IcsCalendarSource(
        "webcal://calendar.example.com/feed.ics", vendor_timezone="UTC", client=client
    )
    assert len(source.busy(utc(12, 7), utc(12, 8))) == 3
    assert [str(url) for url in seen] == ["https://calendar.example.com/feed.ics"]
