"""Partner webhooks over HTTP, signed per the Standard Webhooks specification.

Implements the `WebhookSender` port: one `POST <url>` with the JSON body and the three
Standard Webhooks headers, `webhook-id` (the caller's stable message id, so a receiver
drops a retry it already processed), `webhook-timestamp` (Unix seconds of this attempt)
and `webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, made by the
`standardwebhooks` package with the partner's `whsec_` secret). During a secret rotation's
overlap it carries two space-separated signatures, `v1,<new> v1,<old>`, as the specification
allows: a receiver accepts the request if any of them verifies.

The answer is the HTTP status, whatever it is: deciding what a 4xx or a 5xx means for the
delivery is the service's job. Only a request that got no answer at all (timeout,
connection refused or reset) raises `WebhookSendFailed(retryable=True)`; a URL or secret
that can never work raises it with `retryable=False`. Redirects are not followed (a 3xx is
returned as is) and the response body is never read, so an endpoint cannot make us buffer
it. Error messages name only `scheme://host:port`, never the path or query (they may
carry a partner's token) and never the secret.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from bookiji.integrations.notify import redact
from bookiji.services.ports import WebhookSendFailed

__all__ = ["HttpWebhookSender", "encode_body"]

_USER_AGENT = "bookiji-webhooks/1"


def encode_body(payload: dict[str, object]) -> str:
    """The exact text that is signed and sent: compact JSON, UTF-8, keys in payload order."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


class HttpWebhookSender:
    def __init__(self, timeout: float = 10.0, client: httpx.Client | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._timeout = timeout
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        """Close the HTTP client if this sender created it."""
        if self._own_client:
            self._client.close()

    def __enter__(self) -> HttpWebhookSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self,
        url: str,
        secret: str,
        *,
        message_id: str,
        timestamp: datetime,
        payload: dict[str, object],
        previous_secret: str | None = None,
    ) -> int:
        if timestamp.tzinfo is None or timestamp.utcoffset() is None:
            raise ValueError("webhook timestamp must be timezone-aware")
        # `Webhook.sign` reads the wall clock of `timestamp` as UTC: convert first, or a
        # +02:00 instant would be signed two hours off and fail every receiver's check.
        when = timestamp.astimezone(UTC)
        target = _target(url)

        # The full URL only if it says more than the target: its path may hold a token.
        private = url if url.rstrip("/") != target else None

        keys = [secret] if previous_secret is None else [secret, previous_secret]
        hidden = [part for key in keys for part in (key, key.removeprefix("whsec_"))]

        def fail(message: str, *, retryable: bool) -> WebhookSendFailed:
            text = redact(message, private, *hidden)
            return WebhookSendFailed(text, retryable=retryable)

        try:
            signers = [Webhook(key) for key in keys]
        except Exception:  # empty, or not base64: never echo it
            raise fail(
                "webhook secret must be 'whsec_' followed by base64 key bytes", retryable=False
            ) from None
        body = encode_body(payload)
        headers = {
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(int(when.timestamp())),
            # The current secret's signature first, then the previous one's (an overlap).
            "webhook-signature": " ".join(s.sign(message_id, when, body) for s in signers),
        }
        try:
            with self._client.stream(
                "POST",
                url,
                content=body.encode(),
                headers=headers,
                timeout=self._timeout,
                follow_redirects=False,
            ) as response:
                return response.status_code
        except httpx.TimeoutException as exc:
            raise fail(
                f"webhook to {target} timed out after {self._timeout:g}s ({type(exc).__name__})",
                retryable=True,
            ) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL, UnicodeError):
            # UnicodeError: a host name that cannot be encoded for DNS (set before the check).
            raise fail(f"webhook URL for {target} is not usable", retryable=False) from None
        except httpx.TransportError as exc:
            raise fail(
                f"webhook to {target} failed: {type(exc).__name__}: {exc}", retryable=True
            ) from None


def _target(url: str) -> str:
    """`scheme://host[:port]` for messages; refuses anything but an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise WebhookSendFailed("webhook URL must be an absolute http(s) URL", retryable=False)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
