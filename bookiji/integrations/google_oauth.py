"""Google credentials for calendar sync: loading stored credentials and the consent flow.

Two kinds of credential files are understood, told apart by their `"type"`:

* `service_account`: a key downloaded from the Google Cloud console. The calendar must be
  shared with the service account's e-mail (or, in Workspace, read with domain-wide
  delegation through `subject`);
* `authorized_user`: what `run_google_consent` returns after a vendor connected their own
  calendar (client id and secret of our OAuth client plus the vendor's refresh token).

Access tokens are never stored: google-auth obtains one from `token_uri` on first use and
refreshes it when it expires. Nothing here logs or formats a token, secret or key.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import google.auth.credentials
import google.oauth2.credentials
from google.oauth2 import service_account

from bookiji.domain.errors import BookijiError
from bookiji.services.ports import CalendarUnavailable

CALENDAR_READONLY_SCOPE = "https://www.googleapis.com/auth/calendar.readonly"
DEFAULT_SCOPES: tuple[str, ...] = (CALENDAR_READONLY_SCOPE,)
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL, not a secret)

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_INSECURE_TRANSPORT_ENV = "OAUTHLIB_INSECURE_TRANSPORT"
_ENV_LOCK = threading.Lock()

SUCCESS_MESSAGE = "Bookiji is now connected to your Google Calendar. You may close this window."


class GoogleConsentError(BookijiError):
    """The consent flow did not yield usable credentials (refused, timed out, bad config)."""

    code = "google_consent_failed"
    http_status = 502


# --------------------------------------------------------------------------- credentials


def load_google_credentials(
    path: str,
    *,
    token_uri: str | None = None,
    scopes: Sequence[str] = DEFAULT_SCOPES,
    subject: str | None = None,
) -> google.auth.credentials.Credentials:
    """Credentials from a service-account or authorized-user JSON file.

    `token_uri` replaces the file's token endpoint (tests point it at a local server).
    `subject` is the Workspace user to impersonate (service accounts with domain-wide
    delegation only). Raises CalendarUnavailable (not retryable) when the file is missing,
    unreadable or not a Google credential; the message names neither the file (its path is
    a secret's whereabouts, and the message is stored as the calendar's last error) nor its
    content.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
    except FileNotFoundError:
        raise CalendarUnavailable("Google credentials file not found", retryable=False) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalendarUnavailable(
            f"Google credentials file is not readable JSON ({type(exc).__name__})",
            retryable=False,
        ) from None
    if not isinstance(info, dict):
        raise CalendarUnavailable(
            "Google credentials file does not hold a JSON object", retryable=False
        )
    kind = info.get("type")
    try:
        if kind == "service_account":
            return credentials_from_service_account_info(
                info, token_uri=token_uri, scopes=scopes, subject=subject
            )
        if kind == "authorized_user":
            if subject is not None:
                raise ValueError("subject only applies to service accounts")
            return credentials_from_authorized_user_info(info, token_uri=token_uri, scopes=scopes)
    except (ValueError, KeyError, TypeError) as exc:
        # The library's messages name missing fields, never values; still keep to our words.
        raise CalendarUnavailable(
            f"Google credentials file is not usable ({_describe_value_error(exc)})",
            retryable=False,
        ) from None
    raise CalendarUnavailable(
        f"Google credentials file has unsupported type {kind!r} "
        "(expected 'service_account' or 'authorized_user')",
        retryable=False,
    )


def credentials_from_service_account_info(
    info: Mapping[str, Any],
    *,
    token_uri: str | None = None,
    scopes: Sequence[str] = DEFAULT_SCOPES,
    subject: str | None = None,
) -> service_account.Credentials:
    """Service-account credentials; raises ValueError on a malformed key file."""
    data = dict(info)
    if token_uri is not None:
        data["token_uri"] = token_uri
    data.setdefault("token_uri", GOOGLE_TOKEN_URI)
    credentials: service_account.Credentials = _untyped(
        service_account.Credentials.from_service_account_info
    )(data, scopes=list(scopes))
    if subject is not None:
        credentials = _untyped(credentials.with_subject)(subject)
    return credentials


def credentials_from_authorized_user_info(
    info: Mapping[str, Any],
    token_uri: str | None = None,
    *,
    scopes: Sequence[str] | None = None,
) -> google.oauth2.credentials.Credentials:
    """User credentials from authorized-user info (as returned by `run_google_consent`).

    Beware: `Credentials.from_authorized_user_info` ignores the info's `token_uri` and always
    uses Google's; we re-apply the stored (or overriding) one (and keep the token's expiry,
    which the library's copy would lose). Scopes default to the info's
    `scopes`, else calendar read-only. Raises ValueError when fields are missing.
    """
    data = dict(info)
    if scopes is None:
        stored = data.get("scopes")
        scopes = stored.split() if isinstance(stored, str) else (stored or DEFAULT_SCOPES)
    loaded: google.oauth2.credentials.Credentials = _untyped(
        google.oauth2.credentials.Credentials.from_authorized_user_info
    )(data, scopes=list(scopes))
    credentials: google.oauth2.credentials.Credentials = loaded.with_token_uri(
        token_uri or data.get("token_uri") or GOOGLE_TOKEN_URI
    )
    # The with_* copies drop `expiry`; without it a stored stale token would be sent once
    # (and answered 401) instead of being refreshed first.
    credentials.expiry = loaded.expiry
    return credentials


def _untyped(function: Any) -> Any:
    """google-auth's constructors lack annotations; call them as what they are (Any)."""
    return function


def _describe_value_error(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}" if exc.args else "missing field"
    text = str(exc)
    # Library messages here are short and name fields ("missing fields client_secret");
    # anything long or multi-line might quote content, so fall back to the type name.
    if len(text) > 160 or "\n" in text or "-----" in text:
        return type(exc).__name__
    return text


# --------------------------------------------------------------------------- consent flow


def run_google_consent(
    client_config: Mapping[str, Any],
    *,
    scopes: Sequence[str] = DEFAULT_SCOPES,
    open_browser: bool,
    on_url: Callable[[str], None],
    port: int = 0,
    timeout: float = 300,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    """Let a vendor grant read access to their Google Calendar; return authorized-user info.

    `client_config` is our OAuth client in Google's client-secrets format
    (`{"installed": {"client_id", "client_secret", "auth_uri", "token_uri", ...}}`; the inner
    mapping alone is accepted too). A loopback server on `host:port` (port 0: any free port)
    receives the redirect; the consent URL goes to `on_url` (the CLI prints it) and, with
    `open_browser`, to the system browser. Blocks until the redirect arrives or `timeout`
    seconds pass. Returns `{"type": "authorized_user", "client_id", "client_secret",
    "refresh_token", "token_uri", "scopes"}` for the caller to store (it is a secret).
    Raises GoogleConsentError.
    """
    # Imported here: the CLI needs it, the sync daemon does not (it pulls in requests).
    from google_auth_oauthlib.flow import InstalledAppFlow, WSGITimeoutError
    from oauthlib.oauth2.rfc6749.errors import OAuth2Error

    config = _normalise_client_config(client_config)
    inner = next(iter(config.values()))
    auth_uri, token_uri = str(inner["auth_uri"]), str(inner["token_uri"])

    class _Flow(InstalledAppFlow):  # type: ignore[misc]
        def authorization_url(self, **kwargs: Any) -> tuple[str, str]:
            url, state = super().authorization_url(**kwargs)
            # The loopback server is already bound when this runs, so a caller may act on
            # the URL at once (tests play the browser from another thread).
            on_url(url)
            return url, state

    try:
        with _allow_insecure_loopback(auth_uri, token_uri):
            flow = _Flow.from_client_config(config, scopes=list(scopes))
            credentials = flow.run_local_server(
                host=host,
                port=port,
                open_browser=open_browser,
                authorization_prompt_message=None,  # on_url shows it; the library would print
                success_message=SUCCESS_MESSAGE,
                timeout_seconds=timeout,
                # Always ask, so Google returns a refresh token even on a repeated consent.
                prompt="consent",
                access_type="offline",
            )
    except WSGITimeoutError:
        raise GoogleConsentError(
            f"No answer from the Google consent page within {timeout:g} seconds"
        ) from None
    except OAuth2Error as exc:
        # `exc.error` is the RFC 6749 code (access_denied, invalid_grant, ...); the
        # description may echo request data, so it is left out.
        raise GoogleConsentError(f"Google consent failed: {exc.error}") from None
    except Warning:
        # oauthlib raises a bare Warning when the granted scopes differ from the requested
        # ones (with granular consent a user may untick the calendar box).
        raise GoogleConsentError(
            "Google consent did not grant the requested calendar permission"
        ) from None
    except (OSError, ValueError) as exc:
        raise GoogleConsentError(
            f"Google consent failed ({type(exc).__name__}); check the OAuth client settings"
        ) from None

    granted = set(credentials.scopes or scopes)
    if not set(scopes) <= granted:
        raise GoogleConsentError("Google consent did not grant the requested calendar permission")
    if not credentials.refresh_token:
        raise GoogleConsentError("Google returned no refresh token; revoke access and retry")
    return {
        "type": "authorized_user",
        "client_id": inner["client_id"],
        "client_secret": inner["client_secret"],
        "refresh_token": credentials.refresh_token,
        "token_uri": token_uri,
        "scopes": sorted(granted),
    }


def _normalise_client_config(client_config: Mapping[str, Any]) -> dict[str, Any]:
    if "installed" in client_config or "web" in client_config:
        config = dict(client_config)
    else:
        config = {"installed": dict(client_config)}
    inner = next(iter(v for k, v in config.items() if k in ("installed", "web")))
    missing = [k for k in ("client_id", "client_secret", "auth_uri", "token_uri") if k not in inner]
    if missing:
        raise GoogleConsentError(f"Google OAuth client config lacks {', '.join(missing)}")
    return {k: v for k, v in config.items() if k in ("installed", "web")}


def _is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOOPBACK_HOSTS


@contextmanager
def _allow_insecure_loopback(*urls: str) -> Iterator[None]:
    """Let oauthlib talk plain http to endpoints on this machine, and only there.

    oauthlib refuses any http:// authorization or token endpoint unless the process-wide
    OAUTHLIB_INSECURE_TRANSPORT is set. Plain http to 127.0.0.1/localhost never leaves the
    host, so for those (the local test server) we set it for the duration of the flow and
    restore it afterwards. If any http:// endpoint is elsewhere we leave it unset, so oauthlib
    refuses as it should. (The redirect to our own loopback server is http by design; the
    library already handles that by rewriting it to https before parsing.)
    """
    insecure = [u for u in urls if urlsplit(u).scheme.lower() != "https"]
    if not insecure or not all(_is_loopback(u) for u in insecure):
        yield
        return
    with _ENV_LOCK:
        previous = os.environ.get(_INSECURE_TRANSPORT_ENV)
        os.environ[_INSECURE_TRANSPORT_ENV] = "1"
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(_INSECURE_TRANSPORT_ENV, None)
            else:
                os.environ[_INSECURE_TRANSPORT_ENV] = previous
