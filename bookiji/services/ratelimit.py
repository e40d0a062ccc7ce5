"""Per-key request budgets for the partner API, one for reads and one for writes.

Strategy: the `limits` moving window. It counts exactly the hits of the last 60 seconds, so
a key can never send twice its budget across a window boundary (the fixed window's flaw),
and `Retry-After` is exact: the moment the oldest hit in the window ages out. The sliding
window counter would keep O(1) state per key instead of O(limit) timestamps, but it only
approximates the count and the wait; at a few hundred hits per key per minute the moving
window's memory is small, and partners get honest headers.

Storage: `memory://` for one daemon; `redis://...` when several daemons share one budget.
The Redis moving window is one Lua script per hit (atomic across daemons); it timestamps
with each daemon's clock, so daemons sharing a Redis need NTP-synchronised clocks.

If the storage fails (Redis down), the limiter fails open by default: a limiter outage
should not become an API outage, and the database still bounds what a key can hold (see
`holdcaps`). Pass `fail_open=False` to answer 503 instead.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from bookiji.domain.errors import RateLimited, Unavailable

log = logging.getLogger(__name__)

RouteClass = Literal["read", "write"]
ROUTE_CLASSES: frozenset[str] = frozenset({"read", "write"})
WINDOW_SECONDS = 60
#: Redis must answer quickly or not at all: a hung limiter would hang every request.
REDIS_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class RateLimitDecision:
    """The verdict on one request, with what the response headers should say."""

    allowed: bool
    limit: int
    remaining: int
    #: Seconds until the oldest hit in the window ages out (one more request fits).
    reset_after: int
    #: Seconds to wait before retrying; 0 when allowed.
    retry_after: int

    def headers(self) -> dict[str, str]:
        """`RateLimit-*` (IETF draft) on every answer, `Retry-After` on a refusal."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers

    def raise_if_refused(self) -> None:
        if not self.allowed:
            raise RateLimited(
                f"rate limit of {self.limit} requests per minute exceeded; "
                f"retry after {self.retry_after}s",
                details={"limit": self.limit, "retryAfter": self.retry_after},
            )


class RateLimiter:
    def __init__(
        self,
        storage_uri: str = "memory://",
        *,
        reads_per_minute: int = 300,
        writes_per_minute: int = 60,
        namespace: str = "bookiji",
        fail_open: bool = True,
    ) -> None:
        """`namespace` separates the keys of independent limiters sharing one Redis (tests,
        several installations); daemons meant to share a budget must use the same one."""
        if reads_per_minute < 1 or writes_per_minute < 1:
            raise ValueError("rate limits must be at least 1 request per minute")
        options: dict[str, float | str | bool] = {"wrap_exceptions": True}
        if storage_uri.startswith(("redis://", "rediss://", "redis+unix://")):
            options["socket_timeout"] = REDIS_TIMEOUT_SECONDS
            options["socket_connect_timeout"] = REDIS_TIMEOUT_SECONDS
        self.storage = storage_from_string(storage_uri, **options)
        #: In-process counters: a hit is a few dict operations, cheap enough for an event
        #: loop; Redis is a network round trip and belongs in a thread.
        self.local = storage_uri.startswith("memory://")
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.namespace = namespace
        self.fail_open = fail_open
        self.items: dict[str, RateLimitItem] = {
            "read": RateLimitItemPerMinute(reads_per_minute, 1, namespace=namespace),
            "write": RateLimitItemPerMinute(writes_per_minute, 1, namespace=namespace),
        }

    def hit(self, key_id: str, route_class: str) -> RateLimitDecision:
        """Count one request of `key_id` against the budget of `route_class` ("read" or
        "write") and say whether it may proceed. A refused request costs nothing."""
        item = self.items.get(route_class)
        if item is None:
            raise ValueError(f"route class must be 'read' or 'write', not {route_class!r}")
        try:
            allowed = self.strategy.hit(item, route_class, key_id)
            reset_at, remaining = self.strategy.get_window_stats(item, route_class, key_id)
        except StorageError as exc:
            return self._storage_failed(item, exc)
        reset_after = max(0, math.ceil(reset_at - time.time()))
        return RateLimitDecision(
            allowed=allowed,
            limit=item.amount,
            remaining=max(0, remaining),
            reset_after=min(reset_after, WINDOW_SECONDS),
            retry_after=0 if allowed else max(1, min(reset_after, WINDOW_SECONDS)),
        )

    def reset(self, key_id: str) -> None:
        """Forget a key's hits in both budgets (operators, tests)."""
        for route_class, item in self.items.items():
            self.strategy.clear(item, route_class, key_id)

    def _storage_failed(self, item: RateLimitItem, exc: StorageError) -> RateLimitDecision:
        cause = exc.storage_error.__class__.__name__
        if not self.fail_open:
            raise Unavailable(
                "rate limiter storage unavailable", details={"cause": cause}
            ) from None
        log.warning("rate limiter storage failed (%s); letting the request through", cause)
        return RateLimitDecision(
            allowed=True, limit=item.amount, remaining=item.amount, reset_after=0, retry_after=0
        )
