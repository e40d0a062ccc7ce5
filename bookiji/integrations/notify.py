"""Vendor notification channels: how a vendor hears about a new hold and how to answer it.

Every channel implements the `Notifier` port of `bookiji.services.ports`:
`send(destination, notification)` delivers once or raises `NotificationFailed` whose
`retryable` says whether the service should try again later. Tokens and retries are the
service's job; a channel only formats and delivers.

* `WebhookNotifier` ("webhook", `notify_webhook`): JSON POST signed per Standard Webhooks.
* `SmtpNotifier` ("email", `notify_email`): plain text + HTML over SMTP.
* `TwilioSmsNotifier` ("sms", `notify_sms`): a short SMS through the `twilio` SDK.
* `ConsoleNotifier` ("console", here): the embedded default; one line for the operator.

The heavy adapters are imported on first use (`from bookiji.integrations.notify import
WebhookNotifier` works), so the embedded default needs neither `twilio` nor
`standardwebhooks` installed.

Shared rules: times are shown in the vendor's IANA timezone (falling back to UTC, labelled
as such, when the zone is unknown); the single-use token goes only into what the vendor
receives, never into an error message, a log line or the console; error messages go
through `redact()` so nothing a server echoes can leak a secret either.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bookiji.services.ports import NotificationFailed, VendorNotification

if TYPE_CHECKING:
    from bookiji.integrations.notify_email import SmtpNotifier
    from bookiji.integrations.notify_sms import TwilioSmsNotifier
    from bookiji.integrations.notify_webhook import WebhookNotifier

__all__ = [
    "ConsoleNotifier",
    "LocalSlot",
    "NotificationFailed",
    "SmtpNotifier",
    "TwilioSmsNotifier",
    "VendorNotification",
    "WebhookNotifier",
    "answer_link",
    "local_slot",
    "one_line",
    "redact",
    "rfc3339_utc",
]

_LAZY = {
    "WebhookNotifier": "bookiji.integrations.notify_webhook",
    "SmtpNotifier": "bookiji.integrations.notify_email",
    "TwilioSmsNotifier": "bookiji.integrations.notify_sms",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


# -- formatting ----------------------------------------------------------------------------

# English names on purpose: strftime's %a/%b follow the process locale.
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
EN_DASH = "\u2013"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def _require_aware(name: str, moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise NotificationFailed(f"{name} must be timezone-aware", retryable=False)
    return moment


def _zone(name: str) -> tuple[tzinfo, str]:
    try:
        return ZoneInfo(name), name
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return UTC, "UTC"


def _offset(moment: datetime) -> str:
    delta = moment.utcoffset()
    minutes = int(delta.total_seconds() // 60) if delta is not None else 0
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours:02d}:{mins:02d}"


def _short_day(moment: datetime) -> str:
    return f"{_DAYS[moment.weekday()][:3]} {moment.day} {_MONTHS[moment.month - 1][:3]}"


def _long_day(moment: datetime) -> str:
    return f"{_DAYS[moment.weekday()]} {moment.day} {_MONTHS[moment.month - 1]} {moment.year}"


def _hm(moment: datetime) -> str:
    return f"{moment.hour:02d}:{moment.minute:02d}"


@dataclass(frozen=True)
class LocalSlot:
    """A notification's times in the vendor's zone, ready to print."""

    start: datetime
    end: datetime
    expires: datetime
    zone: str  # the IANA name shown; "UTC" when the vendor's zone is unknown

    def short(self, dash: str = EN_DASH) -> str:
        """`Tue 1 Dec 10:00-10:30` with an en dash (the end's day is repeated when it differs)."""
        if self.start.date() == self.end.date():
            return f"{_short_day(self.start)} {_hm(self.start)}{dash}{_hm(self.end)}"
        return f"{_short_day(self.start)} {_hm(self.start)}{dash}{_short_day(self.end)} " + _hm(
            self.end
        )

    def long(self) -> str:
        """`Tuesday 1 December 2026, 10:00-10:30 (Europe/London, UTC+00:00)`."""
        start_offset, end_offset = _offset(self.start), _offset(self.end)
        if self.start.date() == self.end.date():
            span = f"{_long_day(self.start)}, {_hm(self.start)}{EN_DASH}{_hm(self.end)}"
        else:
            span = (
                f"{_long_day(self.start)}, {_hm(self.start)} {EN_DASH} "
                f"{_long_day(self.end)}, {_hm(self.end)}"
            )
        offsets = start_offset if start_offset == end_offset else f"{start_offset} → {end_offset}"
        return f"{span} ({self.zone}, {offsets})"

    def expiry(self, *, with_zone: bool = True) -> str:
        """`Tue 1 Dec 10:10 (Europe/London)`."""
        when = f"{_short_day(self.expires)} {_hm(self.expires)}"
        return f"{when} ({self.zone})" if with_zone else when


def local_slot(notification: VendorNotification) -> LocalSlot:
    zone, label = _zone(notification.timezone)
    start = _require_aware("slot_start", notification.slot_start).astimezone(zone)
    end = _require_aware("slot_end", notification.slot_end).astimezone(zone)
    expires = _require_aware("expires_at", notification.expires_at).astimezone(zone)
    return LocalSlot(start, end, expires, label)


def rfc3339_utc(moment: datetime) -> str:
    """`2026-12-01T10:00:00Z` (fractions kept only when there are some)."""
    utc = _require_aware("time", moment).astimezone(UTC)
    text = utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def answer_link(notification: VendorNotification) -> str | None:
    """The answer URL carrying the token (`?token=`), or None without an answer URL.

    A URL that already carries the token is returned as is.
    """
    url = notification.answer_url
    if not url:
        return None
    if notification.token in url:
        return url
    separator = "&" if urlsplit(url).query else ("" if url.endswith("?") else "?")
    return f"{url}{separator}{urlencode({'token': notification.token})}"


def one_line(text: str, limit: int = 120) -> str:
    """Text safe to put on one line of a terminal or a header (no control characters)."""
    cleaned = _CONTROL.sub(" ", text).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every occurrence of each secret replaced; for messages that may echo."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text


# -- console --------------------------------------------------------------------------------


_console_log = logging.getLogger("bookiji.notify.console")
_console_to_log = threading.Event()


def console_notifications_to_log() -> None:
    """The daemon writes JSON log lines on stderr: console notifications become log records
    there too, or one raw text line would break every `jq` reading the log."""
    _console_to_log.set()


class ConsoleNotifier:
    """The embedded default: tells the operator, on one line, what the vendor was asked.

    The destination is ignored. The token is never printed: an operator answers by
    reservation id (`bookiji reservations confirm|decline <id>`).
    """

    channel = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, destination: str, notification: VendorNotification) -> None:
        slot = local_slot(notification)
        reservation = one_line(notification.reservation_id, 64)
        line = (
            f"bookiji: vendor {one_line(notification.vendor_name, 80)!r} "
            f"({one_line(notification.vendor_id, 64)}) was asked to confirm reservation "
            f"{reservation} for {slot.short()} ({slot.zone}), requested by "
            f"{one_line(notification.requester_id, 64)}; answer by {slot.expiry()}. "
            f"As operator: bookiji reservations confirm {reservation} "
            f"(or: bookiji reservations decline {reservation})\n"
        )
        if self._stream is None and _console_to_log.is_set():
            # The log outlives `requesters forget`: ids of the reservation, never the requester.
            requested_by = f", requested by {one_line(notification.requester_id, 64)}"
            _console_log.warning(
                line.rstrip("\n").removeprefix("bookiji: ").replace(requested_by, ""),
                extra={"reservation_id": notification.reservation_id,
                       "vendor_id": notification.vendor_id},
            )  # fmt: skip
            return
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            with self._lock:
                stream.write(line)
                stream.flush()
        except (OSError, ValueError) as exc:  # closed or broken stream
            raise NotificationFailed(
                f"console notification could not be written: {type(exc).__name__}",
                retryable=True,
            ) from None
