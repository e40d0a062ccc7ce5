"""Outlook fixtures: the real msal + httpx against a local Microsoft-compatible server.

`outlook_source_factory` is self-contained (it starts its own server) because the shared
conftest imports only that fixture; `microsoft_server` is for tests that also drive the
server directly (fault injection, request log) together with `make_outlook_source`.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from bookiji.integrations.outlook_calendar import OutlookCalendarSource, run_outlook_consent
from tests.calendars.conformance import EventSpec, SourceFactory
from tests.fakes.microsoft_server import MicrosoftServer

APP_CLIENT_ID = "4a1aa1d5-c567-49d0-ad0b-cd957a47f842"
APP_CLIENT_SECRET = "app~secret.V8Q~do-not-log-me-0123456789"
TENANT_ID = "7f3c2a10-5b1e-4d2a-9c8e-0a1b2c3d4e5f"

_mailboxes = itertools.count(1)


def new_mailbox() -> str:
    return f"vendor{next(_mailboxes)}@contoso.example"


def start_microsoft_server(**kwargs: Any) -> MicrosoftServer:
    server = MicrosoftServer(tenant_id=TENANT_ID, **kwargs).start()
    server.register_client(APP_CLIENT_ID, APP_CLIENT_SECRET)
    return server


def make_outlook_source(
    server: MicrosoftServer, mailbox: str, **overrides: Any
) -> OutlookCalendarSource:
    """An app-only source for `mailbox` on `server`; keyword arguments override defaults."""
    options: dict[str, Any] = {
        "tenant_id": server.tenant_id,
        "client_id": APP_CLIENT_ID,
        "client_secret": APP_CLIENT_SECRET,
        "authority_base": server.authority_base,
        "graph_base_url": server.graph_base_url,
        "verify": server.ca_path,
        "timeout": 5.0,
        "max_retry_wait": 2.0,
    }
    options.update(overrides)
    return OutlookCalendarSource(mailbox, **options)


@pytest.fixture
def microsoft_server() -> Iterator[MicrosoftServer]:
    server = start_microsoft_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def outlook_source_factory() -> Iterator[SourceFactory]:
    server = start_microsoft_server()
    sources: list[OutlookCalendarSource] = []

    def factory(events: list[EventSpec]) -> OutlookCalendarSource:
        mailbox = new_mailbox()
        server.set_events(mailbox, events)
        source = make_outlook_source(server, mailbox)
        sources.append(source)
        return source

    try:
        yield factory
    finally:
        for source in sources:
            source.close()
        server.close()


class AutoSubmitForm(HTMLParser):
    """The form of Entra's form_post page, which a real browser submits by script."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "form" and found.get("method", "").upper() == "POST":
            self.action = found.get("action")
        elif tag == "input" and found.get("type") == "hidden" and "name" in found:
            self.fields[found["name"]] = found.get("value", "")


def act_as_browser(server: MicrosoftServer, url: str) -> httpx.Response:
    """Open the sign-in URL, then submit the self-posting form as a browser's script would."""
    with httpx.Client(
        verify=server.client_ssl_context(), follow_redirects=True, timeout=10
    ) as browser:
        page = browser.get(url)
        form = AutoSubmitForm()
        form.feed(page.text)
        if form.action is None:
            return page
        return browser.post(form.action, data=form.fields)


def consent_as(server: MicrosoftServer, mailbox: str) -> dict[str, Any]:
    """What `run_outlook_consent` returns once `mailbox` has signed in (the confidential app)."""
    server.consent_user = mailbox
    urls: queue.Queue[str] = queue.Queue()
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["result"] = run_outlook_consent(
            tenant_id=server.tenant_id,
            client_id=APP_CLIENT_ID,
            client_secret=APP_CLIENT_SECRET,
            authority_base=server.authority_base,
            on_url=urls.put,
            timeout=15,
            verify=server.ca_path,
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    act_as_browser(server, urls.get(timeout=10))
    thread.join(timeout=15)
    result: dict[str, Any] = outcome["result"]
    return result
