"""The partner HTTP API (v1), a thin edge over the services.

Every error is `{"error": {"code", "message", "retryable", "details"}}` with the status the
error type carries; nothing is written on a refused request (validation, auth and rate
limits all run before any service is called).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any
from urllib.parse import quote

from anyio import to_thread
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bookiji.api.edge import Edge
from bookiji.api.metrics import Metrics
from bookiji.api.schemas import (
    Authorization,
    AuthorizationAnswer,
    AvailabilityDocument,
    Cancellation,
    ConfirmationAnswer,
    CreateReservation,
    ErrorEnvelope,
    EventPage,
    Health,
    ReservationDocument,
    StripeReceipt,
    VendorConfirmation,
)
from bookiji.api.strict_json import DUPLICATE_KEY, strict_json_route
from bookiji.bootstrap import Container
from bookiji.domain.errors import (
    BookijiError,
    EncryptionKeyProblem,
    IdempotencyInProgress,
    RateLimited,
    Unavailable,
    ValidationFailed,
)
from bookiji.domain.timeutil import format_instant, parse_instant
from bookiji.services.apikeys import ApiPrincipal
from bookiji.services.documents import load_reservation_document
from bookiji.services.events import cancel_notes, event_data
from bookiji.services.holdcaps import HoldCaps
from bookiji.services.ratelimit import RateLimitDecision, RateLimiter
from bookiji.services.reservations import HoldRequest
from bookiji.store import migrate
from bookiji.store.uow import UnitOfWork

# Ids are 64 characters at most (vendor ids by the vendor file's rule, ours are shorter): a
# longer one is refused as such, not looked up and echoed back in a 404.
PathId = Annotated[str, PathParam(min_length=1, max_length=64)]

log = logging.getLogger("bookiji.api")
#: What the OpenAPI document says of a time parameter (the values are parsed as RFC 3339).
DATE_TIME: dict[str, Any] = {"json_schema_extra": {"format": "date-time"}}

_ERROR_TEXTS = {
    400: "Malformed request: body, query or time (the message says which field and why)",
    401: "Missing or invalid API key",
    403: "The key lacks the scope",
    404: "Not found (or another partner's)",
    409: "Conflict (slot taken, invalid transition, hold limit, in-flight key)",
    413: "Body larger than allowed",
    422: "Idempotency key reused with another request",
    429: "Rate limited (Retry-After says when to try again)",
    500: "Internal error",
    503: "A dependency is unavailable (database, payment provider); retry later",
}
#: In the OpenAPI document as the `bearerAuth` security scheme; a missing or malformed
#: header is our own 401 envelope, not FastAPI's.
API_KEY = HTTPBearer(
    scheme_name="bearerAuth",
    bearerFormat="bk_live_<prefix>_<secret>",
    description="A partner API key: `Authorization: Bearer bk_live_...`",
    auto_error=False,
)
#: What every route behind an API key can answer besides its own errors.
KEYED = (400, 401, 403, 429, 500, 503)


def _header(description: str, kind: str = "string") -> dict[str, Any]:
    """A response header the answer always carries, for its OpenAPI entry."""
    return {"description": description, "required": True, "schema": {"type": kind}}


#: What a 429 carries: when to retry, and the key's budget (as every keyed answer does).
_RATE_HEADERS = {
    "Retry-After": _header("Seconds to wait before sending the request again", "integer"),
    "RateLimit-Limit": _header("Requests per minute of this kind (read or write)", "integer"),
    "RateLimit-Remaining": _header("Requests left in the current window", "integer"),
    "RateLimit-Reset": _header("Seconds until one more request fits", "integer"),
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error responses a route can give, for its OpenAPI entry: a partner's client
    generator should see the statuses it must handle, not every status of the API. Every
    route can answer 413: the edge refuses an oversized body before any route sees it."""
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorEnvelope, "description": _ERROR_TEXTS[status]}
        for status in sorted({*statuses, 413})
    }
    if 429 in responses:
        responses[429]["headers"] = _RATE_HEADERS
    return responses


def answers(
    model: type[BaseModel],
    *statuses: int,
    status: int = 200,
    headers: dict[str, dict[str, Any]] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """A route's OpenAPI responses: its document (with the headers it always carries), then
    the errors it can give. The model only describes: routes return their documents as
    built (no second validation per request); schemathesis checks the two agree."""
    document: dict[str, Any] = {"model": model}
    if headers:
        document["headers"] = headers
    return {status: document, **errors(*statuses)}


def reject_unknown_query(request: Request, *names: str) -> None:
    """A misspelt parameter (`slotduration=45`) is an error, not a silently different
    answer (30-minute slots); so is one given twice (which would silently take the last).
    Every /v1 route calls it, with none for a route that takes no query parameters."""
    given = [name for name, _ in request.query_params.multi_items()]
    unknown = sorted({name for name in given if name not in names})
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter(s): {', '.join(unknown)}; this route takes "
            f"{', '.join(names) if names else 'none'}",
            details={
                "problems": [f"{name}: unknown query parameter" for name in unknown],
                "unknown": unknown,
                "allowed": list(names),
            },
        )
    repeated = sorted({name for name in given if given.count(name) > 1})
    if repeated:
        raise InvalidRequest(
            f"query parameter(s) given more than once: {', '.join(repeated)}; give each once",
            details={"problems": [f"{name}: given more than once" for name in repeated]},
        )


def _envelope(error: BookijiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    retry_after = error.details.get("retryAfter")
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(error.to_envelope(), status_code=error.http_status, headers=headers)


def _location(reservation_id: str) -> dict[str, str]:
    """Where the created reservation is read, as RFC 9110 asks of a 201."""
    return {"Location": f"/v1/reservations/{quote(reservation_id, safe='')}"}


class InvalidRequest(ValidationFailed):
    """Always lists `details.problems`, as the partner guide promises of this code."""

    code = "invalid_request"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details={"problems": [message], **(details or {})})


class PayloadTooLarge(BookijiError):
    code = "payload_too_large"
    http_status = 413


class RouteNotFound(BookijiError):
    code = "not_found"
    http_status = 404


class MethodNotAllowed(BookijiError):
    code = "method_not_allowed"
    http_status = 405


def create_app(container: Container, metrics: Metrics | None = None) -> FastAPI:
    settings = container.settings
    api = settings.api
    caps = HoldCaps(api.max_active_holds_per_requester, api.max_active_holds_per_partner)
    metrics = metrics or Metrics(container)
    local_reads = container.db.local_reads
    limiter = RateLimiter(
        settings.redis_url or "memory://",
        reads_per_minute=api.reads_per_minute,
        writes_per_minute=api.writes_per_minute,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        to_thread.current_default_thread_limiter().total_tokens = settings.daemon.request_threads
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="Bookiji partner API",
        version="1",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.container = container
    app.state.metrics = metrics

    async def check_key(request: Request, scope: str) -> None:
        bearer = await API_KEY(request)
        raw = bearer.credentials.strip() if bearer is not None else None
        principal = await run_in_threadpool(container.apikeys.authenticate, raw)
        principal.require(scope)

    app.router.route_class = strict_json_route(check_key)
    # `/v1/reservations/` is a 404 in the error envelope, not a 307 to an absolute http://
    # URL built from the Host header (wrong behind TLS, and a body-less answer).
    app.router.redirect_slashes = False

    # -- errors ---------------------------------------------------------------------------

    @app.exception_handler(BookijiError)
    def _bookiji(_request: Request, exc: BookijiError) -> JSONResponse:
        return _envelope(exc)

    @app.exception_handler(RequestValidationError)
    def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            if error.get("type") == "json_invalid":  # loc is ("body", character offset)
                at, why = error["loc"][-1], (error.get("ctx") or {}).get("error", "")
                if why.startswith(DUPLICATE_KEY):
                    problems.append(f"body: {why}")
                    continue
                problems.append(f"body: not valid JSON at character {at}: {why}".rstrip(": "))
                continue
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
            problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
        message = "; ".join(problems) or "malformed request"
        return _envelope(InvalidRequest(message, details={"problems": problems}))

    @app.exception_handler(StarletteHTTPException)
    def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals in our envelope, with their headers (a 405's `Allow`,
        which RFC 9110 requires)."""
        if exc.status_code == 405:
            return _envelope(MethodNotAllowed("method not allowed on this path"), exc.headers)
        if exc.status_code == 404:
            return _envelope(RouteNotFound("no such path"), exc.headers)
        if exc.status_code == 400:  # a body FastAPI could not decode (bytes, encoding, depth)
            message = "body: not valid JSON (UTF-8, without a Content-Encoding)"
            return _envelope(InvalidRequest(message), exc.headers)
        error = BookijiError(str(exc.detail))
        error.http_status = exc.status_code
        return _envelope(error, exc.headers)

    @app.exception_handler(DBAPIError)
    def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
            log.warning("database unavailable: %s", type(exc.orig).__name__)
            return _envelope(Unavailable("the database is not reachable; retry later"))
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return _envelope(BookijiError("internal error; it was logged"))

    @app.exception_handler(Exception)
    def _crash(_request: Request, exc: Exception) -> JSONResponse:
        cause = getattr(exc, "orig", None)
        if isinstance(cause, BookijiError):  # raised inside a column type (sealed data)
            log.error("%s: %s", cause.code, cause.message)
            return _envelope(cause)
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return _envelope(BookijiError("internal error; it was logged"))

    # -- every request: size limit, rate headers, one log line, metrics (bookiji/api/edge.py) --

    app.add_middleware(
        Edge,
        max_body_bytes=api.max_body_bytes,
        too_large=lambda: _envelope(
            PayloadTooLarge(f"the body is larger than {api.max_body_bytes} bytes")
        ),
        metrics=metrics,
    )

    # -- authentication, scopes, rate limits -------------------------------------------------

    def authorized(scope: str, route_class: str) -> Any:
        """Key, scope and budget, on the event loop when that costs less than a thread hop
        (a key verified lately, read from local SQLite; in-process rate counters), else in
        one thread hop (the KDF, a write, a network round trip to Postgres or Redis)."""

        def admit(request: Request, raw: str | None, quick: ApiPrincipal | None) -> ApiPrincipal:
            principal = quick or container.apikeys.authenticate(raw)
            request.state.partner_id = principal.partner_id
            principal.require(scope)
            request.state.rate = limiter.hit(principal.key_id, route_class)
            return principal

        async def dependency(
            request: Request, bearer: HTTPAuthorizationCredentials | None = Depends(API_KEY)
        ) -> ApiPrincipal:
            raw = bearer.credentials.strip() if bearer is not None else None
            quick = container.apikeys.authenticate_quickly(raw) if local_reads else None
            if quick is not None and limiter.local:
                principal = admit(request, raw, quick)
            else:
                principal = await run_in_threadpool(admit, request, raw, quick)
            decision: RateLimitDecision = request.state.rate
            if not decision.allowed:
                raise RateLimited(
                    f"rate limit of {decision.limit} {route_class}s per minute reached",
                    details={"retryAfter": decision.retry_after},
                )
            return principal

        dependency.bookiji_scope = scope  # type: ignore[attr-defined] # for strict_json
        return Depends(dependency)

    # -- endpoints ------------------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"], response_model=None, responses=answers(Health, 500))
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz", tags=["operations"], response_model=None, responses=answers(Health, 500, 503)
    )
    def readyz() -> dict[str, str]:
        try:
            ready = migrate.is_at_head(container.db)
        except Exception:
            raise Unavailable("the database is not reachable") from None
        if not ready:
            raise Unavailable("the database schema is not at the newest migration")
        try:
            keys = container.pii.key_problem()
        except Exception:
            raise Unavailable("the database is not reachable") from None
        if keys is not None:  # e.g. another process began a rotation to a key not given here
            raise EncryptionKeyProblem(keys)
        return {"status": "ready"}

    @app.get("/metrics", tags=["operations"], response_class=Response, responses=errors(500))
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get(
        "/v1/vendors/{vendorId}/availability",
        tags=["availability"],
        response_model=None,
        responses=answers(AvailabilityDocument, *KEYED, 404),
    )
    async def availability(
        request: Request,
        vendorId: PathId,
        startTime: str = Query(..., description="RFC 3339 with offset", **DATE_TIME),
        endTime: str = Query(..., description="RFC 3339 with offset", **DATE_TIME),
        # Declared, not enforced here: the service says what is wrong in its own words.
        slotDuration: int | None = Query(
            None, description="minutes, 5-1440", json_schema_extra={"minimum": 5, "maximum": 1440}
        ),
        includeConfidence: bool = Query(True),
        _: ApiPrincipal = authorized("availability:read", "read"),
    ) -> Response:
        reject_unknown_query(request, "startTime", "endTime", "slotDuration", "includeConfidence")
        vendor_id = vendorId
        start = parse_instant(startTime, field="startTime")
        end = parse_instant(endTime, field="endTime")
        service = container.availability
        body = None
        if local_reads:  # a cached answer is one small read: not worth a thread
            body = service.cached_json(
                vendor_id,
                start,
                end,
                slot_minutes=slotDuration,
                include_confidence=includeConfidence,
            )
        if body is None:
            body = await run_in_threadpool(
                partial(
                    service.availability_json,
                    vendor_id,
                    start,
                    end,
                    slot_minutes=slotDuration,
                    include_confidence=includeConfidence,
                )
            )
        return Response(body, media_type="application/json")

    @app.post(
        "/v1/reservations",
        status_code=201,
        tags=["reservations"],
        response_model=None,
        responses=answers(
            ReservationDocument,
            *KEYED,
            404,
            409,
            422,
            status=201,
            headers={"Location": _header("Where the reservation is read (a replay's too)")},
        ),
    )
    def create_reservation(
        http: Request,
        body: CreateReservation,
        idempotency_header: str | None = Header(
            default=None,
            alias="Idempotency-Key",
            json_schema_extra={"minLength": 1, "maxLength": 255},
        ),
        principal: ApiPrincipal = authorized("reservations:write", "write"),
    ) -> JSONResponse:
        reject_unknown_query(http)
        if len(http.headers.getlist("idempotency-key")) > 1:  # which one would we key on?
            raise InvalidRequest("Idempotency-Key: given more than once")
        if idempotency_header is not None and not idempotency_header.strip():
            # As an empty body idempotencyKey is: dropping it would create without a key.
            raise InvalidRequest("Idempotency-Key: the header is empty; send a key or leave it out")
        key = idempotency_header or body.idempotencyKey
        if idempotency_header and body.idempotencyKey and idempotency_header != body.idempotencyKey:
            raise InvalidRequest("Idempotency-Key header and idempotencyKey differ")
        partner = principal.partner_id
        request = HoldRequest(
            vendor_id=body.vendorId,
            slot_start=parse_instant(body.slotStartTime, field="slotStartTime"),
            slot_end=parse_instant(body.slotEndTime, field="slotEndTime"),
            requester_id=body.requesterId,
            partner_id=partner,
            idempotency_key=key,
            metadata=body.metadata,
            contact=body.requester.model_dump(exclude_none=True) if body.requester else None,
        )
        outcome = container.reservations.create_hold(request, actor=f"partner:{partner}", caps=caps)
        http.state.reservation_id = outcome.reservation_id  # for the request's log line
        if outcome.replayed and key is not None:
            stored = container.reservations.remembered_response(partner, key)
            if stored is None:
                raise IdempotencyInProgress(
                    "a request with this idempotency key is still being processed; retry"
                )
            # Rendered as the first answer was, from the document as stored (in its own key
            # order), so a replay is the first answer byte for byte.
            return JSONResponse(
                stored[1], status_code=stored[0], headers=_location(outcome.reservation_id)
            )
        document = outcome.document or load_reservation_document(
            container.db, outcome.reservation_id, partner_id=partner
        )
        return JSONResponse(document, status_code=201, headers=_location(outcome.reservation_id))

    @app.get(
        "/v1/reservations/{reservationId}",
        tags=["reservations"],
        response_model=None,
        responses=answers(ReservationDocument, *KEYED, 404),
    )
    def get_reservation(
        request: Request,
        reservationId: PathId,
        principal: ApiPrincipal = authorized("reservations:read", "read"),
    ) -> dict[str, Any]:
        reject_unknown_query(request)
        return load_reservation_document(
            container.db, reservationId, partner_id=principal.partner_id
        )

    @app.post(
        "/v1/reservations/{reservationId}/vendor-confirmation",
        tags=["vendors"],
        response_model=None,
        responses=answers(ConfirmationAnswer, 400, 403, 404, 409, 500, 503),
    )
    def vendor_confirmation(
        request: Request, reservationId: PathId, body: VendorConfirmation
    ) -> dict[str, Any]:
        """The vendor's answer, authenticated by the token from its notification (403
        `invalid_token` for a wrong one, or one already spent on the other decision; the
        same decision again answers with the current state; 409 `deadline_passed` after
        the stage's deadline)."""
        reject_unknown_query(request)
        state = container.confirmation.answer(reservationId, body.token, body.decision)
        return {"reservationId": reservationId, "state": state}

    @app.post(
        "/v1/reservations/{reservationId}/authorizations",
        tags=["payments"],
        response_model=None,
        # No 422: a declined card is an answer (200, the reservation failed), not an error.
        responses=answers(AuthorizationAnswer, *KEYED, 404, 409),
    )
    def authorize(
        request: Request,
        reservationId: PathId,
        body: Authorization,
        principal: ApiPrincipal = authorized("payments:write", "write"),
    ) -> dict[str, Any]:
        reject_unknown_query(request)
        outcome = container.payments.authorize(
            reservationId,
            body.party,
            payment_method=body.paymentMethod,
            actor=f"partner:{principal.partner_id}",
            partner_id=principal.partner_id,
        )
        return {
            "reservationId": outcome.reservation_id,
            "party": outcome.party,
            "state": outcome.state,
            "paymentState": outcome.money,
            "paymentIntentId": outcome.intent_id,
            "clientSecret": outcome.client_secret,
        }

    @app.post(
        "/v1/reservations/{reservationId}/cancel",
        tags=["reservations"],
        response_model=None,
        responses=answers(ReservationDocument, *KEYED, 404, 409),
    )
    def cancel(
        request: Request,
        reservationId: PathId,
        body: Cancellation | None = None,
        principal: ApiPrincipal = authorized("reservations:write", "write"),
    ) -> dict[str, Any]:
        reject_unknown_query(request)
        container.reservations.cancel(
            reservationId,
            actor=f"partner:{principal.partner_id}",
            reason="cancelled by partner",
            note=body.reason if body else None,
            partner_id=principal.partner_id,
        )
        return load_reservation_document(
            container.db, reservationId, partner_id=principal.partner_id
        )

    @app.post(
        "/v1/stripe/webhooks",
        tags=["payments"],
        response_model=None,
        responses=answers(StripeReceipt, 400, 404, 500, 503),
    )
    async def stripe_webhook(request: Request) -> dict[str, Any]:
        from bookiji.integrations.stripe_gateway import parse_webhook

        secret = settings.payments.stripe_webhook_secret
        if not secret:  # not enabled here: as if the endpoint did not exist
            raise RouteNotFound("Stripe webhooks are not enabled on this installation")
        reject_unknown_query(request)
        payload = await request.body()
        kind, intent = parse_webhook(payload, request.headers.get("stripe-signature", ""), secret)
        if intent is not None and intent.reservation_id and intent.party:
            container.payments.apply_intent(intent, actor="stripe:webhook")
        return {"received": True, "type": kind}

    @app.get(
        "/v1/events", tags=["events"], response_model=None, responses=answers(EventPage, *KEYED)
    )
    def events(
        request: Request,
        after: int = Query(0, ge=0, le=2**63 - 1, description="cursor: the last event id seen"),
        limit: int = Query(100, ge=1, le=500),
        principal: ApiPrincipal = authorized("events:read", "read"),
    ) -> dict[str, Any]:
        reject_unknown_query(request, "after", "limit")
        with UnitOfWork(container.db, readonly=True) as uow:
            rows = uow.outbox.after(after, partner_id=principal.partner_id, limit=limit)
            notes = cancel_notes(uow.session, rows)
            items = [
                {"id": row.event_id, "cursor": row.id, "type": row.type,
                 "createdAt": format_instant(row.created_at), "data": event_data(row, notes)}
                for row in rows
            ]  # fmt: skip
        return {"events": items, "nextCursor": items[-1]["cursor"] if items else after}

    app.openapi = partial(_openapi, app)  # type: ignore[method-assign]
    return app


_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, less the 422 `HTTPValidationError` it lists on every route with
    parameters: this API answers a malformed request with 400 and the error envelope."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        for operations in schema["paths"].values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                content = responses.get("422", {}).get("content", {})
                ref = content.get("application/json", {}).get("schema", {}).get("$ref")
                if ref == _FASTAPI_422:
                    del responses["422"]
        schemas = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
