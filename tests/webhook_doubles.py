"""A stand-in for the `WebhookSender` port: a partner endpoint that answers one fixed status."""

from __future__ import annotations

from datetime import datetime
from typing import Any


class StatusSender:
    """Answers `status` to every send; records (message id, timestamp) in `sent` and each
    body in `payloads`."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.sent: list[tuple[str, datetime]] = []
        self.payloads: list[dict[str, Any]] = []

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
        self.sent.append((message_id, timestamp))
        self.payloads.append(payload)
        return self.status
