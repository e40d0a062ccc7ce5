"""Fixtures for the Google Calendar adapter: the fake Google server and a source factory.

`google_source_factory` is what the shared conformance suite uses; conftest imports only
that name, so it needs no other fixture of this module. When a test module also imports
`google_server`, the factory uses that same server (tests can then inject faults into it);
otherwise it runs a private one.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from bookiji.integrations.google_calendar import (
    GoogleCalendarSource,
    credentials_from_authorized_user_info,
    load_google_credentials,
)
from tests.calendars.conformance import EventSpec
from tests.fakes.google_server import (
    CALENDAR_READONLY,
    AllDayEvent,
    GoogleServer,
    generate_service_account_key,
    private_key_pem,
)

SERVICE_ACCOUNT_EMAIL = "bookiji-sync@bookiji-test.iam.gserviceaccount.com"
CALENDAR_ZONE = "Europe/Berlin"  # not UTC, so offsets in dateTime values are exercised


@functools.cache
def service_account_key() -> rsa.RSAPrivateKey:
    """One throwaway RSA key per test run (never written to the repository)."""
    return generate_service_account_key()


def service_account_info(server: GoogleServer, *, token_uri: str | None = None) -> dict[str, Any]:
    """A service-account key file's content, as the Cloud console issues it.

    The account is registered with the fake (with its public key, so the JWT signature
    is verified). `token_uri` defaults to Google's real endpoint, so that tests exercise the
    override in `load_google_credentials`.
    """
    key = service_account_key()
    server.register_service_account(SERVICE_ACCOUNT_EMAIL, key.public_key())
    return {
        "type": "service_account",
        "project_id": "bookiji-test",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": private_key_pem(key),
        "client_email": SERVICE_ACCOUNT_EMAIL,
        "client_id": "104242424242424242424",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri or "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
        "bookiji-sync%40bookiji-test.iam.gserviceaccount.com",
        "universe_domain": "googleapis.com",
    }


def authorized_user_info(
    server: GoogleServer, scopes: tuple[str, ...] = (CALENDAR_READONLY,)
) -> dict[str, Any]:
    """Authorized-user info as `run_google_consent` returns it, for a pre-consented vendor."""
    client_id, client_secret = server.register_client()
    return {
        "type": "authorized_user",
        "client_id": client_id,
        "client_secret": client_secret,
        "refresh_token": server.issue_refresh_token(client_id, scopes),
        "token_uri": server.token_uri,
        "scopes": list(scopes),
    }


def client_config(server: GoogleServer) -> dict[str, Any]:
    """Our OAuth client in Google's client-secrets format, pointed at the fake."""
    client_id, client_secret = server.register_client()
    return {
        "installed": {
            "client_id": client_id,
            "client_secret": client_secret,
            "project_id": "bookiji-test",
            "auth_uri": server.auth_uri,
            "token_uri": server.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "redirect_uris": ["http://localhost"],
        }
    }


class GoogleSourceFactory:
    """Callable: events -> a GoogleCalendarSource reading a fresh calendar on the fake."""

    def __init__(self, server: GoogleServer, tmp_path: Path) -> None:
        self.server = server
        self._tmp_path = tmp_path
        self._ids = itertools.count(1)
        self._sources: list[GoogleCalendarSource] = []

    def __call__(
        self,
        events: list[EventSpec | AllDayEvent] | None = None,
        *,
        auth: str = "service_account",
        time_zone: str = CALENDAR_ZONE,
        calendar_id: str | None = None,
        **source_kwargs: Any,
    ) -> GoogleCalendarSource:
        calendar_id = calendar_id or f"vendor-{next(self._ids)}@group.calendar.google.com"
        self.server.add_calendar(calendar_id, events or [], time_zone=time_zone)
        source_kwargs.setdefault("credentials", self.credentials(auth))
        source_kwargs.setdefault("api_base_url", self.server.api_base_url)
        source_kwargs.setdefault("timeout", 5.0)
        source_kwargs.setdefault("max_retry_wait", 0.05)
        source = GoogleCalendarSource(calendar_id, **source_kwargs)
        self._sources.append(source)
        return source

    def credentials(self, auth: str = "service_account") -> Any:
        if auth == "service_account":
            path = self._tmp_path / f"service-account-{next(self._ids)}.json"
            path.write_text(json.dumps(service_account_info(self.server)))
            return load_google_credentials(str(path), token_uri=self.server.token_uri)
        if auth == "authorized_user":
            return credentials_from_authorized_user_info(authorized_user_info(self.server))
        raise ValueError(f"unknown auth kind {auth!r}")

    def close(self) -> None:
        for source in self._sources:
            source.close()


@pytest.fixture
def google_server() -> Iterator[GoogleServer]:
    """A running fake Google; fails the test if the fake itself crashed."""
    with GoogleServer(page_size=2) as server:
        yield server
    assert not server.errors, "the fake Google server failed:\n" + "\n".join(server.errors)


@pytest.fixture
def google_source_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., GoogleCalendarSource]]:
    server: GoogleServer
    try:
        server = request.getfixturevalue("google_server")
        private = False
    except pytest.FixtureLookupError:
        server = GoogleServer(page_size=2).start()
        private = True
    factory = GoogleSourceFactory(server, tmp_path)
    try:
        yield factory
    finally:
        factory.close()
        if private:
            server.close()
            assert not server.errors, "the fake Google server failed:\n" + "\n".join(server.errors)
