"""Vendor notifications by SMS through Twilio's Programmable Messaging, with the `twilio` SDK.

`Client(...).messages.create(to=, from_=, body=)`: one short body (at most 320 characters
when the answer link allows it; plain ASCII so it stays in the GSM-7 alphabet) with the slot
in the vendor's zone and the answer link, or the single-use code when there is no answer URL.

`base_url` (e.g. `http://127.0.0.1:8099`) sends the SDK's requests elsewhere than
`https://api.twilio.com`. The SDK has no base-URL setting (`edge`/`region` only rewrite
`*.twilio.com` host names), so this uses its documented extension point instead: a custom
`http_client` (a `TwilioHttpClient` subclass) that swaps the scheme and host of every
`*.twilio.com` URL for the configured ones and keeps path and query.

Outcome: `TwilioRestException` with 408, 429 or 5xx, timeouts and connection errors are
retryable; other 4xx (21211 invalid 'To' number, 20003 bad credentials, ...) are not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from bookiji.integrations.notify import answer_link, local_slot, one_line, redact
from bookiji.services.ports import NotificationFailed, VendorNotification

__all__ = ["SMS_SOFT_LIMIT", "TwilioSmsNotifier", "sms_body"]

SMS_SOFT_LIMIT = 320  # two GSM-7 segments' worth of text; Twilio accepts up to 1600
_TWILIO_MAX = 1600
_RETRYABLE_4XX = frozenset({408, 429})


def sms_body(notification: VendorNotification) -> str:
    """The shortest-enough text: details are dropped before the link or the code ever is."""
    slot = local_slot(notification)
    when = f"{slot.short(dash='-')} ({slot.zone})"
    link = answer_link(notification)
    answer = (
        f"Confirm or decline: {link}"
        if link
        else f"To confirm or decline, give your booking platform this code: {notification.token}"
    )
    rid = notification.reservation_id
    requester = one_line(notification.requester_id, 40)
    candidates = (
        f"Bookiji booking request {rid}: {when}, from {requester}. "
        f"Answer by {slot.expiry(with_zone=False)}. {answer}",
        f"Bookiji booking request {rid}: {when}. Answer by {slot.expiry(with_zone=False)}. "
        f"{answer}",
        f"Booking request {rid}: {when}. {answer}",
    )
    for text in candidates:
        if len(text) <= SMS_SOFT_LIMIT:
            return text
    return candidates[-1]


class _BaseUrlHttpClient(TwilioHttpClient):  # type: ignore[misc]  # twilio is untyped
    """Sends what the SDK addresses to `https://*.twilio.com/...` to `base_url` instead."""

    def __init__(self, base_url: str, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("base_url must be an absolute http(s) URL")
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host == "twilio.com" or host.endswith(".twilio.com"):
            url = urlunsplit(
                (self._scheme, self._netloc, self._prefix + parts.path, parts.query, "")
            )
        return super().request(method, url, *args, **kwargs)


class TwilioSmsNotifier:
    channel = "sms"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str,
        base_url: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not account_sid or not auth_token:
            # the SDK would silently fall back to TWILIO_* environment variables
            raise ValueError("account_sid and auth_token are required")
        if not from_number:
            raise ValueError("from_number is required")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.from_number = from_number
        self.timeout = timeout
        self._auth_token = auth_token
        http_client = (
            _BaseUrlHttpClient(base_url, timeout=timeout)
            if base_url
            else TwilioHttpClient(timeout=timeout)
        )
        self._client = Client(account_sid, auth_token, http_client=http_client)

    def send(self, destination: str, notification: VendorNotification) -> None:
        body = sms_body(notification)
        if len(body) > _TWILIO_MAX:
            raise NotificationFailed(
                f"SMS text would be {len(body)} characters (Twilio's limit is {_TWILIO_MAX})",
                retryable=False,
            )

        def fail(message: str, *, retryable: bool) -> NotificationFailed:
            text = redact(message, notification.token, self._auth_token)
            return NotificationFailed(text, retryable=retryable)

        try:
            self._client.messages.create(to=destination, from_=self.from_number, body=body)
        except TwilioRestException as exc:
            detail = str(exc.msg).removeprefix("Unable to create record: ")
            raise _refused(fail, exc.status, exc.code, detail) from None
        except TwilioServiceException as exc:  # RFC 9457 problem details
            raise _refused(fail, exc.status, exc.code, exc.detail or exc.title) from None
        except requests.exceptions.Timeout as exc:
            raise fail(
                f"Twilio timed out after {self.timeout:g}s ({type(exc).__name__})", retryable=True
            ) from None
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ) as exc:
            raise fail(f"Twilio URL not usable: {type(exc).__name__}", retryable=False) from None
        except requests.exceptions.RequestException as exc:  # refused, reset, DNS
            raise fail(f"Twilio unreachable: {type(exc).__name__}", retryable=True) from None
        except TwilioException as exc:
            raise fail(f"Twilio client error: {exc}", retryable=False) from None
        except ValueError:  # a 2xx whose JSON does not parse: sent or not, we cannot tell
            raise fail("Twilio answered with an unreadable response", retryable=True) from None


def _refused(
    fail: Callable[..., NotificationFailed], status: int, code: object, detail: object
) -> NotificationFailed:
    retryable = status in _RETRYABLE_4XX or status >= 500
    text = one_line(str(detail or ""), 200)
    return fail(f"Twilio refused the SMS: HTTP {status}, error {code}: {text}", retryable=retryable)
