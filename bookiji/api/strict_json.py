"""JSON bodies read strictly, and refused only after the caller's key is checked.

A key given twice (`{"vendorId": "a", "vendorId": "b"}`) is ambiguous: Python's parser keeps
the last, another client's proxy may keep the first, so it is refused instead of guessed.
FastAPI reads the body before it resolves dependencies, so a body it cannot read used to
be answered 400 before a missing or under-scoped key got its 401/403: a caller with no
valid key learned how we parse. Here such a body waits for the key check first.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

#: How the decode error of a repeated key starts (the error handler words it as such).
DUPLICATE_KEY = "duplicate key"

#: Checks the request's key for the route's scope; raises the 401/403 to answer instead.
KeyCheck = Callable[[Request, str], Awaitable[None]]


class DuplicateKey(json.JSONDecodeError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(f"{DUPLICATE_KEY} {key!r} (each key at most once)", "", 0)
        found[key] = value
    return found


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=_no_duplicates)
        return self._json


def _unreadable_body(exc: Exception) -> bool:
    if isinstance(exc, RequestValidationError):
        return any(error.get("type") == "json_invalid" for error in exc.errors())
    return isinstance(exc, HTTPException) and exc.status_code == 400


def strict_json_route(check_key: KeyCheck) -> type[APIRoute]:
    """The route class for an app: bodies read by `StrictJsonRequest`; a route whose key
    dependency carries `bookiji_scope` checks the key before refusing an unreadable body."""

    class StrictJsonRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            scopes = [
                getattr(dependency.call, "bookiji_scope", None)
                for dependency in self.dependant.dependencies
            ]
            scope = next((s for s in scopes if s is not None), None)

            async def strict(request: Request) -> Response:
                try:
                    return await handler(StrictJsonRequest(request.scope, request.receive))
                except (RequestValidationError, HTTPException) as exc:
                    if scope is not None and _unreadable_body(exc):
                        await check_key(request, scope)
                    raise

            return strict

    return StrictJsonRoute
