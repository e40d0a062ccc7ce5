"""A local stand-in for Google's OAuth 2.0 and Calendar v3 endpoints, with fault injection.

Real client libraries (google-auth, google-api-python-client, google-auth-oauthlib) talk to
it over real HTTP on 127.0.0.1. It implements only what they call, in Google's documented
wire formats:

* `POST /token`: grant types `refresh_token`, `authorization_code` (with PKCE) and
  `urn:ietf:params:oauth:grant-type:jwt-bearer` (service accounts; the JWT's structure,
  audience, lifetime and, when the account's public key is registered, RS256 signature are
  checked);
* `GET /authorize`: consents at once and redirects (302) to the loopback `redirect_uri`
  with `code`, `state` and `scope`, or with `error=access_denied` when told to refuse;
* `GET /calendar/v3/calendars/{calendarId}/events`: `timeMin`/`timeMax` filtering,
  `singleEvents`, `orderBy=startTime`, `showDeleted`, `timeZone`, `maxResults` and
  `pageToken` pagination (pages are at most `page_size` long so paging is exercised).
  A Bearer access token with a calendar scope is required; unknown or expired tokens get
  Google's 401 error JSON.

Faults: `fail_next(path_fragment, status, count=, body=, headers=, delay=)` answers the next
matching requests with that status (Google-style error JSON unless `body` is given), after
`delay` seconds if set; status 200 with no body means "answer normally, but late".
Every request is recorded in `requests` (method, path, query, headers, form, status).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from datetime import time as dtime
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.calendars.conformance import EventSpec
from tests.fakes.loopback import FakeHandler, FakeHTTPServer, LoopbackFake

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CALENDAR_READONLY = "https://www.googleapis.com/auth/calendar.readonly"
CALENDAR_READ_SCOPES = frozenset(
    {
        CALENDAR_READONLY,
        "https://www.googleapis.com/auth/calendar",
        "https://www.googleapis.com/auth/calendar.events",
        "https://www.googleapis.com/auth/calendar.events.readonly",
    }
)
_EVENTS_PREFIX = "/calendar/v3/calendars/"
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_ERRORS = {  # status -> (domain, reason, message), as in Google's error guide
    400: ("global", "badRequest", "Bad Request"),
    401: ("global", "authError", "Invalid Credentials"),
    403: ("global", "forbidden", "Forbidden"),
    404: ("global", "notFound", "Not Found"),
    409: ("global", "duplicate", "The requested identifier already exists."),
    429: ("usageLimits", "rateLimitExceeded", "Rate Limit Exceeded"),
    500: ("global", "backendError", "Backend Error"),
    502: ("global", "backendError", "Bad Gateway"),
    503: ("global", "backendError", "Service Unavailable"),
}


@dataclass(frozen=True)
class AllDayEvent:
    """An all-day event: `end` is exclusive, as in Google's `end.date`."""

    start: date
    end: date
    summary: str
    status: str = "confirmed"
    transparent: bool = False


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str]
    status: int = 0

    @property
    def grant_type(self) -> str | None:
        return self.form.get("grant_type")


@dataclass
class _Fault:
    fragment: str
    status: int
    remaining: int
    body: bytes | None
    headers: dict[str, str]
    delay: float | None


@dataclass
class _AccessToken:
    principal: str
    scopes: frozenset[str]
    expires_at: float


@dataclass
class _RefreshToken:
    client_id: str
    principal: str
    scopes: frozenset[str]
    revoked: bool = False


@dataclass
class _AuthCode:
    client_id: str
    redirect_uri: str
    scopes: frozenset[str]
    code_challenge: str | None
    code_challenge_method: str | None
    used: bool = False


@dataclass
class _Event:
    body: dict[str, Any]  # Google's JSON without start/end
    start: datetime | date
    end: datetime | date

    def instants(self, zone: tzinfo) -> tuple[datetime, datetime]:
        return _as_instant(self.start, zone), _as_instant(self.end, zone)

    def render(self, zone: tzinfo, zone_name: str) -> dict[str, Any]:
        if self.body.get("status") == "cancelled":
            # "Deleted events are only guaranteed to have the id field populated."
            keep = ("kind", "etag", "id", "status", "recurringEventId", "originalStartTime")
            return {k: v for k, v in self.body.items() if k in keep}
        out = dict(self.body)
        out["start"] = _render_when(self.start, zone, zone_name)
        out["end"] = _render_when(self.end, zone, zone_name)
        return out


@dataclass
class _Calendar:
    calendar_id: str
    time_zone: str
    summary: str
    events: list[_Event] = field(default_factory=list)


@dataclass
class _Consent:
    approve: bool = True
    scopes: list[str] | None = None


class _GoogleError(Exception):
    def __init__(
        self,
        status: int,
        payload: dict[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.payload = payload
        self.headers = dict(headers or {})


class GoogleServer(LoopbackFake):
    """The fake. Use as a context manager, or `start()` / `close()`."""

    _thread_name = "fake-google"
    _content_type = "application/json; charset=UTF-8"

    def __init__(self, *, page_size: int = 2, access_token_lifetime: int = 3599) -> None:
        self.page_size = page_size
        self.access_token_lifetime = access_token_lifetime
        # Google omits cancelled events unless showDeleted=true; set this to leak them
        # anyway (as incremental-sync answers do) to test that clients skip them.
        self.include_cancelled = False
        # Google may answer a refresh grant with a new refresh token (OAuth 2.0 allows it);
        # set this to do so every time and revoke the one redeemed.
        self.rotate_refresh_tokens = False
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []  # tracebacks of bugs in the fake itself
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._faults: list[_Fault] = []
        self._calendars: dict[str, _Calendar] = {}
        self._clients: dict[str, str] = {}
        self._service_accounts: dict[str, rsa.RSAPublicKey | None] = {}
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._codes: dict[str, _AuthCode] = {}
        self._consent = _Consent()
        self._httpd: FakeHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def api_base_url(self) -> str:
        """What google-api-python-client takes as `client_options.api_endpoint`."""
        return f"{self.base_url}/calendar/v3/"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def auth_uri(self) -> str:
        return f"{self.base_url}/authorize"

    # ------------------------------------------------------------------ state

    def add_calendar(
        self,
        calendar_id: str,
        events: Iterable[EventSpec | AllDayEvent | Mapping[str, Any]] = (),
        *,
        time_zone: str = "UTC",
        summary: str | None = None,
    ) -> None:
        ZoneInfo(time_zone)  # fail early on a bad zone
        with self._lock:
            self._calendars[calendar_id] = _Calendar(calendar_id, time_zone, summary or calendar_id)
        for event in events:
            self.add_event(calendar_id, event)

    def add_event(
        self, calendar_id: str, event: EventSpec | AllDayEvent | Mapping[str, Any]
    ) -> str:
        """Add an event (a spec, or raw Google event JSON with start/end); returns its id."""
        event_id = uuid.uuid4().hex  # base32hex-compatible, as Google requires
        now = _google_time(datetime.now(UTC))
        body: dict[str, Any] = {
            "kind": "calendar#event",
            "etag": f'"{secrets.randbelow(10**16)}"',
            "id": event_id,
            "status": "confirmed",
            "htmlLink": f"https://www.google.com/calendar/event?eid={event_id}",
            "created": now,
            "updated": now,
            "creator": {"email": calendar_id, "self": True},
            "organizer": {"email": calendar_id, "self": True},
            "iCalUID": f"{event_id}@google.com",
            "sequence": 0,
            "reminders": {"useDefault": True},
            "eventType": "default",
        }
        start: datetime | date
        end: datetime | date
        if isinstance(event, EventSpec | AllDayEvent):
            body["summary"] = event.summary
            body["status"] = event.status
            if event.transparent:
                body["transparency"] = "transparent"
            start, end = event.start, event.end
        else:
            raw = dict(event)
            start, end = _parse_when(raw.pop("start")), _parse_when(raw.pop("end"))
            body.update(raw)
        with self._lock:
            self._calendars[calendar_id].events.append(_Event(body, start, end))
        return str(body["id"])

    def register_client(
        self, client_id: str | None = None, client_secret: str | None = None
    ) -> tuple[str, str]:
        """An OAuth client (as created in the Cloud console); returns (id, secret)."""
        client_id = client_id or f"{secrets.randbelow(10**12)}-fake.apps.googleusercontent.com"
        client_secret = client_secret or f"GOCSPX-{secrets.token_urlsafe(21)}"
        with self._lock:
            self._clients[client_id] = client_secret
        return client_id, client_secret

    def register_service_account(
        self, client_email: str, public_key: rsa.RSAPublicKey | None = None
    ) -> None:
        """Accept JWT grants from this account; with a key, their signatures are checked."""
        with self._lock:
            self._service_accounts[client_email] = public_key

    def issue_refresh_token(
        self,
        client_id: str,
        scopes: Iterable[str] = (CALENDAR_READONLY,),
        principal: str = "vendor@example.com",
    ) -> str:
        """A refresh token as if the user had consented before."""
        token = f"1//fake-{secrets.token_urlsafe(32)}"
        with self._lock:
            self._refresh[token] = _RefreshToken(client_id, principal, frozenset(scopes))
        return token

    def revoke_refresh_token(self, token: str) -> None:
        with self._lock:
            self._refresh[token].revoked = True

    def expire_access_tokens(self) -> None:
        """Every access token issued so far stops working (the client does not know)."""
        with self._lock:
            for grant in self._access.values():
                grant.expires_at = 0.0

    def next_consent(self, *, approve: bool = True, scopes: list[str] | None = None) -> None:
        """How the next visit to /authorize answers (refuse, or grant other scopes)."""
        with self._lock:
            self._consent = _Consent(approve, scopes)

    def fail_next(
        self,
        path_fragment: str,
        status: int,
        *,
        count: int = 1,
        body: bytes | str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
    ) -> None:
        """Answer the next `count` requests whose path contains `path_fragment` with a fault."""
        raw: bytes | None
        if body is None or isinstance(body, bytes):
            raw = body
        elif isinstance(body, str):
            raw = body.encode()
        else:
            raw = json.dumps(body).encode()
        with self._lock:
            self._faults.append(
                _Fault(path_fragment, status, count, raw, dict(headers or {}), delay)
            )

    def requests_to(self, fragment: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if fragment in r.path and (method is None or r.method == method)
            ]

    def token_requests(self, grant_type: str | None = None) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests_to("/token", "POST")
            if grant_type is None or r.grant_type == grant_type
        ]

    def issued_access_tokens(self) -> list[str]:
        with self._lock:
            return list(self._access)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------------ dispatch

    def _handle(self, handler: FakeHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw_body = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("Content-Type", "")
        form: dict[str, str] = {}
        if "application/x-www-form-urlencoded" in content_type:
            form = dict(parse_qsl(raw_body.decode(), keep_blank_values=True))
        elif "json" in content_type and raw_body:
            try:
                loaded = json.loads(raw_body)
                form = {k: str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
            except ValueError:
                form = {}
        record = RecordedRequest(
            method=method,
            path=parts.path,
            query={k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
            headers={k.lower(): v for k, v in handler.headers.items()},
            form=form,
        )
        with self._lock:
            self.requests.append(record)
            fault = self._take_fault(parts.path)

        if fault is not None:
            if fault.delay:
                self._stopping.wait(fault.delay)
            if not (fault.status == 200 and fault.body is None):
                body = fault.body
                if body is None:
                    body = json.dumps(self._fault_payload(parts.path, fault.status)).encode()
                record.status = fault.status
                handler.reply(fault.status, body, fault.headers)
                return

        try:
            status, payload, headers = self._route(method, parts.path, record)
        except _GoogleError as exc:
            status, payload, headers = exc.status, exc.payload, exc.headers
        except Exception:
            self.errors.append(traceback.format_exc())
            status, headers = 500, {}
            payload = _api_error(500)
        record.status = status
        body_bytes = b"" if payload is None else json.dumps(payload, indent=1).encode()
        handler.reply(status, body_bytes, headers)

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.fragment in path:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    @staticmethod
    def _fault_payload(path: str, status: int) -> dict[str, Any]:
        if path == "/token":
            code = {400: "invalid_grant", 401: "invalid_client"}.get(status, "server_error")
            return {"error": code, "error_description": "Injected fault."}
        return _api_error(status)

    def _route(
        self, method: str, path: str, request: RecordedRequest
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        if path == "/token" and method == "POST":
            return 200, self._token(request), {"Cache-Control": "no-store"}
        if path == "/authorize" and method == "GET":
            return self._authorize(request)
        if path.startswith(_EVENTS_PREFIX) and path.endswith("/events") and method == "GET":
            calendar_id = unquote(path[len(_EVENTS_PREFIX) : -len("/events")])
            return 200, self._list_events(calendar_id, request), {}
        raise _GoogleError(404, _api_error(404))

    # ------------------------------------------------------------------ OAuth

    def _token(self, request: RecordedRequest) -> dict[str, Any]:
        grant_type = request.form.get("grant_type")
        if grant_type == JWT_BEARER:
            return self._jwt_grant(request.form.get("assertion", ""))
        client_id = self._authenticate_client(request)
        if grant_type == "refresh_token":
            return self._refresh_grant(client_id, request.form)
        if grant_type == "authorization_code":
            return self._code_grant(client_id, request.form)
        raise _oauth_error(400, "unsupported_grant_type", "Invalid grant_type: ")

    def _authenticate_client(self, request: RecordedRequest) -> str:
        client_id = request.form.get("client_id")
        client_secret = request.form.get("client_secret")
        authorization = request.headers.get("authorization", "")
        if authorization.startswith("Basic "):  # RFC 6749 2.3.1; requests-oauthlib's default
            decoded = base64.b64decode(authorization[6:]).decode()
            user, _, password = decoded.partition(":")
            client_id, client_secret = unquote(user), unquote(password)
        with self._lock:
            known = self._clients.get(client_id or "")
        if known is None:
            raise _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if not secrets.compare_digest(known, client_secret or ""):
            raise _oauth_error(401, "invalid_client", "Unauthorized")
        return str(client_id)

    def _issue_access_token(self, principal: str, scopes: frozenset[str]) -> dict[str, Any]:
        token = f"ya29.fake-{secrets.token_urlsafe(32)}"
        with self._lock:
            self._access[token] = _AccessToken(
                principal, scopes, time.time() + self.access_token_lifetime
            )
        return {
            "access_token": token,
            "expires_in": self.access_token_lifetime,
            "scope": " ".join(sorted(scopes)),
            "token_type": "Bearer",
        }

    def _refresh_grant(self, client_id: str, form: Mapping[str, str]) -> dict[str, Any]:
        with self._lock:
            grant = self._refresh.get(form.get("refresh_token", ""))
        if grant is None or grant.revoked or grant.client_id != client_id:
            raise _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        scopes = grant.scopes
        if form.get("scope"):
            requested = frozenset(form["scope"].split())
            if not requested <= grant.scopes:
                raise _oauth_error(400, "invalid_scope", "Bad Request")
            scopes = requested
        response = self._issue_access_token(grant.principal, scopes)
        if self.rotate_refresh_tokens:
            grant.revoked = True
            response["refresh_token"] = self.issue_refresh_token(
                client_id, grant.scopes, grant.principal
            )
        return response

    def _code_grant(self, client_id: str, form: Mapping[str, str]) -> dict[str, Any]:
        with self._lock:
            code = self._codes.get(form.get("code", ""))
            if code is None or code.used or code.client_id != client_id:
                raise _oauth_error(400, "invalid_grant", "Malformed auth code.")
            code.used = True
        if form.get("redirect_uri") != code.redirect_uri:
            raise _oauth_error(400, "redirect_uri_mismatch", "Bad Request")
        if code.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            if code.code_challenge_method == "S256":
                digest = hashlib.sha256(verifier.encode()).digest()
                expected = base64.urlsafe_b64encode(digest).decode().rstrip("=")
            else:
                expected = verifier
            if not verifier or not secrets.compare_digest(expected, code.code_challenge):
                raise _oauth_error(400, "invalid_grant", "Invalid code verifier.")
        principal = "vendor@example.com"
        refresh = self.issue_refresh_token(client_id, code.scopes, principal)
        response = self._issue_access_token(principal, code.scopes)
        response["refresh_token"] = refresh
        return response

    def _jwt_grant(self, assertion: str) -> dict[str, Any]:
        parts = assertion.split(".")
        if len(parts) != 3:
            raise _oauth_error(400, "invalid_grant", "Invalid JWT: not a JWS.")
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except ValueError:
            raise _oauth_error(400, "invalid_grant", "Invalid JWT: malformed.") from None
        if header.get("alg") != "RS256":
            raise _oauth_error(400, "invalid_grant", "Invalid JWT: unsupported algorithm.")
        if claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, self.token_uri):
            raise _oauth_error(
                400,
                "invalid_grant",
                "Invalid JWT: Failed audience check. The right audience "
                f"is {GOOGLE_TOKEN_AUDIENCE}",
            )
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int):
            raise _oauth_error(400, "invalid_grant", "Invalid JWT: missing iat or exp.")
        if exp <= now - 30 or iat > now + 300 or exp - iat > 3600:
            raise _oauth_error(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 "
                "minutes) and in a reasonable timeframe.",
            )
        issuer = claims.get("iss", "")
        with self._lock:
            known = issuer in self._service_accounts
            public_key = self._service_accounts.get(issuer)
        if not known:
            raise _oauth_error(400, "invalid_grant", "Invalid grant: account not found")
        if public_key is not None:
            signed = f"{parts[0]}.{parts[1]}".encode()
            try:
                public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            except InvalidSignature:
                raise _oauth_error(400, "invalid_grant", "Invalid JWT Signature.") from None
        scopes = frozenset(str(claims.get("scope") or "").split())
        if not scopes:
            raise _oauth_error(
                400, "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        response = self._issue_access_token(str(claims.get("sub") or issuer), scopes)
        response.pop("scope")  # Google's JWT-bearer answer has no scope
        return response

    def _authorize(
        self, request: RecordedRequest
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        q = request.query
        with self._lock:
            client_known = q.get("client_id", "") in self._clients
            consent, self._consent = self._consent, _Consent()
        redirect_uri = q.get("redirect_uri", "")
        target = urlsplit(redirect_uri)
        if not client_known:
            raise _GoogleError(401, {"error": "invalid_client", "error_description": "no client"})
        if target.scheme != "http" or target.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise _GoogleError(400, {"error": "redirect_uri_mismatch"})
        if q.get("response_type") != "code" or not q.get("scope"):
            raise _GoogleError(400, {"error": "invalid_request"})
        params: dict[str, str] = {}
        if "state" in q:
            params["state"] = q["state"]
        if not consent.approve:
            params["error"] = "access_denied"
        else:
            scopes = frozenset(consent.scopes or q["scope"].split())
            code = f"4/fake-{secrets.token_urlsafe(24)}"
            with self._lock:
                self._codes[code] = _AuthCode(
                    q["client_id"],
                    redirect_uri,
                    scopes,
                    q.get("code_challenge"),
                    q.get("code_challenge_method", "plain") if "code_challenge" in q else None,
                )
            params["code"] = code
            params["scope"] = " ".join(sorted(scopes))
        separator = "&" if target.query else "?"
        location = redirect_uri + separator + urlencode(params, quote_via=quote)
        return 302, None, {"Location": location}

    # ------------------------------------------------------------------ Calendar

    def _bearer(self, request: RecordedRequest) -> _AccessToken:
        authorization = request.headers.get("authorization", "")
        if not authorization.startswith("Bearer "):
            raise _GoogleError(
                401,
                _api_error(
                    401,
                    reason="required",
                    message="Request is missing required authentication credential. Expected "
                    "OAuth 2 access token, login cookie or other valid authentication credential.",
                    location="Authorization",
                ),
                {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            )
        with self._lock:
            grant = self._access.get(authorization[len("Bearer ") :])
        if grant is None or grant.expires_at <= time.time():
            raise _GoogleError(
                401,
                _api_error(
                    401,
                    message="Request had invalid authentication credentials. Expected OAuth 2 "
                    "access token, login cookie or other valid authentication credential.",
                    location="Authorization",
                ),
                {
                    "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
                    'error="invalid_token"'
                },
            )
        return grant

    def _list_events(self, calendar_id: str, request: RecordedRequest) -> dict[str, Any]:
        grant = self._bearer(request)
        if not grant.scopes & CALENDAR_READ_SCOPES:
            raise _GoogleError(
                403,
                _api_error(
                    403,
                    reason="insufficientPermissions",
                    message="Request had insufficient authentication scopes.",
                ),
            )
        with self._lock:
            calendar = self._calendars.get(calendar_id)
            events = list(calendar.events) if calendar else []
        if calendar is None:
            raise _GoogleError(404, _api_error(404))
        q = request.query
        time_min = _parse_bound(q, "timeMin")
        time_max = _parse_bound(q, "timeMax")
        if time_min and time_max and time_min >= time_max:
            raise _GoogleError(
                400,
                _api_error(
                    400,
                    domain="calendar",
                    reason="timeRangeEmpty",
                    message="The specified time range is empty.",
                    location="timeMax",
                ),
            )
        single = q.get("singleEvents") == "true"
        order_by = q.get("orderBy")
        if order_by not in (None, "startTime", "updated") or (
            order_by == "startTime" and not single
        ):
            raise _GoogleError(
                400,
                _api_error(
                    400,
                    reason="invalid",
                    message="The requested ordering is not available for the particular query.",
                    location="orderBy",
                ),
            )
        try:
            max_results = int(q.get("maxResults", "250"))
        except ValueError:
            max_results = 0
        if not 1 <= max_results <= 2500:
            raise _GoogleError(400, _api_error(400, reason="invalid", location="maxResults"))
        zone_name = q.get("timeZone") or calendar.time_zone
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            error = _api_error(400, reason="invalid", location="timeZone")
            raise _GoogleError(400, error) from None
        cal_zone = ZoneInfo(calendar.time_zone)
        show_deleted = q.get("showDeleted") == "true" or self.include_cancelled

        selected: list[tuple[datetime, datetime, _Event]] = []
        for event in events:
            start, end = event.instants(cal_zone)
            if time_min and end <= time_min:
                continue
            if time_max and start >= time_max:
                continue
            if event.body.get("status") == "cancelled" and not show_deleted:
                continue
            selected.append((start, end, event))
        if order_by == "startTime":
            selected.sort(key=lambda item: (item[0], item[1]))

        fingerprint = hashlib.sha256(
            json.dumps(
                [calendar_id, sorted((k, v) for k, v in q.items() if k != "pageToken")]
            ).encode()
        ).hexdigest()[:16]
        offset = 0
        if q.get("pageToken"):
            try:
                token = json.loads(_b64url_decode(q["pageToken"]))
                offset, token_fingerprint = int(token["o"]), token["f"]
            except (ValueError, KeyError, TypeError):
                raise _GoogleError(
                    400, _api_error(400, reason="invalid", location="pageToken")
                ) from None
            if token_fingerprint != fingerprint:
                raise _GoogleError(400, _api_error(400, reason="invalid", location="pageToken"))
        size = min(max_results, self.page_size)
        page = selected[offset : offset + size]
        body: dict[str, Any] = {
            "kind": "calendar#events",
            "etag": f'"{fingerprint}"',
            "summary": calendar.summary,
            "description": "",
            "updated": _google_time(datetime.now(UTC)),
            "timeZone": zone_name,
            "accessRole": "reader",
            "defaultReminders": [],
            "items": [event.render(zone, zone_name) for _, _, event in page],
        }
        if offset + size < len(selected):
            payload = json.dumps({"o": offset + size, "f": fingerprint}).encode()
            body["nextPageToken"] = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        else:
            body["nextSyncToken"] = f"CP{secrets.token_hex(8)}="
        return body


# -------------------------------------------------------------------------- wire helpers


def _api_error(
    status: int,
    *,
    domain: str | None = None,
    reason: str | None = None,
    message: str | None = None,
    location: str | None = None,
) -> dict[str, Any]:
    default_domain, default_reason, default_message = _DEFAULT_ERRORS.get(
        status, ("global", "backendError", "Error")
    )
    detail: dict[str, Any] = {
        "domain": domain or default_domain,
        "reason": reason or default_reason,
        "message": message or default_message,
    }
    if location:
        detail["locationType"] = "header" if location == "Authorization" else "parameter"
        detail["location"] = location
    error: dict[str, Any] = {
        "errors": [detail],
        "code": status,
        "message": message or default_message,
    }
    if status in _STATUS_NAMES:
        error["status"] = _STATUS_NAMES[status]
    return {"error": error}


def _oauth_error(status: int, error: str, description: str) -> _GoogleError:
    return _GoogleError(status, {"error": error, "error_description": description})


def _b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("bad base64url") from exc


def _google_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


def _parse_bound(query: Mapping[str, str], name: str) -> datetime | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:  # Google requires the offset
        raise _GoogleError(400, _api_error(400, reason="badRequest", location=name))
    return moment


def _parse_when(value: Mapping[str, Any]) -> datetime | date:
    if "dateTime" in value:
        moment = datetime.fromisoformat(value["dateTime"])
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=ZoneInfo(value["timeZone"]))
        return moment
    return date.fromisoformat(value["date"])


def _as_instant(value: datetime | date, zone: tzinfo) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.combine(value, dtime(0), tzinfo=zone)


def _render_when(value: datetime | date, zone: tzinfo, zone_name: str) -> dict[str, str]:
    if isinstance(value, datetime):
        return {"dateTime": value.astimezone(zone).isoformat(), "timeZone": zone_name}
    return {"date": value.isoformat()}


def generate_service_account_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
