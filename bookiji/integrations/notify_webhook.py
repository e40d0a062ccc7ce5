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
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from bookiji.integrations.notify import answer_link, local_slot, redact, rfc3339_utc
from bookiji.integrations.webhook_sender import HttpWebhookSender
from bookiji.services.ports import NotificationFailed, VendorNotification, WebhookSendFailed

__all__ = ["EVENT_TYPE", "WebhookNotifier", "webhook_id", "webhook_payload"]

EVENT_TYPE = "reservation.confirmation_requested"
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
    """Signing and the POST are `HttpWebhookSender`'s (the partner webhooks' sender); this
    adds the notification's body and id and what each HTTP answer means for a vendor."""

    channel = "webhook"

    def __init__(
        self, secret: str, *, timeout: float = 10.0, client: httpx.Client | None = None
    ) -> None:
        """`secret` is a Standard Webhooks secret: `whsec_` + base64 of the key bytes."""
        try:
            Webhook(secret)
        except Exception:  # empty, or not base64: never echo it
            raise ValueError(
                "webhook secret must be 'whsec_' followed by base64 key bytes"
            ) from None
        self._secret = secret
        self._sender = HttpWebhookSender(timeout=timeout, client=client)

    def close(self) -> None:
        """Close the HTTP client if this notifier created it."""
        self._sender.close()

    def __enter__(self) -> WebhookNotifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, destination: str, notification: VendorNotification) -> None:
        target = _target(destination)

        def fail(message: str, *, retryable: bool) -> NotificationFailed:
            text = redact(message, notification.token, self._secret, _bare(self._secret))
            return NotificationFailed(text, retryable=retryable)

        try:
            status = self._sender.send(
                destination,
                self._secret,
                message_id=webhook_id(notification),
                timestamp=datetime.now(UTC),
                payload=webhook_payload(notification),
            )
        except WebhookSendFailed as exc:
            raise fail(exc.message, retryable=exc.retryable) from None
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
