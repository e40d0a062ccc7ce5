"""Build the right CalendarSource for a stored connection, from settings and credentials.

`credentials_ref` on a connection is either a path to a credentials file (as declared in
the vendors file; `file:` prefix optional) or `json:` followed by what a consent flow
returned (a refresh token and friends). It is a secret: never printed or logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from google.auth.credentials import Credentials

from bookiji.config import Settings
from bookiji.domain.busy import BusyPeriod
from bookiji.services.calendars import SourceBuilder
from bookiji.services.ports import CalendarSource, CalendarUnavailable
from bookiji.store.models import CalendarConnection, Vendor

JSON_PREFIX = "json:"
FILE_PREFIX = "file:"


def stored_json(info: dict[str, Any]) -> str:
    return JSON_PREFIX + json.dumps(info, sort_keys=True)


class _ConsentedSource:
    """A source reading with credentials a consent flow stored (`json:`): after a read, the
    credentials to store when the provider rotated the refresh token (`RenewsCredentials`).
    Both Entra and Google may answer a refresh with a new refresh token; Entra always does,
    and the old one expires on its own schedule."""

    def __init__(
        self, inner: CalendarSource, info: dict[str, Any], refresh_token: Callable[[], str | None]
    ) -> None:
        self._inner = inner
        self._info = info
        self._refresh_token = refresh_token

    def busy(self, start: datetime, end: datetime) -> list[BusyPeriod]:
        return self._inner.busy(start, end)

    def renewed_credentials(self) -> str | None:
        token = self._refresh_token()
        if not token or token == self._info.get("refresh_token"):
            return None
        return stored_json({**self._info, "refresh_token": token})


def _secret_info(connection: CalendarConnection) -> dict[str, Any] | None:
    ref = connection.credentials_ref
    if not ref or not ref.startswith(JSON_PREFIX):
        return None
    try:
        info = json.loads(ref[len(JSON_PREFIX) :])
    except json.JSONDecodeError:
        raise CalendarUnavailable(
            f"calendar {connection.id}: stored credentials are unreadable; connect it again",
            retryable=False,
        ) from None
    if not isinstance(info, dict):
        raise CalendarUnavailable(
            f"calendar {connection.id}: stored credentials are unreadable", retryable=False
        )
    return info


def _credentials_path(connection: CalendarConnection) -> str | None:
    ref = connection.credentials_ref
    if not ref or ref.startswith(JSON_PREFIX):
        return None
    return ref[len(FILE_PREFIX) :] if ref.startswith(FILE_PREFIX) else ref


def source_builder(settings: Settings) -> SourceBuilder:
    timeout = settings.calendars.timeout_seconds

    def build(connection: CalendarConnection, vendor: Vendor) -> CalendarSource:
        if connection.provider == "ics":
            from bookiji.integrations.ics import IcsCalendarSource

            return IcsCalendarSource(
                connection.source, vendor_timezone=vendor.timezone, timeout=timeout
            )
        if connection.provider == "google":
            return _google(connection, settings, timeout)
        if connection.provider == "outlook":
            return _outlook(connection, settings, timeout)
        raise CalendarUnavailable(
            f"calendar {connection.id}: unknown provider {connection.provider!r}", retryable=False
        )

    return build


def _google(connection: CalendarConnection, settings: Settings, timeout: float) -> CalendarSource:
    from bookiji.integrations.google_calendar import GoogleCalendarSource
    from bookiji.integrations.google_oauth import (
        credentials_from_authorized_user_info,
        load_google_credentials,
    )

    google = settings.calendars.google
    info = _secret_info(connection)
    path = _credentials_path(connection)
    credentials: Credentials
    if info is not None:
        credentials = credentials_from_authorized_user_info(info, google.token_uri)
    elif path is not None:
        try:
            credentials = load_google_credentials(path, token_uri=google.token_uri)
        except CalendarUnavailable as exc:
            # Stored as the calendar's last error, so without the file's path: the setting
            # to check is named instead.
            raise CalendarUnavailable(
                f"calendar {connection.id}: {exc.message}; check this calendar's "
                "`credentials` in the vendors file",
                retryable=exc.retryable,
            ) from None
    else:
        raise CalendarUnavailable(
            f"calendar {connection.id}: no Google credentials; run "
            f"'bookiji calendars connect google --vendor {connection.vendor_id}' or name a "
            "credentials file in the vendors file",
            retryable=False,
        )
    source = GoogleCalendarSource(
        connection.source,
        credentials=credentials,
        api_base_url=google.api_base_url,
        timeout=timeout,
    )
    if info is None:  # a credentials file is the operator's to keep
        return source
    return _ConsentedSource(source, info, lambda: source.refresh_token)


def _outlook(connection: CalendarConnection, settings: Settings, timeout: float) -> CalendarSource:
    from bookiji.integrations.outlook_calendar import OutlookCalendarSource

    outlook = settings.calendars.outlook
    if not outlook.tenant_id or not outlook.client_id:
        raise CalendarUnavailable(
            "Outlook calendars need calendars.outlook.tenant_id and client_id in the settings",
            retryable=False,
        )
    info = _secret_info(connection) or {}
    refresh_token = info.get("refresh_token")
    if not refresh_token and not outlook.client_secret:
        raise CalendarUnavailable(
            f"calendar {connection.id}: no Outlook credentials; set "
            "BOOKIJI_CALENDARS__OUTLOOK__CLIENT_SECRET or run 'bookiji calendars connect outlook'",
            retryable=False,
        )
    source = OutlookCalendarSource(
        connection.source,
        tenant_id=outlook.tenant_id,
        client_id=outlook.client_id,
        client_secret=outlook.client_secret,
        refresh_token=refresh_token,
        authority_base=outlook.authority_base,
        graph_base_url=outlook.graph_base_url,
        timeout=timeout,
        verify=outlook.ca_bundle or True,
    )
    if not refresh_token:  # app-only: nothing of the vendor's to renew
        return source
    return _ConsentedSource(source, info, lambda: source.refresh_token)
