"""What every request passes through: the body-size limit, the rate-limit headers, a span,
one log line and the request metrics; and HEAD, answered as the GET would be, without its
body (FastAPI routes declare GET alone, and load balancers and `curl -I` probe with HEAD).

A plain ASGI middleware rather than Starlette's `BaseHTTPMiddleware`, which runs the app in a
second task and streams the response through a memory channel: on a small request that
bookkeeping cost as much as the endpoint.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bookiji.api.metrics import Metrics
from bookiji.services.tracing import span

log = logging.getLogger("bookiji.api")

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class Edge:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        too_large: Callable[[], Response],
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.too_large = too_large
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        method: str = scope["method"]
        if method == "HEAD":
            scope = {**scope, "method": "GET"}
        state: dict[str, Any] = scope.setdefault("state", {})
        length = _header(scope, b"content-length")
        request_id = _request_id(_header(scope, b"x-request-id"))
        status = [500]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                decision = state.get("rate")
                if decision is not None:
                    headers += [
                        (b"ratelimit-limit", str(decision.limit).encode()),
                        (b"ratelimit-remaining", str(decision.remaining).encode()),
                        (b"ratelimit-reset", str(decision.reset_after).encode()),
                    ]
                if status[0] == 405:
                    headers = [_allow_head(name, value) for name, value in headers]
                message = {**message, "headers": headers}
            elif method == "HEAD" and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        try:
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await self.too_large()(scope, receive, send_with_headers)
            elif length is None and method in _WITH_BODY:
                body = await self._read_body(receive)
                if body is None:
                    await self.too_large()(scope, receive, send_with_headers)
                else:
                    replay = _replay(body, receive)
                    await self._serve(scope, replay, send_with_headers, method, status)
            else:
                await self._serve(scope, receive, send_with_headers, method, status)
        finally:  # a crash is answered by the outermost handler, as a 500: logged here too
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - began
            self.metrics.observe_request(method, route, status[0], elapsed)
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": method,
                    "route": route,
                    "status": status[0],
                    "duration_ms": round(elapsed * 1000, 2),
                    "partner_id": state.get("partner_id"),
                    # The path's, or the one a create made (the endpoint leaves it in state).
                    "reservation_id": scope.get("path_params", {}).get("reservationId")
                    or state.get("reservation_id"),
                },
            )

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, method: str, status: list[int]
    ) -> None:
        with span("http.request", method=method) as current:
            await self.app(scope, receive, send)
            route = getattr(scope.get("route"), "path", "unmatched")
            current.update_name(f"{method} {route}")
            current.set_attribute("http.route", route)
            current.set_attribute("http.response.status_code", status[0])

    async def _read_body(self, receive: Receive) -> bytes | None:
        """A body sent without Content-Length (chunked), or None once it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _request_id(given: str | None) -> str:
    """The partner's own `X-Request-Id` when it is a plain token (so both sides' logs share
    it), else a new one. Either way it is answered in the header and logged, and is what
    support asks a partner for."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return f"req_{secrets.token_hex(12)}"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _allow_head(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """A 405's `Allow` names HEAD wherever it names GET, as HEAD is served there."""
    if name.lower() == b"allow" and b"GET" in value.split(b", ") and b"HEAD" not in value:
        return name, value + b", HEAD"
    return name, value


def _replay(body: bytes, then: Receive) -> Receive:
    """The body read for the size check, handed to the app as if it came off the wire; after
    it, the connection's own messages (a disconnect)."""
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive
