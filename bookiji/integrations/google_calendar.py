"""Busy periods from a Google Calendar, read with google-api-python-client.

`events.list` (singleEvents, ordered by start, paginated) rather than `freebusy.query`:
free/busy answers lose the difference between confirmed and tentative events and the
summaries that `--explain` shows.

Errors become `CalendarUnavailable`: 401/403/404 and other client errors are not retryable
(an operator must reconnect or fix the calendar id), 429, 5xx, timeouts and connection
errors are retried here a bounded number of times and then reported as retryable. Google's
403 `rateLimitExceeded`/`userRateLimitExceeded` is a rate limit, not a permission problem,
and is treated like 429. Messages carry status codes and Google's short reason codes only:
never tokens, secrets, or response bodies.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import google.auth.credentials
import google.auth.exceptions
import google_auth_httplib2
import httplib2
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from bookiji.domain.busy import BusyPeriod
from bookiji.integrations.google_oauth import (
    CALENDAR_READONLY_SCOPE,
    DEFAULT_SCOPES,
    GoogleConsentError,
    credentials_from_authorized_user_info,
    credentials_from_service_account_info,
    load_google_credentials,
    run_google_consent,
)
from bookiji.services.ports import CalendarUnavailable

__all__ = [
    "CALENDAR_READONLY_SCOPE",
    "DEFAULT_SCOPES",
    "GoogleCalendarSource",
    "GoogleConsentError",
    "credentials_from_authorized_user_info",
    "credentials_from_service_account_info",
    "load_google_credentials",
    "run_google_consent",
]

log = logging.getLogger(__name__)

_PAGE_SIZE = 250  # Google's default; the maximum is 2500
_MAX_PAGES = 200  # a runaway nextPageToken loop must end
_BACKOFF_BASE = 0.5
_RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
_REASON_RE = re.compile(r"^[A-Za-z_]{1,64}$")


class _Retry(Exception):
    """One attempt failed in a way that another attempt may fix."""

    def __init__(self, error: CalendarUnavailable, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class GoogleCalendarSource:
    """A `CalendarSource` for one Google calendar (an id such as `primary` or an e-mail).

    `credentials` are google-auth credentials (see `load_google_credentials`); they are
    scoped to calendar read-only if they have no scopes yet. `api_base_url` replaces the
    Calendar API base *including* the service path, exactly like google-api-python-client's
    `client_options.api_endpoint` (e.g. `http://127.0.0.1:8080/calendar/v3/`).
    One instance is safe to share between threads (calls are serialised: httplib2 is not
    thread-safe).
    """

    def __init__(
        self,
        calendar_id: str,
        *,
        credentials: google.auth.credentials.Credentials,
        api_base_url: str | None = None,
        timeout: float = 10.0,
        max_attempts: int = 3,
        max_retry_wait: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.calendar_id = calendar_id
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep
        self._lock = threading.Lock()
        scope_if_required: Any = google.auth.credentials.with_scopes_if_required
        credentials = scope_if_required(credentials, list(DEFAULT_SCOPES))
        self._http = google_auth_httplib2.AuthorizedHttp(
            credentials, http=httplib2.Http(timeout=timeout)
        )
        client_options: dict[str, str] = {}
        if api_base_url:
            # The client joins method paths onto this base; without the slash the last
            # path segment ("v3") would be dropped.
            client_options["api_endpoint"] = api_base_url.rstrip("/") + "/"
        self._service = build(
            "calendar",
            "v3",
            http=self._http,
            static_discovery=True,
            cache_discovery=False,
            client_options=client_options or None,
        )

    # ------------------------------------------------------------------ public

    def busy(self, start: datetime, end: datetime) -> list[BusyPeriod]:
        """Busy periods overlapping [start, end), clipped, sorted; see `CalendarSource`."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("busy() needs timezone-aware datetimes")
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        if start >= end:
            return []
        with self._lock:
            periods: list[BusyPeriod] = []
            for page in self._pages(start, end):
                zone = _zone(page.get("timeZone"), self.calendar_id)
                for item in page["items"]:
                    period = self._period(item, zone, start, end)
                    if period is not None:
                        periods.append(period)
        periods.sort(key=lambda p: (p.start, p.end, p.tentative))
        return periods

    @property
    def refresh_token(self) -> str | None:
        """The refresh token the credentials hold now: google-auth keeps a new one when the
        token endpoint hands one back (store it); None for service accounts."""
        token = getattr(self._http.credentials, "refresh_token", None)
        return token if isinstance(token, str) else None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GoogleCalendarSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GoogleCalendarSource({self.calendar_id!r})"

    # ------------------------------------------------------------------ paging

    def _pages(self, start: datetime, end: datetime) -> Any:
        events = self._service.events()
        request = events.list(
            calendarId=self.calendar_id,
            timeMin=_rfc3339(start),
            timeMax=_rfc3339(end),
            singleEvents=True,
            orderBy="startTime",
            maxResults=_PAGE_SIZE,
            # No timeZone parameter: the answer's timeZone must stay the calendar's own,
            # which is what all-day dates are in.
        )
        for _ in range(_MAX_PAGES):
            page = self._execute(request)
            yield page
            request = events.list_next(request, page)
            if request is None:
                return
        raise CalendarUnavailable(
            f"Google Calendar {self.calendar_id}: more than {_MAX_PAGES} pages of events",
            retryable=False,
        )

    def _execute(self, request: Any) -> dict[str, Any]:
        attempt = 1
        while True:
            try:
                return self._execute_once(request)
            except _Retry as retry:
                if attempt >= self.max_attempts:
                    raise retry.error from None
                wait = self._wait_before(attempt, retry.retry_after)
                log.warning(
                    "%s; retrying in %.2fs (attempt %d of %d)",
                    retry.error.message,
                    wait,
                    attempt + 1,
                    self.max_attempts,
                )
                self._sleep(wait)
                attempt += 1

    def _wait_before(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_wait))
        ceiling = min(self.max_retry_wait, _BACKOFF_BASE * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 (jitter, not crypto)

    def _execute_once(self, request: Any) -> dict[str, Any]:
        where = f"Google Calendar {self.calendar_id}"
        try:
            # num_retries=0: the library's own retry ignores Retry-After and sleeps up to
            # 2**n seconds at random; we retry above instead.
            body = request.execute(num_retries=0)
        except HttpError as exc:
            raise self._http_error(exc) from None
        except google.auth.exceptions.RefreshError as exc:
            # google-auth has already retried 5xx/429 answers of the token endpoint three
            # times with its own backoff (about 3 s); retrying here would multiply that.
            code = _oauth_error_code(exc)
            retryable = bool(getattr(exc, "retryable", False))
            raise CalendarUnavailable(
                f"{where}: could not obtain a Google access token"
                + (f" ({code})" if code else "")
                + ("" if retryable else "; the connection must be re-authorised"),
                retryable=retryable,
            ) from None
        except google.auth.exceptions.TransportError as exc:
            raise _Retry(
                CalendarUnavailable(
                    f"{where}: could not reach Google's token endpoint ({_cause_name(exc)})",
                    retryable=True,
                )
            ) from None
        except TimeoutError:
            raise _Retry(
                CalendarUnavailable(f"{where}: no answer within {self.timeout:g}s", retryable=True)
            ) from None
        except (OSError, httplib2.HttpLib2Error, http.client.HTTPException) as exc:
            raise _Retry(
                CalendarUnavailable(
                    f"{where}: connection failed ({type(exc).__name__})", retryable=True
                )
            ) from None
        except google.auth.exceptions.GoogleAuthError as exc:
            raise CalendarUnavailable(
                f"{where}: Google credentials are not usable ({type(exc).__name__})",
                retryable=False,
            ) from None
        # The JSON model returns the raw text when the body is not JSON; check the shape.
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("items", []), list)
            or not all(isinstance(i, dict) for i in body.get("items", []))
        ):
            raise CalendarUnavailable(
                f"{where}: Google answered with a malformed events list", retryable=False
            )
        body.setdefault("items", [])
        return body

    def _http_error(self, exc: HttpError) -> Exception:
        status = int(exc.resp.status)
        reason = _google_reason(exc.content)
        detail = f"HTTP {status}" + (f" {reason}" if reason else "")
        where = f"Google Calendar {self.calendar_id}"
        if (
            status == 429
            or status >= 500
            or status == 408
            or (status == 403 and reason in _RATE_LIMIT_REASONS)
        ):
            return _Retry(
                CalendarUnavailable(
                    f"{where}: Google is busy or failing ({detail})", retryable=True, status=status
                ),
                retry_after=_retry_after(exc.resp),
            )
        if status == 401:
            message = f"{where}: Google rejected the credentials ({detail}); reconnect the calendar"
        elif status == 403:
            message = f"{where}: access denied ({detail}); share the calendar or reconnect"
        elif status == 404:
            message = f"{where}: calendar not found ({detail})"
        else:
            message = f"{where}: request refused ({detail})"
        return CalendarUnavailable(message, retryable=False, status=status)

    # ------------------------------------------------------------------ events

    def _period(
        self, item: Mapping[str, Any], zone: tzinfo, start: datetime, end: datetime
    ) -> BusyPeriod | None:
        if item.get("status") == "cancelled" or item.get("transparency") == "transparent":
            return None
        response = _self_response(item)
        if response == "declined":
            return None
        try:
            event_start = _instant(item["start"], zone)
            event_end = _instant(item["end"], zone)
        except (KeyError, TypeError, ValueError):
            raise CalendarUnavailable(
                f"Google Calendar {self.calendar_id}: an event has a malformed start or end",
                retryable=False,
            ) from None
        clipped_start, clipped_end = max(event_start, start), min(event_end, end)
        if clipped_start >= clipped_end:
            return None  # outside the window, or zero length
        summary = item.get("summary")
        return BusyPeriod(
            clipped_start,
            clipped_end,
            tentative=item.get("status") == "tentative" or response == "tentative",
            summary=summary if isinstance(summary, str) else None,
        )


# ---------------------------------------------------------------------- helpers


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _zone(name: object, calendar_id: str) -> tzinfo:
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("Google Calendar %s: unknown time zone %r; using UTC", calendar_id, name)
    return UTC


def _instant(when: Mapping[str, Any], zone: tzinfo) -> datetime:
    """A start/end object as an aware UTC instant; all-day dates are midnight in `zone`."""
    if "dateTime" in when:
        moment = datetime.fromisoformat(str(when["dateTime"]))
        if moment.tzinfo is None:  # Google allows it when timeZone is given
            local = _zone(when["timeZone"], "") if when.get("timeZone") else zone
            moment = moment.replace(tzinfo=local)
        return moment.astimezone(UTC)
    day = date.fromisoformat(str(when["date"]))
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def _self_response(item: Mapping[str, Any]) -> str | None:
    attendees = item.get("attendees")
    if not isinstance(attendees, list):
        return None
    for attendee in attendees:
        if isinstance(attendee, dict) and attendee.get("self"):
            status = attendee.get("responseStatus")
            return status if isinstance(status, str) else None
    return None


def _google_reason(content: bytes | str | None) -> str | None:
    """The first `errors[].reason` (or `status`) of Google's error JSON, if well-formed."""
    try:
        data = json.loads(content or b"")
        error = data["error"]
        candidates = [e.get("reason") for e in error.get("errors") or [] if isinstance(e, dict)]
        candidates.append(error.get("status"))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    for candidate in candidates:
        if isinstance(candidate, str) and _REASON_RE.match(candidate):
            return candidate
    return None


def _oauth_error_code(exc: google.auth.exceptions.RefreshError) -> str | None:
    """The RFC 6749 `error` code of a failed token request (never its description)."""
    for arg in exc.args[1:]:
        if isinstance(arg, dict):
            code = arg.get("error")
            if isinstance(code, str) and _REASON_RE.match(code):
                return code
    return None


def _cause_name(exc: BaseException) -> str:
    cause = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    return type(cause).__name__


def _retry_after(headers: Mapping[str, Any]) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    value = str(value).strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
