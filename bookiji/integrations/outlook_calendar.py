"""Outlook calendars: busy times from Microsoft Graph `getSchedule`, tokens from MSAL.

Two ways in:

* app-only - the operator's app registration has the admin-consented `Calendars.Read`
  application permission; tokens come from `acquire_token_for_client` and any mailbox of the
  tenant is read through `/users/{mailbox}/calendar/getSchedule`;
* delegated - a vendor connected their own mailbox through `run_outlook_consent` (auth-code
  flow with PKCE and a loopback redirect); we keep the refresh token and read
  `/me/calendar/getSchedule`.

MSAL caches access tokens and renews them itself (it treats a token as expired five minutes
before its `expires_in`); a 401 from Graph evicts the cached token and is retried once with a
fresh one. Secrets, tokens and authorization codes never appear in messages or logs.
"""

from __future__ import annotations

import email.utils
import html
import http.server
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import msal
import requests
import requests.adapters
from msal.exceptions import MsalServiceError

from bookiji.domain.busy import BusyPeriod
from bookiji.domain.errors import BookijiError
from bookiji.services.ports import CalendarUnavailable

log = logging.getLogger(__name__)

GRAPH_APP_SCOPE = "https://graph.microsoft.com/.default"
# Fully qualified, so the scope Entra echoes back matches what we later ask MSAL's cache for.
OUTLOOK_DELEGATED_SCOPES: tuple[str, ...] = ("https://graph.microsoft.com/Calendars.Read",)

_CHUNK = timedelta(days=31)  # Graph refuses getSchedule periods of 62 days or more
_AVAILABILITY_VIEW_INTERVAL = 60  # minutes; we read scheduleItems, not availabilityView
_BUSY_STATUSES = frozenset({"busy", "oof", "workingelsewhere"})
_TENTATIVE_STATUSES = frozenset({"tentative", "unknown"})
_FREE_STATUSES = frozenset({"free"})
_RETRYABLE_OAUTH_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_TRANSIENT_SCHEDULE_ERRORS = frozenset(
    {"ErrorServerBusy", "ErrorTimeoutExpired", "ErrorInternalServerTransientError"}
)
_AADSTS = re.compile(r"AADSTS\d+")
_CALLBACK_PATH = "/outlook/callback"


class OutlookConsentError(BookijiError):
    """Connecting an Outlook mailbox did not complete (declined, timed out, rejected)."""

    code = "outlook_consent_failed"
    http_status = 400


class _MsalHttpClient:
    """The HTTP client MSAL uses (its `HttpClient` interface): ours, so `verify` sticks.

    MSAL applies its own `verify=` option as `Session.verify`, which requests silently
    replaces with $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE whenever those are set
    (psf/requests#3829). Passing `verify` with every request makes a configured CA bundle
    win; `verify=True` still honours those variables. Like MSAL's default session: one
    retry on connection errors. MSAL still wraps this in its throttling layer.
    """

    def __init__(self, *, verify: str | bool, timeout: float) -> None:
        self._verify = verify
        self._timeout = timeout
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(max_retries=1)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("timeout", self._timeout)
        if self._verify is not True:
            kwargs.setdefault("verify", self._verify)
        return kwargs

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self._session.get(url, **self._options(kwargs))

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self._session.post(url, **self._options(kwargs))

    def close(self) -> None:
        self._session.close()


def _build_msal_app(
    *,
    tenant_id: str,
    client_id: str,
    client_secret: str | None,
    authority_base: str,
    verify: str | bool,
    timeout: float,
) -> msal.ClientApplication:
    """An MSAL app for `{authority_base}/{tenant_id}`; performs OpenID discovery (I/O).

    msal only accepts https authorities. Instance discovery is turned off: it would ask
    login.microsoftonline.com to vouch for any other host (a sovereign cloud, a test
    server), and our authority is configuration, not user input.
    """
    options: dict[str, Any] = {
        "authority": f"{authority_base.rstrip('/')}/{quote(tenant_id, safe='')}",
        "http_client": _MsalHttpClient(verify=verify, timeout=timeout),
        "instance_discovery": False,
        "token_cache": msal.TokenCache(),
    }
    if client_secret:
        return msal.ConfidentialClientApplication(
            client_id, client_credential=client_secret, **options
        )
    return msal.PublicClientApplication(client_id, **options)


def _httpx_verify(verify: str | bool) -> ssl.SSLContext | bool:
    """httpx 0.28 wants an SSLContext for a custom CA bundle (a path is deprecated)."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def _oauth_error_summary(result: dict[str, Any]) -> str:
    """`invalid_client (AADSTS7000215)`: the error and Entra's code, never the free text."""
    error = str(result.get("error") or "unknown_error")
    found = _AADSTS.search(str(result.get("error_description") or ""))
    return f"{error} ({found.group(0)})" if found else error


class OutlookCalendarSource:
    """Busy periods of one Outlook mailbox (`CalendarSource`)."""

    def __init__(
        self,
        mailbox: str,
        *,
        tenant_id: str,
        client_id: str,
        client_secret: str | None = None,
        refresh_token: str | None = None,
        authority_base: str = "https://login.microsoftonline.com",
        graph_base_url: str = "https://graph.microsoft.com/v1.0",
        timeout: float = 10.0,
        max_attempts: int = 3,
        max_retry_wait: float = 5.0,
        verify: str | bool = True,
    ) -> None:
        if not client_secret and not refresh_token:
            raise ValueError(
                "OutlookCalendarSource needs a client secret (app-only access) or a refresh "
                "token from run_outlook_consent (delegated access)"
            )
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.mailbox = mailbox
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.delegated = refresh_token is not None
        self._client_secret = client_secret
        self._initial_refresh_token = refresh_token
        self._authority_base = authority_base
        self._graph_base_url = graph_base_url.rstrip("/")
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._max_retry_wait = max_retry_wait
        self._verify = verify
        self._lock = threading.Lock()
        self._app: msal.ClientApplication | None = None
        self._http: httpx.Client | None = None
        self._last_access_token: str | None = None

    def __repr__(self) -> str:
        mode = "delegated" if self.delegated else "app-only"
        return f"OutlookCalendarSource({self.mailbox!r}, {mode}, tenant_id={self.tenant_id!r})"

    # -- public -------------------------------------------------------------------------

    @property
    def schedule_url(self) -> str:
        if self.delegated:
            return f"{self._graph_base_url}/me/calendar/getSchedule"
        return f"{self._graph_base_url}/users/{quote(self.mailbox, safe='@')}/calendar/getSchedule"

    @property
    def refresh_token(self) -> str | None:
        """The newest refresh token (Entra rotates them); calendar sync stores it after a read."""
        if not self.delegated:
            return None
        if self._app is not None:
            for item in self._app.token_cache.search(
                msal.TokenCache.CredentialType.REFRESH_TOKEN,
                query={"client_id": self.client_id},
            ):
                return str(item["secret"])
        return self._initial_refresh_token

    def busy(self, start: datetime, end: datetime) -> list[BusyPeriod]:
        """Busy periods overlapping [start, end), clipped to it, sorted by start."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("busy() needs timezone-aware datetimes")
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        if not start < end:
            return []
        found: set[BusyPeriod] = set()
        chunk_start = start.replace(microsecond=0)
        while chunk_start < end:
            chunk_end = min(chunk_start + _CHUNK, end)
            if chunk_end.microsecond:
                chunk_end = chunk_end.replace(microsecond=0) + timedelta(seconds=1)
            for period in self._read_chunk(chunk_start, chunk_end):
                clipped_start, clipped_end = max(period.start, start), min(period.end, end)
                if clipped_start < clipped_end:
                    found.add(
                        BusyPeriod(clipped_start, clipped_end, period.tentative, period.summary)
                    )
            chunk_start = chunk_end
        return sorted(found, key=lambda p: (p.start, p.end, p.tentative, p.summary or ""))

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None
            if self._app is not None:
                self._app.http_client.close()
                self._app = None

    def __enter__(self) -> OutlookCalendarSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tokens ---------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        for secret in (
            self._client_secret,
            self._initial_refresh_token,
            self._last_access_token,
        ):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _unavailable(
        self, message: str, *, retryable: bool, status: int | None = None
    ) -> CalendarUnavailable:
        return CalendarUnavailable(
            self._redact(f"Outlook calendar {self.mailbox}: {message}"),
            retryable=retryable,
            status=status,
        )

    def _msal(self) -> msal.ClientApplication:
        with self._lock:
            if self._app is None:
                self._app = _build_msal_app(
                    tenant_id=self.tenant_id,
                    client_id=self.client_id,
                    client_secret=self._client_secret,
                    authority_base=self._authority_base,
                    verify=self._verify,
                    timeout=self._timeout,
                )
            return self._app

    def _httpx(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(timeout=self._timeout, verify=_httpx_verify(self._verify))
            return self._http

    def _access_token(self, *, fresh: bool) -> str:
        """A Graph access token from MSAL's cache, or a new one; CalendarUnavailable if not.

        Token failures are not retried here: MSAL itself retries a dropped connection once
        and throttles a token endpoint answering 429/5xx (it replays that error until the
        Retry-After has passed), so the next sync is the right time to try again.
        """
        try:
            app = self._msal()
            result = self._acquire(app, fresh=fresh)
        except requests.Timeout:
            raise self._unavailable("timed out signing in to Microsoft", retryable=True) from None
        except (requests.RequestException, MsalServiceError) as exc:
            # connection failures, and 5xx from discovery or the token endpoint
            raise self._unavailable(
                f"could not sign in to Microsoft ({type(exc).__name__})", retryable=True
            ) from None
        except ValueError as exc:
            # msal: OpenID discovery refused the authority (unknown tenant), or a token
            # response that is not JSON
            reason = "unknown tenant or authority" if "authority" in str(exc) else "bad answer"
            raise self._unavailable(
                f"Microsoft sign-in failed ({reason})", retryable=False
            ) from None
        if not result or "access_token" not in result:
            result = result or {"error": "no_token"}
            retryable = result.get("error") in _RETRYABLE_OAUTH_ERRORS
            log.warning(
                "Outlook sign-in for %s failed: %s", self.mailbox, _oauth_error_summary(result)
            )
            raise self._unavailable(
                f"Microsoft sign-in failed: {_oauth_error_summary(result)}", retryable=retryable
            )
        token = str(result["access_token"])
        self._last_access_token = token
        return token

    def _acquire(self, app: msal.ClientApplication, *, fresh: bool) -> dict[str, Any] | None:
        if not self.delegated:
            assert isinstance(app, msal.ConfidentialClientApplication)
            if fresh:
                app.remove_tokens_for_client()
            result: dict[str, Any] | None = app.acquire_token_for_client(scopes=[GRAPH_APP_SCOPE])
            return result
        scopes = list(OUTLOOK_DELEGATED_SCOPES)
        accounts = app.get_accounts()
        if accounts:
            # MSAL serves a cached token, or redeems the newest refresh token it holds
            result = app.acquire_token_silent_with_error(
                scopes, account=accounts[0], force_refresh=fresh
            )
            if result is not None:
                return result
        assert self._initial_refresh_token is not None
        # First use: hand our stored refresh token to MSAL, which caches what comes back
        result = app.acquire_token_by_refresh_token(self._initial_refresh_token, scopes=scopes)
        return result

    # -- Graph ----------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        return min(self._max_retry_wait, 0.5 * 2.0 ** (attempt - 1))

    def _retry_wait(self, response: httpx.Response, attempt: int) -> float:
        header = response.headers.get("Retry-After")
        if header:
            try:
                return max(0.0, float(header))
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(header)
                    return max(0.0, (when - datetime.now(UTC)).total_seconds())
                except (TypeError, ValueError):
                    pass
        return self._backoff(attempt)

    def _post_schedule(self, body: dict[str, Any]) -> httpx.Response:
        client = self._httpx()
        attempt = 0
        renewed = False
        fresh = False
        while True:
            attempt += 1
            token = self._access_token(fresh=fresh)
            fresh = False
            try:
                response = client.post(
                    self.schedule_url,
                    json=body,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Prefer": 'outlook.timezone="UTC"',
                        "Accept": "application/json",
                    },
                )
            except httpx.TimeoutException:
                raise self._unavailable(
                    f"Microsoft Graph did not answer within {self._timeout:g}s", retryable=True
                ) from None
            except httpx.TransportError as exc:
                if attempt < self._max_attempts:
                    time.sleep(self._backoff(attempt))
                    continue
                raise self._unavailable(
                    f"could not reach Microsoft Graph ({type(exc).__name__})", retryable=True
                ) from None
            status = response.status_code
            if status == 200:
                return response
            detail = self._graph_error_detail(response)
            if status == 401 and not renewed:
                # revoked or otherwise rejected before MSAL thought it expired: renew once
                renewed, fresh = True, True
                attempt -= 1
                log.info("Graph rejected the token for %s; renewing it once", self.mailbox)
                continue
            if status == 429 or status >= 500:
                wait = self._retry_wait(response, attempt)
                if attempt < self._max_attempts and wait <= self._max_retry_wait:
                    log.info(
                        "Graph answered %s for %s; retrying in %.1fs", status, self.mailbox, wait
                    )
                    time.sleep(wait)
                    continue
                raise self._unavailable(
                    f"Microsoft Graph answered HTTP {status}{detail} after {attempt} attempt(s)",
                    retryable=True,
                    status=status,
                )
            raise self._unavailable(
                f"Microsoft Graph refused getSchedule: HTTP {status}{detail}",
                retryable=False,
                status=status,
            )

    @staticmethod
    def _graph_error_detail(response: httpx.Response) -> str:
        """` (ErrorAccessDenied: Access is denied...)` from Graph's error JSON, if any."""
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            return ""
        if not isinstance(error, dict):
            return ""
        code = str(error.get("code") or "")
        message = " ".join(str(error.get("message") or "").split())[:200]
        return f" ({code}: {message})" if message else f" ({code})" if code else ""

    def _read_chunk(self, start: datetime, end: datetime) -> list[BusyPeriod]:
        body = {
            "schedules": [self.mailbox],
            "startTime": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "endTime": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "availabilityViewInterval": _AVAILABILITY_VIEW_INTERVAL,
        }
        response = self._post_schedule(body)
        try:
            payload = response.json()
        except ValueError:
            raise self._unavailable(
                "Microsoft Graph answered getSchedule with a body that is not JSON",
                retryable=False,
                status=response.status_code,
            ) from None
        try:
            return self._parse_schedule(payload)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise self._unavailable(
                f"unexpected getSchedule answer from Microsoft Graph ({exc})",
                retryable=False,
                status=response.status_code,
            ) from None

    def _parse_schedule(self, payload: Any) -> list[BusyPeriod]:
        entries = payload["value"]
        if not isinstance(entries, list):
            raise TypeError("'value' is not a list")
        wanted = self.mailbox.casefold()
        matching = [e for e in entries if str(e.get("scheduleId", "")).casefold() == wanted]
        if not matching and len(entries) == 1:
            matching = entries  # /me answers may name the mailbox by another alias
        if not matching:
            raise ValueError("no scheduleInformation for the mailbox")
        entry = matching[0]
        error = entry.get("error")
        if error:
            code = str(error.get("responseCode") or "unknown")
            message = " ".join(str(error.get("message") or "").split())[:200]
            raise self._unavailable(
                f"Microsoft Graph could not read this schedule ({code}: {message})",
                retryable=code in _TRANSIENT_SCHEDULE_ERRORS,
            )
        periods = []
        for item in entry.get("scheduleItems") or []:
            status = str(item["status"]).casefold()
            if status in _FREE_STATUSES:
                continue
            tentative = status in _TENTATIVE_STATUSES
            if not tentative and status not in _BUSY_STATUSES:
                log.warning("unknown Outlook free/busy status %r treated as busy", status)
            item_start, item_end = _parse_dtz(item["start"]), _parse_dtz(item["end"])
            if item_start < item_end:
                subject = item.get("subject")
                periods.append(
                    BusyPeriod(item_start, item_end, tentative, str(subject) if subject else None)
                )
        return periods


def _parse_dtz(value: dict[str, Any]) -> datetime:
    """Graph's dateTimeTimeZone (`2019-03-15T12:00:00.0000000`, `UTC`) as aware UTC."""
    raw = str(value["dateTime"])
    head, dot, fraction = raw.partition(".")
    if dot:  # Graph sends 7 fractional digits; Python keeps 6
        digits = re.match(r"\d*", fraction)
        assert digits is not None
        raw = f"{head}.{digits.group(0)[:6].ljust(6, '0')}{fraction[len(digits.group(0)) :]}"
    moment = datetime.fromisoformat(raw)
    if moment.tzinfo is not None:
        return moment.astimezone(UTC)
    zone_name = str(value.get("timeZone") or "UTC")
    if zone_name in ("UTC", "Etc/UTC", "tzone://Microsoft/Utc"):
        return moment.replace(tzinfo=UTC)
    try:
        return moment.replace(tzinfo=ZoneInfo(zone_name)).astimezone(UTC)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unsupported time zone {zone_name!r}") from None


# -- consent ------------------------------------------------------------------------------


class _RedirectCatcher(http.server.HTTPServer):
    """One-shot loopback listener for the authorization response (RFC 8252 section 7.3)."""

    def __init__(self, port: int, expected_state: str | None = None) -> None:
        self.expected_state = expected_state
        self.auth_response: dict[str, str] | None = None
        super().__init__(("127.0.0.1", port), _RedirectHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("Outlook consent listener: a browser connection failed")


class _RedirectHandler(http.server.BaseHTTPRequestHandler):
    """Takes the authorization response as a form POST (`response_mode=form_post`).

    Like MSAL's own loopback receiver, answers arriving in a query string are refused: the
    code would sit in browser history and logs (RFC 9700 section 4.3.1).
    """

    server: _RedirectCatcher
    timeout = 10
    _PAGE: ClassVar[str] = (
        "<!doctype html><meta charset=utf-8><title>Bookiji</title>"
        "<p>{}</p><p>You can close this window.</p>"
    )

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep request details out of the logs

    def do_GET(self) -> None:
        self._reply(404, "Nothing here.")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if urlsplit(self.path).path != _CALLBACK_PATH or not 0 < length <= 65536:
            self._reply(404, "Nothing here.")
            return
        form = self.rfile.read(length).decode("utf-8", "replace")
        params = {k: v[0] for k, v in parse_qs(form).items()}
        if not ("code" in params or "error" in params):
            self._reply(400, "This is not a sign-in response.")
            return
        if params.get("state") != self.server.expected_state:
            self._reply(400, "This sign-in response does not belong to the current request.")
            return
        if self.server.auth_response is None:
            self.server.auth_response = params
        if "error" in params:
            self._reply(200, "Microsoft did not connect your calendar.")
        else:
            self._reply(200, "Your Outlook calendar is connected to Bookiji.")

    def _reply(self, status: int, text: str) -> None:
        body = self._PAGE.format(html.escape(text)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


def run_outlook_consent(
    *,
    tenant_id: str,
    client_id: str,
    client_secret: str | None,
    authority_base: str = "https://login.microsoftonline.com",
    scopes: Sequence[str] = OUTLOOK_DELEGATED_SCOPES,
    on_url: Callable[[str], None],
    port: int = 0,
    timeout: float = 300,
    verify: str | bool = True,
    login_hint: str | None = None,
) -> dict[str, Any]:
    """Let a vendor connect their Outlook mailbox; returns what to store for them.

    Listens on http://127.0.0.1:<port>/outlook/callback (port 0: any free port; Entra
    accepts any port for a registered loopback redirect URI), starts MSAL's auth-code flow
    (PKCE, state, nonce, `response_mode=form_post`), hands the sign-in URL to `on_url` (open
    a browser, print it), waits up to `timeout` seconds for the browser to post the answer
    back and redeems the code.

    Returns `{"refresh_token": str, "account": {...}}` (`account["username"]` is the
    signed-in mailbox). MSAL hides refresh tokens by design; the supported way to reach one
    is its token cache, which is where this reads it from. Raises OutlookConsentError.
    """
    try:
        app = _build_msal_app(
            tenant_id=tenant_id,
            client_id=client_id,
            client_secret=client_secret,
            authority_base=authority_base,
            verify=verify,
            timeout=min(timeout, 30.0),
        )
    except (ValueError, requests.RequestException, MsalServiceError) as exc:
        raise OutlookConsentError(
            f"could not reach the Microsoft sign-in service ({type(exc).__name__})"
        ) from None
    try:
        catcher = _RedirectCatcher(port)
    except OSError as exc:
        app.http_client.close()
        raise OutlookConsentError(
            f"could not listen on 127.0.0.1:{port} for the sign-in ({exc.strerror})"
        ) from None
    try:
        with catcher:
            redirect_uri = f"http://127.0.0.1:{catcher.server_address[1]}{_CALLBACK_PATH}"
            flow = app.initiate_auth_code_flow(
                list(scopes),
                redirect_uri=redirect_uri,
                login_hint=login_hint,
                response_mode="form_post",
            )
            catcher.expected_state = flow["state"]
            on_url(flow["auth_uri"])
            deadline = time.monotonic() + timeout
            while catcher.auth_response is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OutlookConsentError(
                        f"nobody completed the Microsoft sign-in within {timeout:g}s"
                    )
                catcher.timeout = min(remaining, 1.0)
                catcher.handle_request()
            auth_response = catcher.auth_response
        try:
            result = app.acquire_token_by_auth_code_flow(flow, auth_response)
        except (requests.RequestException, MsalServiceError) as exc:
            raise OutlookConsentError(
                f"could not redeem the Microsoft sign-in ({type(exc).__name__})"
            ) from None
        except (ValueError, RuntimeError) as exc:  # state/nonce mismatch, non-JSON answers
            raise OutlookConsentError(
                f"the Microsoft sign-in response was rejected ({type(exc).__name__})"
            ) from None
    finally:
        app.http_client.close()
    if "error" in result:
        raise OutlookConsentError(f"Microsoft sign-in failed: {_oauth_error_summary(result)}")
    accounts = app.get_accounts()
    if not accounts:
        raise OutlookConsentError("Microsoft returned no account for the sign-in")
    account = accounts[0]
    refresh_token = next(
        (
            str(item["secret"])
            for item in app.token_cache.search(
                msal.TokenCache.CredentialType.REFRESH_TOKEN,
                query={"client_id": client_id, "home_account_id": account["home_account_id"]},
            )
        ),
        None,
    )
    if refresh_token is None:
        raise OutlookConsentError(
            "Microsoft issued no refresh token (is offline access allowed for the app?)"
        )
    return {
        "refresh_token": refresh_token,
        "account": {
            key: account.get(key)
            for key in ("home_account_id", "username", "local_account_id", "environment", "realm")
        },
    }


__all__ = [
    "GRAPH_APP_SCOPE",
    "OUTLOOK_DELEGATED_SCOPES",
    "OutlookCalendarSource",
    "OutlookConsentError",
    "run_outlook_consent",
]
