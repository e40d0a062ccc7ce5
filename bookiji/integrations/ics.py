"""Busy periods from an iCalendar (.ics) feed: a local file or a published http(s)/webcal URL.

The feed is read afresh on every call; keeping the last good answer is the sync job's work.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import httpx
import icalendar
import recurring_ical_events

from bookiji.domain.busy import BusyPeriod
from bookiji.services.ports import CalendarUnavailable

# Floating times and all-day dates are only pinned to instants after expansion, so the
# expansion window is widened by more than any UTC offset (-12h..+14h) and clipped afterwards.
_MARGIN = timedelta(days=1)

# Worth another try later; a redirect loop or an unusable URL is not.
_TRANSIENT = (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)
MAX_FEED_BYTES = 20 * 2**20


class IcsCalendarSource:
    """A vendor's ICS calendar as a CalendarSource.

    `vendor_timezone` gives meaning to what the file leaves open: floating times and all-day
    dates are the vendor's wall clock, so an all-day event blocks the vendor's whole local day.
    """

    def __init__(
        self,
        source: str,
        *,
        vendor_timezone: str,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        self._zone = ZoneInfo(vendor_timezone)
        self._timeout = timeout
        self._client = client
        scheme = urlsplit(source).scheme.lower()
        if scheme in ("webcal", "webcals"):
            # webcal:// is only a hint to open a calendar app; the feed itself is served over https.
            source = "https" + source[len(scheme) :]
            scheme = "https"
        self._url = source if scheme in ("http", "https") else None
        self._path = None if self._url else Path(source)
        self.display_name = _redact(source) if self._url else source

    def busy(self, start: datetime, end: datetime) -> list[BusyPeriod]:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("busy() needs timezone-aware datetimes")
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        calendar = self._parse(self._read())
        _separate_duplicate_masters(calendar)
        try:
            occurrences = recurring_ical_events.of(calendar).between(start - _MARGIN, end + _MARGIN)
            periods = [self._period(event, start, end) for event in occurrences]
        except (ValueError, KeyError) as exc:  # a broken event must not read as free time
            raise CalendarUnavailable(
                f"malformed event in {self.display_name}: {exc}", retryable=False
            ) from exc
        return sorted(p for p in periods if p is not None)

    def _period(self, event: icalendar.Event, start: datetime, end: datetime) -> BusyPeriod | None:
        if str(event.get("STATUS", "")).upper() == "CANCELLED":
            return None
        if str(event.get("TRANSP", "")).upper() == "TRANSPARENT":
            return None
        first, last = event.start, event.end
        if not isinstance(first, datetime) and not isinstance(last, datetime) and last <= first:
            last = first + timedelta(days=1)  # an all-day event ending where it starts: its day
        begins = max(self._instant(first), start)
        ends = min(self._instant(last), end)
        if begins >= ends:  # outside the window, or an instant (DATE-TIME without an end)
            return None
        summary = event.get("SUMMARY")
        return BusyPeriod(
            start=begins,
            end=ends,
            tentative=str(event.get("STATUS", "")).upper() == "TENTATIVE",
            summary=str(summary) if summary else None,
        )

    def _instant(self, value: date | datetime) -> datetime:
        if not isinstance(value, datetime):  # a DATE: the vendor's local midnight
            value = datetime(value.year, value.month, value.day, tzinfo=self._zone)
        if value.tzinfo is None:  # floating, or a TZID nobody defined: the vendor's wall clock
            value = value.replace(tzinfo=self._zone)
        return value.astimezone(UTC)

    def _read(self) -> bytes:
        if self._url is None:
            assert self._path is not None
            try:
                return self._path.read_bytes()
            except OSError as exc:
                raise CalendarUnavailable(
                    f"cannot read calendar file {self.display_name}: {exc.strerror or exc}",
                    retryable=False,
                ) from exc
        return self._fetch(self._url)

    def _fetch(self, url: str) -> bytes:
        client = self._client or httpx.Client(timeout=self._timeout, follow_redirects=True)
        try:
            with client.stream(
                "GET", url, timeout=self._timeout, follow_redirects=True
            ) as response:
                status = response.status_code
                if not response.is_success:
                    raise CalendarUnavailable(
                        f"calendar {self.display_name} answered HTTP {status}",
                        retryable=status in (408, 425, 429) or status >= 500,
                        status=status,
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_FEED_BYTES:  # a feed this big is a mistake or an attack
                        raise CalendarUnavailable(
                            f"calendar {self.display_name} is larger than "
                            f"{MAX_FEED_BYTES // 2**20} MiB",
                            retryable=False,
                        )
                return bytes(body)
        except httpx.TimeoutException as exc:
            raise CalendarUnavailable(
                f"calendar {self.display_name} did not answer within {self._timeout:g}s",
                retryable=True,
            ) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # Only the class name: transport messages are not ours to vet for secrets.
            raise CalendarUnavailable(
                f"cannot fetch calendar {self.display_name}: {type(exc).__name__}",
                retryable=isinstance(exc, _TRANSIENT),
            ) from exc
        finally:
            if self._client is None:
                client.close()

    def _parse(self, body: bytes) -> icalendar.Calendar:
        not_ics = CalendarUnavailable(
            f"{self.display_name} is not an iCalendar file", retryable=False
        )
        try:
            calendar = icalendar.Calendar.from_ical(body)
        except ValueError as exc:
            raise not_ics from exc
        if not isinstance(calendar, icalendar.Calendar):  # e.g. a bare VEVENT
            raise not_ics
        return calendar


def _separate_duplicate_masters(calendar: icalendar.Calendar) -> None:
    """Give each event that repeats another's UID (without a RECURRENCE-ID) a UID of its own.

    recurring_ical_events keeps one master per UID and drops the others, so a broken export
    with two events under one UID read the second one's time as free. Overrides stay with
    the first."""
    seen: dict[str, int] = {}
    for event in calendar.walk("VEVENT"):
        if "RECURRENCE-ID" in event or "UID" not in event:
            continue
        uid = str(event["UID"])
        count = seen.get(uid, 0)
        seen[uid] = count + 1
        if count:
            event["UID"] = icalendar.vText(f"{uid}\x00duplicate-{count}")


def shown_source(source: str) -> str:
    """A feed's address as operators are shown it (listings, `--json`): enough to recognise
    the calendar, never the password or private token a published URL carries."""
    scheme = urlsplit(source).scheme.lower()
    return _redact(source) if scheme in ("http", "https", "webcal", "webcals") else source


# Path segments an operator recognises a feed by, and no token looks like: short lower-case
# words (`published`, `calendar.ics`, `basic.ics`) and small numbers (iCloud's `/published/2/`).
_PLAIN_SEGMENT = re.compile(r"[a-z][a-z._-]{0,19}|[0-9]{1,3}")


def _redact(url: str) -> str:
    """The URL without userinfo, query or fragment, with every path segment that is not a
    plain word masked: published feeds carry their secret in the path (Google's
    `/private-<hex>/`, iCloud's `/published/2/<token>`, Outlook's
    `/owa/calendar/<id>@<domain>/<secret>/calendar.ics`), and mailbox ids are personal data.
    The host and the plain words are kept, so an operator still recognises the feed."""
    parts = urlsplit(url)
    path = "/".join(
        segment
        if not segment or _PLAIN_SEGMENT.fullmatch(segment)
        else "private-…"
        if segment.startswith("private-")
        else "…"
        for segment in parts.path.split("/")
    )
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], path, "", ""))
