"""A local stand-in for the Microsoft identity platform (Entra ID v2) and Graph getSchedule.

It speaks the documented wire formats over real HTTPS on 127.0.0.1, so the real `msal`
library and `httpx` talk to it unmodified: msal only accepts `https://host/tenant`
authorities, so the server runs TLS with a throwaway trustme CA; clients trust that CA
through `ca_path` (a PEM file) or `client_ssl_context()`, never by turning verification off.

Implemented endpoints (`{tenant}` must be the server's tenant id):

* `GET  /{tenant}/v2.0/.well-known/openid-configuration` - OpenID discovery as msal reads it
* `GET  /{tenant}/oauth2/v2.0/authorize` - auto-consent: answers `redirect_uri` with `code`
  and `state` (or `error=access_denied` when `consent_denied`), as a 302 with a query
  string or, for `response_mode=form_post`, Entra's self-submitting HTML form
* `POST /{tenant}/oauth2/v2.0/token` - grants `client_credentials`, `authorization_code`
  (PKCE S256 verified, nonce echoed into the id_token) and `refresh_token`; Entra error JSON
* `POST /v1.0/users/{mailbox}/calendar/getSchedule` and `POST /v1.0/me/calendar/getSchedule`
  - Graph's `scheduleInformation` collection built from per-mailbox event lists

Events are duck-typed like `tests.calendars.conformance.EventSpec` (start, end, summary,
status, transparent) and may carry an optional `show_as` naming Graph's freeBusyStatus
directly (free, tentative, busy, oof, workingElsewhere, unknown). Cancelled events are absent
from getSchedule; transparent ones are "free"; tentative ones "tentative"; others "busy".

Test hooks: `fail_next(...)` fault injection, `token_lifetime`, `revoke_tokens()`,
`set_schedule_error(...)`, `app_permissions`, and a request log (`requests`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import http.server
import json
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import trustme

GRAPH_RESOURCE = "https://graph.microsoft.com"
RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
CALENDAR_SCOPES = frozenset({"Calendars.Read", "Calendars.ReadWrite"})
MAX_SCHEDULE_RANGE = timedelta(days=62)

_GRAPH_ERROR_CODES = {
    400: "BadRequest",
    401: "InvalidAuthenticationToken",
    403: "ErrorAccessDenied",
    404: "ErrorItemNotFound",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceNotAvailable",
    504: "GatewayTimeout",
}
_OAUTH_ERROR_CODES = {
    400: "invalid_request",
    401: "invalid_client",
    429: "temporarily_unavailable",
    500: "server_error",
    503: "temporarily_unavailable",
}
_AVAILABILITY_DIGITS = {
    "free": 0,
    "tentative": 1,
    "busy": 2,
    "oof": 3,
    "workingElsewhere": 4,
    "unknown": 2,
}


class EventLike(Protocol):
    start: datetime
    end: datetime
    summary: str
    status: str
    transparent: bool


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Fault:
    fragment: str
    status: int | None
    remaining: int
    body: str | bytes | dict[str, Any] | None
    headers: dict[str, str]
    delay: float | None


@dataclass
class _Client:
    client_id: str
    secret: str | None  # None: a public client (native app), which must not send a secret


@dataclass
class _User:
    mailbox: str
    oid: str
    name: str


@dataclass
class _AccessToken:
    value: str
    client_id: str
    mailbox: str | None  # None: an app-only token
    scopes: frozenset[str]
    expires_at: float


@dataclass
class _RefreshToken:
    value: str
    client_id: str
    mailbox: str
    scopes: frozenset[str]


@dataclass
class _AuthCode:
    client_id: str
    mailbox: str
    redirect_uri: str
    scopes: frozenset[str]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: float


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class _TLSServer(http.server.ThreadingHTTPServer):
    """TLS per connection, with the handshake done in the handler thread.

    Wrapping the listening socket would run handshakes in the accept loop, where one slow
    or broken client would stall every other request.
    """

    daemon_threads = True

    def __init__(self, owner: MicrosoftServer, context: ssl.SSLContext) -> None:
        self.owner = owner
        self.tls_context = context
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        wrapped = self.tls_context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLError | ConnectionError | TimeoutError | socket.timeout):
            return  # clients that time out or hang up are part of the tests
        self.owner.errors.append(exc)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Keep-alive plus a header write then a body write would wait on delayed ACKs (~40 ms).
    disable_nagle_algorithm = True
    timeout = 30
    server: _TLSServer

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines carry authorization codes; keep them out of test output

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        recorded = RecordedRequest(
            method=self.command,
            path=split.path,
            query={k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            at=time.monotonic(),
        )
        try:
            reply = owner._handle(recorded)
        except Exception as exc:  # a bug in the fake: report it as a 500 and remember it
            owner.errors.append(exc)
            reply = _json_reply(500, {"error": {"code": "FakeServerBug", "message": repr(exc)}})
        if reply is None:  # the client gave up while a fault delayed us
            self.close_connection = True
            return
        self.send_response(reply.status)
        headers = {"Content-Type": "application/json; charset=utf-8", **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(reply.body)


def _json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), dict(headers or {}))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _graph_datetime(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0"


class MicrosoftServer:
    """Entra ID v2 + Graph getSchedule on https://127.0.0.1:<port>. Use as a context manager."""

    def __init__(
        self,
        *,
        tenant_id: str = "7f3c2a10-5b1e-4d2a-9c8e-0a1b2c3d4e5f",
        token_lifetime: int = 3600,
        ca: trustme.CA | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.token_lifetime = token_lifetime  # seconds, advertised as expires_in and enforced
        self.app_permissions: set[str] = {"Calendars.Read"}  # admin-consented app roles
        self.consent_user: str | None = None  # who "signs in" at /authorize
        self.consent_denied = False
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []
        self._ca = ca or trustme.CA()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._faults: list[_Fault] = []
        self._clients: dict[str, _Client] = {}
        self._users: dict[str, _User] = {}
        self._events: dict[str, list[EventLike]] = {}
        self._schedule_errors: dict[str, dict[str, str]] = {}
        self._access_tokens: dict[str, _AccessToken] = {}  # every one ever issued
        self._revoked: set[str] = set()
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._codes: dict[str, _AuthCode] = {}
        self._tmpdir: Path | None = None
        self._httpd: _TLSServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> MicrosoftServer:
        self._tmpdir = Path(tempfile.mkdtemp(prefix="fake-microsoft-"))
        self.ca_path = str(self._tmpdir / "ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._httpd = _TLSServer(self, context)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-microsoft",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> MicrosoftServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- addresses ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def authority_base(self) -> str:
        return self.base_url

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{self.tenant_id}"

    @property
    def graph_base_url(self) -> str:
        return f"{self.base_url}/v1.0"

    def client_ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_path)

    # -- configuration --------------------------------------------------------------------

    def register_client(self, client_id: str, secret: str | None = None) -> None:
        """An app registration; `secret=None` registers a public (native) client."""
        with self._lock:
            self._clients[client_id] = _Client(client_id, secret)

    def add_user(self, mailbox: str, *, name: str | None = None) -> str:
        key = mailbox.casefold()
        with self._lock:
            if key not in self._users:
                self._users[key] = _User(mailbox, str(uuid.uuid4()), name or mailbox.split("@")[0])
                self._events.setdefault(key, [])
            return self._users[key].oid

    def set_events(self, mailbox: str, events: Iterable[EventLike]) -> None:
        self.add_user(mailbox)
        with self._lock:
            self._events[mailbox.casefold()] = list(events)

    def set_schedule_error(self, mailbox: str, response_code: str, message: str) -> None:
        """getSchedule answers 200 with a per-schedule `error` object for this mailbox."""
        with self._lock:
            self._schedule_errors[mailbox.casefold()] = {
                "message": message,
                "responseCode": response_code,
            }

    def fail_next(
        self,
        path_fragment: str,
        status: int | None,
        *,
        count: int = 1,
        body: str | bytes | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        delay: float | None = None,
    ) -> None:
        """The next `count` requests whose path contains `path_fragment` get `status`.

        `body` defaults to the endpoint's documented error JSON (Graph's `{"error": {code,
        message}}` or Entra's OAuth error); `delay` sleeps before answering (timeouts).
        `status=None` answers normally after the delay.
        """
        with self._lock:
            self._faults.append(
                _Fault(path_fragment, status, count, body, dict(headers or {}), delay)
            )

    def revoke_tokens(self) -> None:
        """Invalidate every access token issued so far (refresh tokens stay valid)."""
        with self._lock:
            self._revoked.update(self._access_tokens)

    def expire_refresh_token(self, token: str) -> None:
        """One refresh token stops working (Entra's lifetime ran out); newer ones still do."""
        with self._lock:
            self._refresh_tokens.pop(token, None)

    # -- inspection -----------------------------------------------------------------------

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
            for r in self.requests_to("/oauth2/v2.0/token", "POST")
            if grant_type is None or r.form.get("grant_type") == grant_type
        ]

    def issued_refresh_tokens(self) -> list[str]:
        with self._lock:
            return list(self._refresh_tokens)

    def issued_access_tokens(self) -> list[str]:
        with self._lock:
            return list(self._access_tokens)

    # -- request handling -----------------------------------------------------------------

    def _handle(self, request: RecordedRequest) -> _Reply | None:
        with self._lock:
            self.requests.append(request)
            fault = self._take_fault(request.path)
        if fault is not None:
            if fault.delay and self._stopping.wait(fault.delay):
                return None
            if fault.status is not None:
                return self._fault_reply(request.path, fault)
        return self._route(request)

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.fragment in path:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_reply(self, path: str, fault: _Fault) -> _Reply:
        assert fault.status is not None
        status = fault.status
        if isinstance(fault.body, dict):
            body = json.dumps(fault.body).encode()
        elif isinstance(fault.body, str):
            body = fault.body.encode()
        elif isinstance(fault.body, bytes):
            body = fault.body
        elif "/oauth2/" in path or "/.well-known/" in path:
            error = _OAUTH_ERROR_CODES.get(status, "server_error")
            body = json.dumps(self._oauth_error_payload(error, 90000, "Injected failure.")).encode()
        else:
            code = _GRAPH_ERROR_CODES.get(status, "UnknownError")
            body = json.dumps(self._graph_error_payload(code, "Injected failure.")).encode()
        return _Reply(status, body, fault.headers)

    def _route(self, request: RecordedRequest) -> _Reply:
        parts = [unquote(p) for p in request.path.strip("/").split("/")]
        if parts[:1] == ["v1.0"]:
            return self._graph(request, parts[1:])
        if len(parts) >= 2:
            tenant, rest = parts[0], parts[1:]
            known = {
                ("GET", ("v2.0", ".well-known", "openid-configuration")): self._openid,
                ("GET", ("oauth2", "v2.0", "authorize")): self._authorize,
                ("POST", ("oauth2", "v2.0", "token")): self._token,
            }
            handler = known.get((request.method, tuple(rest)))
            if handler is not None:
                if tenant != self.tenant_id:
                    return self._invalid_tenant(tenant)
                return handler(request)
        return _json_reply(404, {"error": {"code": "NotFound", "message": "No such endpoint."}})

    # -- identity platform ----------------------------------------------------------------

    def _oauth_error_payload(self, error: str, aadsts: int, text: str) -> dict[str, Any]:
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": error,
            "error_description": (
                f"AADSTS{aadsts}: {text}\r\nTrace ID: {trace}\r\n"
                f"Correlation ID: {correlation}\r\nTimestamp: {stamp}"
            ),
            "error_codes": [aadsts],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"{self.base_url}/error?code={aadsts}",
        }

    def _oauth_error(self, status: int, error: str, aadsts: int, text: str) -> _Reply:
        return _json_reply(status, self._oauth_error_payload(error, aadsts, text))

    def _invalid_tenant(self, tenant: str) -> _Reply:
        return self._oauth_error(
            400,
            "invalid_tenant",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID.",
        )

    def _openid(self, request: RecordedRequest) -> _Reply:
        base = self.authority
        return _json_reply(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{self.base_url}/oidc/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "tid", "oid"],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "msgraph_host": "graph.microsoft.com",
            },
        )

    def _authorize(self, request: RecordedRequest) -> _Reply:
        q = request.query
        with self._lock:
            client = self._clients.get(q.get("client_id", ""))
        if client is None:
            return self._oauth_error(
                400, "unauthorized_client", 700016, "Application not found in the directory."
            )
        redirect_uri = q.get("redirect_uri", "")
        target = urlsplit(redirect_uri)
        if target.scheme != "http" or target.hostname not in ("127.0.0.1", "localhost"):
            return self._oauth_error(
                400, "invalid_request", 50011, "The redirect URI does not match the app's."
            )
        if q.get("response_type") != "code":
            return self._oauth_error(400, "unsupported_response_type", 70005, "Use code.")
        state = q.get("state")
        if self.consent_denied:
            params = {
                "error": "access_denied",
                "error_description": "AADSTS65004: User declined to consent to access the app.",
            }
            if state is not None:
                params["state"] = state
            return self._authorization_response(redirect_uri, params, q.get("response_mode"))
        user = self._user(self.consent_user or "")
        if user is None:
            return _Reply(400, b"fake: set consent_user to a known mailbox", {})
        code = "fake-code-" + secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _AuthCode(
                client_id=client.client_id,
                mailbox=user.mailbox,
                redirect_uri=redirect_uri,
                scopes=frozenset(q.get("scope", "").split()),
                nonce=q.get("nonce"),
                code_challenge=q.get("code_challenge"),
                code_challenge_method=q.get("code_challenge_method"),
                expires_at=time.time() + 600,
            )
        params = {"code": code}
        if state is not None:
            params["state"] = state
        params["session_state"] = str(uuid.uuid4())
        if q.get("client_info") == "1":
            params["client_info"] = self._client_info(user)
        return self._authorization_response(redirect_uri, params, q.get("response_mode"))

    @staticmethod
    def _authorization_response(
        redirect_uri: str, params: dict[str, str], response_mode: str | None
    ) -> _Reply:
        """A 302 with a query string, or Entra's self-submitting page for form_post."""
        if response_mode != "form_post":
            return _Reply(302, b"", {"Location": f"{redirect_uri}?{urlencode(params)}"})
        inputs = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}" />'
            for k, v in params.items()
        )
        page = (
            "<html><head><title>Working...</title></head><body>"
            f'<form method="POST" name="hiddenform" action="{html.escape(redirect_uri)}">'
            f"{inputs}<noscript><p>Script is disabled. Click Submit to continue.</p>"
            '<input type="submit" value="Submit" /></noscript></form>'
            '<script language="javascript">document.forms[0].submit();</script>'
            "</body></html>"
        )
        return _Reply(200, page.encode(), {"Content-Type": "text/html; charset=utf-8"})

    def _client_info(self, user: _User) -> str:
        return _b64url(json.dumps({"uid": user.oid, "utid": self.tenant_id}).encode())

    def _user(self, mailbox: str) -> _User | None:
        with self._lock:
            return self._users.get(mailbox.casefold())

    def _authenticate_client(self, request: RecordedRequest) -> _Client | _Reply:
        form = request.form
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            decoded = base64.b64decode(auth[6:]).decode()
            basic_id, _, basic_secret = decoded.partition(":")
            client_id = client_id or unquote(basic_id)
            secret = secret or unquote(basic_secret)
        with self._lock:
            client = self._clients.get(client_id)
        if client is None:
            return self._oauth_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory.",
            )
        if client.secret is None:
            if secret:
                return self._oauth_error(
                    401,
                    "invalid_client",
                    700025,
                    "Client is public so neither 'client_assertion' nor 'client_secret' "
                    "should be presented.",
                )
            return client
        if not secret:
            return self._oauth_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' "
                "or 'client_secret'.",
            )
        if not secrets.compare_digest(secret, client.secret):
            return self._oauth_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request "
                "is the client secret value, not the client secret ID.",
            )
        return client

    def _token(self, request: RecordedRequest) -> _Reply:
        client = self._authenticate_client(request)
        if isinstance(client, _Reply):
            return client
        form = request.form
        grant = form.get("grant_type")
        if grant == "client_credentials":
            return self._grant_client_credentials(client, form)
        if grant == "authorization_code":
            return self._grant_authorization_code(client, form)
        if grant == "refresh_token":
            return self._grant_refresh_token(client, form)
        return self._oauth_error(
            400, "unsupported_grant_type", 70003, f"The app requested grant '{grant}'."
        )

    def _grant_client_credentials(self, client: _Client, form: dict[str, str]) -> _Reply:
        if client.secret is None:
            return self._oauth_error(
                401, "invalid_client", 7000218, "A public client cannot use client credentials."
            )
        scope = form.get("scope", "")
        if scope != f"{GRAPH_RESOURCE}/.default":
            return self._oauth_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier.",
            )
        token = self._issue_access_token(client.client_id, None, frozenset())
        return _json_reply(
            200,
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            },
        )

    def _grant_authorization_code(self, client: _Client, form: dict[str, str]) -> _Reply:
        with self._lock:
            grant = self._codes.pop(form.get("code", ""), None)
        if grant is None or grant.expires_at < time.time() or grant.client_id != client.client_id:
            return self._oauth_error(
                400, "invalid_grant", 70000, "The provided authorization code is invalid."
            )
        if form.get("redirect_uri") != grant.redirect_uri:
            return self._oauth_error(
                400, "invalid_grant", 50148, "The redirect_uri does not match the authorize one."
            )
        if grant.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            computed = _b64url(hashlib.sha256(verifier.encode()).digest())
            if grant.code_challenge_method != "S256" or computed != grant.code_challenge:
                return self._oauth_error(
                    400, "invalid_grant", 501481, "The Code_Verifier does not match."
                )
        user = self._user(grant.mailbox)
        assert user is not None
        scopes = grant.scopes | frozenset(form.get("scope", "").split())
        return self._user_tokens(client, user, scopes, form, nonce=grant.nonce)

    def _grant_refresh_token(self, client: _Client, form: dict[str, str]) -> _Reply:
        with self._lock:
            grant = self._refresh_tokens.get(form.get("refresh_token", ""))
        if grant is None or grant.client_id != client.client_id:
            return self._oauth_error(
                400, "invalid_grant", 70000, "Provided grant is invalid or malformed."
            )
        user = self._user(grant.mailbox)
        assert user is not None
        requested = frozenset(form.get("scope", "").split()) or grant.scopes
        return self._user_tokens(client, user, requested, form, nonce=None)

    def _user_tokens(
        self,
        client: _Client,
        user: _User,
        scopes: frozenset[str],
        form: dict[str, str],
        *,
        nonce: str | None,
    ) -> _Reply:
        resource_scopes = frozenset(s for s in scopes if s not in RESERVED_SCOPES)
        access = self._issue_access_token(client.client_id, user.mailbox, resource_scopes)
        refresh = "fake-rt-" + secrets.token_urlsafe(32)
        with self._lock:
            self._refresh_tokens[refresh] = _RefreshToken(
                refresh, client.client_id, user.mailbox, resource_scopes
            )
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": client.client_id,
            "iss": f"{self.authority}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": user.name,
            "oid": user.oid,
            "preferred_username": user.mailbox,
            "sub": _b64url(hashlib.sha256(user.oid.encode()).digest()),
            "tid": self.tenant_id,
            "ver": "2.0",
        }
        if nonce is not None:
            claims["nonce"] = nonce
        header = _b64url(json.dumps({"typ": "JWT", "alg": "none"}).encode())
        id_token = f"{header}.{_b64url(json.dumps(claims).encode())}."
        granted = sorted(resource_scopes) + sorted(scopes & {"openid", "profile", "email"})
        payload: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(granted),
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": access,
            "refresh_token": refresh,
            "id_token": id_token,
        }
        if form.get("client_info") == "1":
            payload["client_info"] = self._client_info(user)
        return _json_reply(200, payload)

    def _issue_access_token(
        self, client_id: str, mailbox: str | None, scopes: frozenset[str]
    ) -> str:
        value = "fake-at-" + secrets.token_urlsafe(32)
        with self._lock:
            self._access_tokens[value] = _AccessToken(
                value, client_id, mailbox, scopes, time.time() + self.token_lifetime
            )
        return value

    # -- Graph ----------------------------------------------------------------------------

    def _graph_error_payload(self, code: str, message: str) -> dict[str, Any]:
        return {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": str(uuid.uuid4()),
                    "client-request-id": str(uuid.uuid4()),
                },
            }
        }

    def _graph_error(self, status: int, code: str, message: str) -> _Reply:
        return _json_reply(status, self._graph_error_payload(code, message))

    def _graph(self, request: RecordedRequest, parts: list[str]) -> _Reply:
        lowered = [p.casefold() for p in parts]
        if request.method != "POST" or lowered[-2:] != ["calendar", "getschedule"]:
            return self._graph_error(400, "BadRequest", "Resource not found for the segment.")
        token = self._bearer(request)
        if isinstance(token, _Reply):
            return token
        if lowered[:1] == ["me"] and len(parts) == 3:
            if token.mailbox is None:
                return self._graph_error(
                    400,
                    "BadRequest",
                    "/me request is only valid with delegated authentication flow.",
                )
            owner = token.mailbox
        elif lowered[:1] == ["users"] and len(parts) == 4:
            user = self._user(parts[1])
            if user is None:
                return self._graph_error(
                    404, "ErrorInvalidUser", f"The requested user '{parts[1]}' is invalid."
                )
            owner = user.mailbox
        else:
            return self._graph_error(400, "BadRequest", "Resource not found for the segment.")
        if token.mailbox is None:
            allowed = bool(self.app_permissions & CALENDAR_SCOPES)
        else:
            granted = {s.rsplit("/", 1)[-1] for s in token.scopes}
            allowed = (
                bool(granted & CALENDAR_SCOPES) and token.mailbox.casefold() == owner.casefold()
            )
        if not allowed:
            return self._graph_error(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        return self._get_schedule(request)

    def _bearer(self, request: RecordedRequest) -> _AccessToken | _Reply:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return self._graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
        with self._lock:
            token = self._access_tokens.get(auth[7:].strip())
            revoked = token is not None and token.value in self._revoked
        if token is None or revoked:
            return self._graph_error(
                401, "InvalidAuthenticationToken", "IDX14100: JWT is not well formed."
            )
        if token.expires_at <= time.time():
            return self._graph_error(
                401,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
            )
        return token

    def _get_schedule(self, request: RecordedRequest) -> _Reply:
        try:
            body = request.json()
            schedules = body["schedules"]
            start = self._parse_dtz(body["startTime"])
            end = self._parse_dtz(body["endTime"])
            interval = int(body.get("availabilityViewInterval", 30))
        except (ValueError, KeyError, TypeError) as exc:
            return self._graph_error(400, "BadRequest", f"Invalid request body: {exc!r}")
        if not isinstance(schedules, list) or not schedules or len(schedules) > 20:
            return self._graph_error(400, "BadRequest", "schedules must list 1 to 20 addresses.")
        if not start < end:
            return self._graph_error(400, "BadRequest", "The end time must be after the start.")
        if end - start >= MAX_SCHEDULE_RANGE:
            return self._graph_error(
                400, "BadRequest", "The requested time period must be less than 62 days."
            )
        if not 5 <= interval <= 1440:
            return self._graph_error(
                400, "BadRequest", "availabilityViewInterval must be between 5 and 1440."
            )
        zone_name = _prefer_timezone(request.headers.get("prefer", "")) or "UTC"
        try:
            zone = UTC if zone_name == "UTC" else ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            return self._graph_error(400, "BadRequest", f"Unknown time zone '{zone_name}'.")
        value = [
            self._schedule_information(str(s), start, end, interval, zone_name, zone)
            for s in schedules
        ]
        return _json_reply(
            200,
            {
                "@odata.context": (
                    f"{self.graph_base_url}/$metadata#Collection(microsoft.graph.scheduleInformation)"
                ),
                "value": value,
            },
        )

    @staticmethod
    def _parse_dtz(value: Any) -> datetime:
        if not isinstance(value, dict):
            raise TypeError("expected a dateTimeTimeZone object")
        zone_name = value.get("timeZone")
        moment = datetime.fromisoformat(str(value["dateTime"]))
        if moment.tzinfo is not None:
            return moment.astimezone(UTC)
        zone = UTC if zone_name in ("UTC", "Etc/UTC") else ZoneInfo(str(zone_name))
        return moment.replace(tzinfo=zone).astimezone(UTC)

    def _schedule_information(
        self,
        schedule: str,
        start: datetime,
        end: datetime,
        interval: int,
        zone_name: str,
        zone: Any,
    ) -> dict[str, Any]:
        key = schedule.casefold()
        with self._lock:
            error = self._schedule_errors.get(key)
            known = key in self._users
            events = list(self._events.get(key, []))
        if error is not None:
            return {"scheduleId": schedule, "error": dict(error)}
        if not known:
            return {
                "scheduleId": schedule,
                "error": {
                    "message": (
                        f"Unable to resolve e-mail address {schedule} to an Active Directory "
                        "object."
                    ),
                    "responseCode": "5009",
                },
            }
        items = []
        for event in sorted(events, key=lambda e: (e.start, e.end)):
            if event.status == "cancelled" or not (event.start < end and start < event.end):
                continue
            items.append(
                {
                    "isPrivate": False,
                    "status": _show_as(event),
                    "subject": event.summary,
                    "location": "",
                    "start": {
                        "dateTime": _graph_datetime(event.start.astimezone(zone)),
                        "timeZone": zone_name,
                    },
                    "end": {
                        "dateTime": _graph_datetime(event.end.astimezone(zone)),
                        "timeZone": zone_name,
                    },
                }
            )
        return {
            "scheduleId": schedule,
            "availabilityView": _availability_view(events, start, end, interval),
            "scheduleItems": items,
            "workingHours": {
                "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                "startTime": "08:00:00.0000000",
                "endTime": "17:00:00.0000000",
                "timeZone": {"name": zone_name},
            },
        }


def _show_as(event: EventLike) -> str:
    explicit = getattr(event, "show_as", None)
    if explicit:
        return str(explicit)
    if event.transparent:
        return "free"
    if event.status == "tentative":
        return "tentative"
    return "busy"


def _availability_view(
    events: list[EventLike], start: datetime, end: datetime, interval: int
) -> str:
    step = timedelta(minutes=interval)
    digits = []
    slot = start
    while slot < end:
        slot_end = slot + step
        digit = 0
        for event in events:
            if event.status != "cancelled" and event.start < slot_end and slot < event.end:
                digit = max(digit, _AVAILABILITY_DIGITS.get(_show_as(event), 2))
        digits.append(str(digit))
        slot = slot_end
    return "".join(digits)


def _prefer_timezone(prefer: str) -> str | None:
    for part in prefer.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "outlook.timezone":
            return value.strip().strip('"')
    return None


__all__ = ["MicrosoftServer", "RecordedRequest"]
