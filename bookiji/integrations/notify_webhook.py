"""Vendor notifications as webhooks, signed per the Standard Webhooks specification.

`POST <destination>` with a JSON body and the three Standard Webhooks headers:
`webhook-id` (stable per reservation and token, so a receiver can drop a retried delivery
it already processed), `webhook-timestamp` (Unix seconds of this attempt) and
`webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, made by the
`standardwebhooks` package). The body is byte-identical across retries; only the timestamp
and therefore the signature change.

Outcome: 2xx = delivered. 408, 429, 5xx, timeouts and connection errors are retryable; any
other status (other 4xx, and 3xx: redirects are not followed) is not. The response body is
never read: an endpoint cannot make us buffer it, and nothing it says ends up in a message.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from bookiji.integrations.notify import answer_link, local_slot, redact, rfc3339_utc
from bookiji.services.ports import NotificationFailed, VendorNotification

__all__ = ["EVENT_TYPE", "WebhookNotifier", "webhook_id", "webhook_payload"]

EVENT_TYPE = "reservation.confirmation_requested"
_USER_AGENT = "bookiji-webhooks/1"
_RETRYABLE_4XX = frozenset({408, 429})


def webhook_id(notification: VendorNotification) -> str:
    """`msg_<hex>`: the same for every attempt at one (reservation, token); reveals neither."""
    seed = "\x1f".join(
        ("bookiji.vendor-confirmation", notification.reservation_id, notification.token)
    )
    return "msg_" + hashlib.sha256(seed.encode()).hexdigest()[:32]


def webhook_payload(notification: VendorNotification) -> dict[str, Any]:
    slot = local_slot(notification)
    return {
        "type": EVENT_TYPE,
        "reservationId": notification.reservation_id,
        "vendorId": notification.vendor_id,
        "slotStartTime": rfc3339_utc(notification.slot_start),
        "slotEndTime": rfc3339_utc(notification.slot_end),
        "timezone": slot.zone,
        "localStart": slot.start.isoformat(),
        "localEnd": slot.end.isoformat(),
        "requesterId": notification.requester_id,
        "token": notification.token,
        "expiresAt": rfc3339_utc(notification.expires_at),
        "answerUrl": answer_link(notification),
    }


class WebhookNotifier:
    channel = "webhook"

    def __init__(
        self, secret: str, *, timeout: float = 10.0, client: httpx.Client | None = None
    ) -> None:
        """`secret` is a Standard Webhooks secret: `whsec_` + base64 of the key bytes."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        try:
            self._signer = Webhook(secret)
        except Exception:  # empty, or not base64: never echo it
            raise ValueError(
                "webhook secret must be 'whsec_' followed by base64 key bytes"
            ) from None
        self._secret = secret
        self._timeout = timeout
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        """Close the HTTP client if this notifier created it."""
        if self._own_client:
            self._client.close()

    def __enter__(self) -> WebhookNotifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, destination: str, notification: VendorNotification) -> None:
        target = _target(destination)
        body = json.dumps(webhook_payload(notification), separators=(",", ":"), ensure_ascii=False)
        msg_id = webhook_id(notification)
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(msg_id, now, body),
        }

        def fail(message: str, *, retryable: bool) -> NotificationFailed:
            text = redact(message, notification.token, self._secret, _bare(self._secret))
            return NotificationFailed(text, retryable=retryable)

        try:
            with self._client.stream(
                "POST",
                destination,
                content=body.encode(),
                headers=headers,
                timeout=self._timeout,
                follow_redirects=False,
            ) as response:
                status = response.status_code
        except httpx.TimeoutException as exc:
            raise fail(
                f"webhook to {target} timed out after {self._timeout:g}s ({type(exc).__name__})",
                retryable=True,
            ) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise fail(f"webhook destination is not usable: {exc}", retryable=False) from None
        except httpx.TransportError as exc:
            raise fail(
                f"webhook to {target} failed: {type(exc).__name__}: {exc}", retryable=True
            ) from exc

        if 200 <= status < 300:
            return
        retryable = status in _RETRYABLE_4XX or status >= 500
        raise fail(f"webhook to {target} answered HTTP {status}", retryable=retryable)


def _target(destination: str) -> str:
    """`scheme://host[:port]` for messages (a path or query may carry the vendor's secrets)."""
    try:
        parts = urlsplit(destination)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotificationFailed(
            "webhook destination must be an absolute http(s) URL", retryable=False
        )
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _bare(secret: str) -> str:
    return secret.removeprefix("whsec_")
