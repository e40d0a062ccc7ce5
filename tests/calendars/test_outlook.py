"""The Outlook adapter: real msal + httpx over HTTPS against the local Microsoft server."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from bookiji.integrations.outlook_calendar import (
    OUTLOOK_DELEGATED_SCOPES,
    OutlookCalendarSource,
    OutlookConsentError,
    run_outlook_consent,
)
from bookiji.services.ports import CalendarUnavailable
from tests.calendars.conformance import EventSpec, at
from tests.calendars.outlook_support import (
    APP_CLIENT_ID,
    APP_CLIENT_SECRET,
    act_as_browser,
    make_outlook_source,
    microsoft_server,  # noqa: F401  (fixture)
    new_mailbox,
)
from tests.fakes.microsoft_server import MicrosoftServer

pytestmark = pytest.mark.timeout(60)

DAY = (at(0, 0), at(1, 0))
SCHEDULE = "/calendar/getSchedule"
TOKEN = "/oauth2/v2.0/token"
NATIVE_CLIENT_ID = "0d6c9a27-2f4b-4c63-8a34-6a1b1e8d2f90"


@dataclass(frozen=True)
class ShowAs:
    """An event whose Graph free/busy status is set directly."""

    start: datetime
    end: datetime
    summary: str
    show_as: str
    status: str = "confirmed"
    transparent: bool = False


@pytest.fixture
def sources() -> Iterator[list[OutlookCalendarSource]]:
    made: list[OutlookCalendarSource] = []
    yield made
    for source in made:
        source.close()


@pytest.fixture
def source_for(
    microsoft_server: MicrosoftServer,  # noqa: F811
    sources: list[OutlookCalendarSource],
) -> Callable[..., OutlookCalendarSource]:
    def make(events: list[Any] | None = None, **overrides: Any) -> OutlookCalendarSource:
        mailbox = new_mailbox()
        microsoft_server.set_events(mailbox, events or [])
        source = make_outlook_source(microsoft_server, mailbox, **overrides)
        sources.append(source)
        return source

    return make


def unavailable(source: OutlookCalendarSource, window: tuple[datetime, datetime] = DAY) -> Any:
    with pytest.raises(CalendarUnavailable) as caught:
        source.busy(*window)
    return caught.value


# -- reading ------------------------------------------------------------------------------


def test_statuses_map_to_busy_tentative_or_nothing(source_for: Callable[..., Any]) -> None:
    source = source_for(
        [
            EventSpec(at(0, 8), at(0, 9), "Confirmed"),
            EventSpec(at(0, 9), at(0, 10), "Maybe", status="tentative"),
            EventSpec(at(0, 10), at(0, 11), "Called off", status="cancelled"),
            EventSpec(at(0, 11), at(0, 12), "Show as free", transparent=True),
            ShowAs(at(0, 12), at(0, 13), "Holiday", "oof"),
            ShowAs(at(0, 13), at(0, 14), "Other site", "workingElsewhere"),
            ShowAs(at(0, 14), at(0, 15), "Who knows", "unknown"),
            ShowAs(at(0, 15), at(0, 16), "Shouting", "BUSY"),
        ]
    )
    periods = source.busy(*DAY)
    assert [(p.start.hour, p.tentative, p.summary) for p in periods] == [
        (8, False, "Confirmed"),
        (9, True, "Maybe"),
        (12, False, "Holiday"),
        (13, False, "Other site"),
        (14, True, "Who knows"),
        (15, False, "Shouting"),
    ]
    assert all(p.start.utcoffset() == timedelta(0) for p in periods)


def test_periods_are_clipped_to_the_window_and_sorted(source_for: Callable[..., Any]) -> None:
    source = source_for(
        [
            EventSpec(at(0, 22), at(1, 2), "Night shift"),
            EventSpec(at(0, 5), at(0, 7), "Early"),
            EventSpec(at(0, 6), at(0, 6, 30), "Overlapping"),
            EventSpec(at(0, 2), at(0, 3), "Before the window"),
        ]
    )
    periods = source.busy(at(0, 4), at(1, 0))
    assert [(p.start, p.end, p.summary) for p in periods] == [
        (at(0, 5), at(0, 7), "Early"),
        (at(0, 6), at(0, 6, 30), "Overlapping"),
        (at(0, 22), at(1, 0), "Night shift"),
    ]


def test_request_follows_the_graph_contract(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    source = source_for([EventSpec(at(0, 9), at(0, 10), "Standup")])
    source.busy(at(0, 8, 15), at(0, 18))
    (graph,) = microsoft_server.requests_to(SCHEDULE)
    assert graph.method == "POST"
    assert graph.path == f"/v1.0/users/{source.mailbox}/calendar/getSchedule"
    assert graph.headers["prefer"] == 'outlook.timezone="UTC"'
    assert graph.headers["authorization"].startswith("Bearer fake-at-")
    assert graph.json() == {
        "schedules": [source.mailbox],
        "startTime": {"dateTime": "2026-12-07T08:15:00", "timeZone": "UTC"},
        "endTime": {"dateTime": "2026-12-07T18:00:00", "timeZone": "UTC"},
        "availabilityViewInterval": 60,
    }
    (token,) = microsoft_server.token_requests()
    assert token.form["grant_type"] == "client_credentials"
    assert token.form["scope"] == "https://graph.microsoft.com/.default"
    # no instance discovery against login.microsoftonline.com: only our server was asked
    assert [r.path.split("/")[-1] for r in microsoft_server.requests] == [
        "openid-configuration",
        "token",
        "getSchedule",
    ]


def test_long_ranges_are_split_below_graphs_limit_without_duplicates(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    boundary = at(0, 0) + timedelta(days=31)
    source = source_for(
        [
            EventSpec(boundary - timedelta(hours=1), boundary + timedelta(hours=1), "Straddles"),
            EventSpec(at(80, 9), at(80, 10), "Late"),
        ]
    )
    periods = source.busy(at(0, 0), at(90, 0))
    assert [p.summary for p in periods] == ["Straddles", "Late"]
    assert len(microsoft_server.requests_to(SCHEDULE)) == 3
    assert len(microsoft_server.token_requests()) == 1  # one cached token for all chunks


def test_an_empty_or_reversed_window_asks_nothing(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    source = source_for([EventSpec(at(0, 9), at(0, 10), "Standup")])
    assert source.busy(at(0, 10), at(0, 9)) == []
    assert microsoft_server.requests == []
    with pytest.raises(ValueError):
        source.busy(datetime(2026, 12, 7), datetime(2026, 12, 8))


# -- tokens -------------------------------------------------------------------------------


def test_tokens_are_cached_and_renewed_after_expiry(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    # msal treats a token as expired 5 minutes before expires_in: 303 s leaves 2-3 s of use
    microsoft_server.token_lifetime = 303
    source = source_for([EventSpec(at(0, 9), at(0, 10), "Standup")])
    source.busy(*DAY)
    source.busy(*DAY)
    assert len(microsoft_server.token_requests()) == 1
    time.sleep(3.1)
    assert len(source.busy(*DAY)) == 1
    assert len(microsoft_server.token_requests("client_credentials")) == 2
    first, second = (
        r.headers["authorization"] for r in microsoft_server.requests_to(SCHEDULE)[::2]
    )
    assert first != second


def test_a_revoked_token_is_renewed_once(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    source = source_for([EventSpec(at(0, 9), at(0, 10), "Standup")])
    source.busy(*DAY)
    microsoft_server.revoke_tokens()
    assert len(source.busy(*DAY)) == 1
    assert len(microsoft_server.token_requests()) == 2
    assert len(microsoft_server.requests_to(SCHEDULE)) == 3


def test_a_persistent_401_is_not_retryable(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    source = source_for()
    microsoft_server.fail_next(SCHEDULE, 401, count=5)
    error = unavailable(source)
    assert (error.retryable, error.status) == (False, 401)
    assert "InvalidAuthenticationToken" in str(error)
    assert len(microsoft_server.requests_to(SCHEDULE)) == 2  # once more with a new token
    assert len(microsoft_server.token_requests()) == 2


def test_403_is_not_retryable(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    microsoft_server.app_permissions.clear()  # nobody granted Calendars.Read
    error = unavailable(source_for())
    assert (error.retryable, error.status) == (False, 403)
    assert "ErrorAccessDenied" in str(error)
    assert len(microsoft_server.requests_to(SCHEDULE)) == 1


def test_an_unknown_mailbox_is_a_404_and_not_retryable(
    microsoft_server: MicrosoftServer,  # noqa: F811
    sources: list[OutlookCalendarSource],
) -> None:
    source = make_outlook_source(microsoft_server, "nobody@contoso.example")
    sources.append(source)
    error = unavailable(source)
    assert (error.retryable, error.status) == (False, 404)
    assert "ErrorInvalidUser" in str(error)


def test_429_waits_for_retry_after_then_succeeds(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    source = source_for([EventSpec(at(0, 9), at(0, 10), "Standup")])
    microsoft_server.fail_next(SCHEDULE, 429, headers={"Retry-After": "1"})
    started = time.monotonic()
    assert len(source.busy(*DAY)) == 1
    first, second = microsoft_server.requests_to(SCHEDULE)
    assert second.at - first.at >= 1.0
    assert time.monotonic() - started < 5


def test_429_with_a_retry_after_beyond_our_patience_gives_up_at_once(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    source = source_for(max_retry_wait=2.0)
    microsoft_server.fail_next(SCHEDULE, 429, headers={"Retry-After": "120"})
    started = time.monotonic()
    error = unavailable(source)
    assert (error.retryable, error.status) == (True, 429)
    assert time.monotonic() - started < 2
    assert len(microsoft_server.requests_to(SCHEDULE)) == 1


def test_503_is_retried(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    source = source_for([EventSpec(at(0, 9), at(0, 10), "Standup")])
    microsoft_server.fail_next(SCHEDULE, 503, count=2)
    assert len(source.busy(*DAY)) == 1
    assert len(microsoft_server.requests_to(SCHEDULE)) == 3


def test_5xx_after_every_attempt_is_retryable(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    source = source_for(max_attempts=2)
    microsoft_server.fail_next(SCHEDULE, 503, count=10, headers={"Retry-After": "0"})
    error = unavailable(source)
    assert (error.retryable, error.status) == (True, 503)
    assert "ServiceNotAvailable" in str(error)
    assert len(microsoft_server.requests_to(SCHEDULE)) == 2


def test_a_timeout_is_retryable(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    source = source_for(timeout=0.5)
    source.busy(*DAY)  # sign in first, so only Graph is slow
    microsoft_server.fail_next(SCHEDULE, None, delay=3)
    started = time.monotonic()
    error = unavailable(source)
    assert error.retryable is True
    assert error.status is None
    assert time.monotonic() - started < 2


def test_an_unreachable_graph_is_retryable(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    import socket

    with socket.socket() as placeholder:  # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        dead = f"https://127.0.0.1:{placeholder.getsockname()[1]}/v1.0"
    source = source_for(graph_base_url=dead, max_retry_wait=0.1)
    error = unavailable(source)
    assert error.retryable is True
    assert "ConnectError" in str(error)


def test_a_body_that_is_not_json_is_not_retryable(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    microsoft_server.fail_next(
        SCHEDULE, 200, body="<html>gateway</html>", headers={"Content-Type": "text/html"}
    )
    error = unavailable(source_for())
    assert error.retryable is False
    assert "not JSON" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        {"value": "nope"},
        {"something": []},
        {"value": [{"scheduleId": "x@contoso.example"}, {"scheduleId": "y@contoso.example"}]},
        {"value": [{"scheduleId": "?", "scheduleItems": [{"status": "busy"}]}]},
        {
            "value": [
                {
                    "scheduleId": "?",
                    "scheduleItems": [
                        {
                            "status": "busy",
                            "start": {"dateTime": "2026-12-07T09:00:00", "timeZone": "Mars/Base"},
                            "end": {"dateTime": "2026-12-07T10:00:00", "timeZone": "Mars/Base"},
                        }
                    ],
                }
            ]
        },
    ],
)
def test_an_unexpected_shape_is_not_retryable(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
    body: dict[str, Any],
) -> None:
    microsoft_server.fail_next(SCHEDULE, 200, body=body)
    error = unavailable(source_for())
    assert error.retryable is False
    assert "unexpected getSchedule answer" in str(error)


def test_a_per_schedule_error_object_is_reported(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    source = source_for([EventSpec(at(0, 9), at(0, 10), "Standup")])
    microsoft_server.set_schedule_error(
        source.mailbox, "5009", "Unable to resolve e-mail address to an Active Directory object."
    )
    error = unavailable(source)
    assert error.retryable is False
    assert "5009" in str(error)


def test_times_in_another_zone_are_converted(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    body = {
        "value": [
            {
                "scheduleId": "whoever",
                "scheduleItems": [
                    {
                        "status": "busy",
                        "subject": "Berlin",
                        "start": {
                            "dateTime": "2026-12-07T10:00:00.0000000",
                            "timeZone": "Europe/Berlin",
                        },
                        "end": {
                            "dateTime": "2026-12-07T11:30:00.5000000",
                            "timeZone": "Europe/Berlin",
                        },
                    }
                ],
            }
        ]
    }
    microsoft_server.fail_next(SCHEDULE, 200, body=body)
    (period,) = source_for().busy(*DAY)
    assert (period.start, period.end) == (at(0, 9), at(0, 10, 30) + timedelta(seconds=0.5))


# -- sign-in failures ---------------------------------------------------------------------


def test_an_invalid_client_secret_is_not_retryable(source_for: Callable[..., Any]) -> None:
    source = source_for(client_secret="wrong~secret-0123456789")
    error = unavailable(source)
    assert error.retryable is False
    assert "invalid_client" in str(error)
    assert "AADSTS7000215" in str(error)
    assert "wrong~secret" not in str(error)


def test_an_unknown_tenant_is_not_retryable(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    error = unavailable(source_for(tenant_id="no-such-tenant"))
    assert error.retryable is False
    assert "unknown tenant" in str(error)


def test_a_token_endpoint_outage_is_retryable(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    microsoft_server.fail_next(TOKEN, 503)
    error = unavailable(source_for())
    assert error.retryable is True
    assert microsoft_server.requests_to(SCHEDULE) == []


def test_a_configured_ca_bundle_beats_requests_environment_variables(
    source_for: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests lets these replace Session.verify, which is how msal applies verify=
    certifi = pytest.importorskip("certifi")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    source = source_for([EventSpec(at(0, 9), at(0, 10), "Standup")])
    assert len(source.busy(*DAY)) == 1


def test_a_token_the_server_says_expired_is_renewed_once_then_refused(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
) -> None:
    microsoft_server.token_lifetime = 0  # expired on arrival
    error = unavailable(source_for())
    assert (error.retryable, error.status) == (False, 401)
    assert "the token is expired" in str(error)
    assert len(microsoft_server.token_requests()) == 2


def test_app_only_access_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="client secret"):
        OutlookCalendarSource("x@contoso.example", tenant_id="t", client_id="c")


def test_no_secret_or_token_appears_in_errors_or_logs(
    microsoft_server: MicrosoftServer,  # noqa: F811
    source_for: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bad_secret = "bad~secret-do-not-log-9876543210"
    errors = [unavailable(source_for(client_secret=bad_secret))]
    source = source_for()
    source.busy(*DAY)
    for status, count in ((401, 5), (403, 1), (429, 5), (500, 5)):
        microsoft_server.fail_next(SCHEDULE, status, count=count, headers={"Retry-After": "0"})
        errors.append(unavailable(source))
    microsoft_server.fail_next(SCHEDULE, 200, body="garbage")
    errors.append(unavailable(source))
    microsoft_server.fail_next(TOKEN, 400, body={"error": "invalid_grant"})
    microsoft_server.revoke_tokens()
    errors.append(unavailable(source_for(max_attempts=1)))

    secrets = [APP_CLIENT_SECRET, bad_secret, *microsoft_server.issued_access_tokens()]
    assert len(secrets) > 3
    for error in errors:
        text = " ".join([str(error), repr(error), repr(error.details), repr(error.__cause__)])
        for secret in secrets:
            assert secret not in text
    for secret in secrets:
        assert secret not in caplog.text


# -- delegated access and consent ----------------------------------------------------------


def run_consent_in_thread(
    server: MicrosoftServer, **overrides: Any
) -> tuple[queue.Queue[str], threading.Thread, dict[str, Any]]:
    urls: queue.Queue[str] = queue.Queue()
    outcome: dict[str, Any] = {}
    options: dict[str, Any] = {
        "tenant_id": server.tenant_id,
        "client_id": APP_CLIENT_ID,
        "client_secret": APP_CLIENT_SECRET,
        "authority_base": server.authority_base,
        "scopes": OUTLOOK_DELEGATED_SCOPES,
        "on_url": urls.put,
        "timeout": 15,
        "verify": server.ca_path,
    }
    options.update(overrides)

    def run() -> None:
        try:
            outcome["result"] = run_outlook_consent(**options)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return urls, thread, outcome


@pytest.mark.parametrize("confidential", [True, False], ids=["web-app", "native-app"])
def test_consent_flow_end_to_end(
    microsoft_server: MicrosoftServer,  # noqa: F811
    sources: list[OutlookCalendarSource],
    confidential: bool,
) -> None:
    mailbox = "owner@contoso.example"
    microsoft_server.set_events(mailbox, [EventSpec(at(0, 9), at(0, 10), "Own meeting")])
    microsoft_server.consent_user = mailbox
    client_id, secret = APP_CLIENT_ID, APP_CLIENT_SECRET
    if not confidential:
        client_id, secret = NATIVE_CLIENT_ID, None
        microsoft_server.register_client(NATIVE_CLIENT_ID, None)

    urls, thread, outcome = run_consent_in_thread(
        microsoft_server, client_id=client_id, client_secret=secret
    )
    url = urls.get(timeout=10)
    assert url.startswith(f"{microsoft_server.authority}/oauth2/v2.0/authorize?")
    page = act_as_browser(microsoft_server, url)
    assert page.status_code == 200
    assert page.url.host == "127.0.0.1"
    assert page.url.path == "/outlook/callback"
    assert "connected" in page.text
    assert "fake-code-" not in page.text
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")

    result = outcome["result"]
    assert result["refresh_token"] in microsoft_server.issued_refresh_tokens()
    assert result["account"]["username"] == mailbox
    (authorize,) = microsoft_server.requests_to("/authorize")
    assert authorize.query["code_challenge_method"] == "S256"
    assert authorize.query["response_mode"] == "form_post"
    assert "offline_access" in authorize.query["scope"].split()
    (redeem,) = microsoft_server.token_requests("authorization_code")
    assert redeem.form["code_verifier"]

    source = OutlookCalendarSource(
        mailbox,
        tenant_id=microsoft_server.tenant_id,
        client_id=client_id,
        client_secret=secret,
        refresh_token=result["refresh_token"],
        authority_base=microsoft_server.authority_base,
        graph_base_url=microsoft_server.graph_base_url,
        verify=microsoft_server.ca_path,
    )
    sources.append(source)
    assert [p.summary for p in source.busy(*DAY)] == ["Own meeting"]
    assert [p.summary for p in source.busy(*DAY)] == ["Own meeting"]
    (graph, _) = microsoft_server.requests_to(SCHEDULE)
    assert graph.path == "/v1.0/me/calendar/getSchedule"
    assert len(microsoft_server.token_requests("refresh_token")) == 1  # then from the cache

    # a revoked access token is renewed with the refresh token MSAL now holds, and the
    # rotated refresh token is what the caller should persist
    microsoft_server.revoke_tokens()
    assert len(source.busy(*DAY)) == 1
    refreshes = microsoft_server.token_requests("refresh_token")
    assert len(refreshes) == 2
    assert refreshes[1].form["refresh_token"] != result["refresh_token"]
    assert source.refresh_token == microsoft_server.issued_refresh_tokens()[-1]


def test_an_unknown_refresh_token_is_not_retryable(
    microsoft_server: MicrosoftServer,  # noqa: F811
) -> None:
    microsoft_server.set_events("owner@contoso.example", [])
    source = OutlookCalendarSource(
        "owner@contoso.example",
        tenant_id=microsoft_server.tenant_id,
        client_id=APP_CLIENT_ID,
        client_secret=APP_CLIENT_SECRET,
        refresh_token="fake-rt-never-issued",
        authority_base=microsoft_server.authority_base,
        graph_base_url=microsoft_server.graph_base_url,
        verify=microsoft_server.ca_path,
    )
    with source:
        error = unavailable(source)
    assert error.retryable is False
    assert "invalid_grant" in str(error)
    assert "fake-rt-never-issued" not in str(error)
    assert microsoft_server.requests_to(SCHEDULE) == []


def test_declined_consent_raises(microsoft_server: MicrosoftServer) -> None:  # noqa: F811
    microsoft_server.consent_denied = True
    urls, thread, outcome = run_consent_in_thread(microsoft_server)
    page = act_as_browser(microsoft_server, urls.get(timeout=10))
    assert "did not connect" in page.text
    thread.join(timeout=15)
    assert isinstance(outcome.get("error"), OutlookConsentError)
    assert "access_denied" in str(outcome["error"])
    assert "AADSTS65004" in str(outcome["error"])
    assert microsoft_server.token_requests() == []


def test_consent_gives_up_after_its_timeout(microsoft_server: MicrosoftServer) -> None:  # noqa: F811
    urls, thread, outcome = run_consent_in_thread(microsoft_server, timeout=0.5)
    urls.get(timeout=10)  # nobody opens it
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), OutlookConsentError)
    assert "within" in str(outcome["error"])


def test_a_forged_redirect_is_ignored(microsoft_server: MicrosoftServer) -> None:  # noqa: F811
    microsoft_server.set_events("owner@contoso.example", [])
    microsoft_server.consent_user = "owner@contoso.example"
    urls, thread, outcome = run_consent_in_thread(microsoft_server)
    url = urls.get(timeout=10)
    redirect_uri = httpx.URL(url).params["redirect_uri"]
    forged = httpx.post(redirect_uri, data={"code": "evil", "state": "forged"}, timeout=5)
    assert forged.status_code == 400
    state = httpx.URL(url).params["state"]
    in_query = httpx.get(f"{redirect_uri}?code=evil&state={state}", timeout=5)
    assert in_query.status_code == 404  # only form_post answers are taken
    assert act_as_browser(microsoft_server, url).status_code == 200
    thread.join(timeout=15)
    assert "result" in outcome, outcome.get("error")
