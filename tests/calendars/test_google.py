"""GoogleCalendarSource and the consent flow against the local fake Google (real libraries)."""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bookiji.integrations.google_calendar import (
    GoogleCalendarSource,
    GoogleConsentError,
    credentials_from_authorized_user_info,
    load_google_credentials,
    run_google_consent,
)
from bookiji.services.ports import CalendarUnavailable
from tests.calendars import google_support
from tests.calendars.conformance import EventSpec, at
from tests.calendars.google_support import (
    SERVICE_ACCOUNT_EMAIL,
    GoogleSourceFactory,
    authorized_user_info,
    client_config,
    private_key_pem,
    service_account_key,
)
from tests.fakes.google_server import (
    CALENDAR_READONLY,
    GOOGLE_TOKEN_AUDIENCE,
    AllDayEvent,
    GoogleServer,
)

pytestmark = pytest.mark.timeout(60)

# The fake server fixture; google_source_factory (from conftest) then uses this same server.
google_server = google_support.google_server

EVENTS = "/events"
DAY = (at(0, 0), at(1, 0))


class Sleeps:
    """Records the waits between retries instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- reading events


def test_tentative_is_flagged_and_cancelled_and_free_events_are_skipped(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    google_server.include_cancelled = True  # make the adapter's own filter do the work
    source = google_source_factory(
        [
            EventSpec(at(0, 9), at(0, 10), "Standup"),
            EventSpec(at(0, 11), at(0, 12), "Maybe lunch", status="tentative"),
            EventSpec(at(0, 13), at(0, 14), "Called off", status="cancelled"),
            EventSpec(at(0, 15), at(0, 16), "Gym", transparent=True),
        ]
    )
    periods = source.busy(*DAY)
    assert [(p.start, p.end, p.tentative, p.summary) for p in periods] == [
        (at(0, 9), at(0, 10), False, "Standup"),
        (at(0, 11), at(0, 12), True, "Maybe lunch"),
    ]
    query = google_server.requests_to(EVENTS)[0].query
    assert query["singleEvents"] == "true"
    assert query["orderBy"] == "startTime"
    assert query["timeMin"] == "2026-12-07T00:00:00Z"
    assert query["timeMax"] == "2026-12-08T00:00:00Z"
    assert "timeZone" not in query  # all-day dates must stay in the calendar's own zone


@pytest.mark.parametrize(
    ("zone", "utc_start"),
    [
        ("America/New_York", datetime(2026, 12, 8, 5, 0, tzinfo=UTC)),
        ("Asia/Tokyo", datetime(2026, 12, 7, 15, 0, tzinfo=UTC)),
        ("UTC", datetime(2026, 12, 8, 0, 0, tzinfo=UTC)),
    ],
)
def test_all_day_events_span_midnight_to_midnight_in_the_calendars_zone(
    google_source_factory: GoogleSourceFactory, zone: str, utc_start: datetime
) -> None:
    source = google_source_factory(
        [AllDayEvent(date(2026, 12, 8), date(2026, 12, 9), "Trade fair")], time_zone=zone
    )
    [period] = source.busy(at(0, 0), at(3, 0))
    assert (period.start, period.end) == (utc_start, utc_start + timedelta(days=1))
    assert period.summary == "Trade fair"
    assert not period.tentative


def test_all_day_event_across_a_dst_change_is_clipped_to_the_window(
    google_source_factory: GoogleSourceFactory,
) -> None:
    source = google_source_factory(
        [AllDayEvent(date(2026, 3, 28), date(2026, 3, 30), "Weekend away")],
        time_zone="Europe/Berlin",
    )
    window = (datetime(2026, 3, 28, 12, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    [period] = source.busy(*window)
    # Berlin moves from +01:00 to +02:00 on 29 March: 30 March 00:00 local is 29 March 22:00Z.
    assert (period.start, period.end) == (window[0], datetime(2026, 3, 29, 22, tzinfo=UTC))


def test_every_page_is_read(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    specs = [EventSpec(at(0, h), at(0, h, 30), f"Slot {h}") for h in range(8, 15)]
    source = google_source_factory(list(reversed(specs)))  # the server sorts by start
    periods = source.busy(*DAY)
    assert [p.summary for p in periods] == [s.summary for s in specs]
    requests = google_server.requests_to(EVENTS)
    assert len(requests) == 4  # 7 events, pages of 2
    assert "pageToken" not in requests[0].query
    assert all("pageToken" in r.query for r in requests[1:])


def test_declined_invitations_do_not_block_and_maybe_answers_are_tentative(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    source = google_source_factory([])
    for hour, answer in [(9, "declined"), (11, "tentative"), (13, "accepted")]:
        google_server.add_event(
            source.calendar_id,
            {
                "summary": f"Invite {answer}",
                "start": {"dateTime": at(0, hour).isoformat()},
                "end": {"dateTime": at(0, hour + 1).isoformat()},
                "organizer": {"email": "someone@example.com"},
                "attendees": [
                    {"email": "someone@example.com", "organizer": True},
                    {"email": source.calendar_id, "self": True, "responseStatus": answer},
                ],
            },
        )
    periods = source.busy(*DAY)
    assert [(p.summary, p.tentative) for p in periods] == [
        ("Invite tentative", True),
        ("Invite accepted", False),
    ]


def test_a_window_that_is_empty_or_naive_is_handled_before_any_request(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    source = google_source_factory([EventSpec(at(0, 9), at(0, 10), "Standup")])
    assert source.busy(at(0, 10), at(0, 10)) == []
    with pytest.raises(ValueError, match="aware"):
        source.busy(datetime(2026, 12, 7), datetime(2026, 12, 8))
    assert google_server.requests == []


# --------------------------------------------------------------------------- credentials


def test_service_account_jwt_goes_to_the_overridden_token_uri(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    source = google_source_factory([EventSpec(at(0, 9), at(0, 10), "Standup")])
    assert len(source.busy(*DAY)) == 1
    [grant] = google_server.token_requests()
    assert grant.grant_type == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    claims = json.loads(_b64(grant.form["assertion"].split(".")[1]))
    # google-auth always addresses the JWT to Google's token endpoint, whatever token_uri is.
    assert claims["aud"] == GOOGLE_TOKEN_AUDIENCE
    assert claims["iss"] == SERVICE_ACCOUNT_EMAIL
    assert claims["scope"] == CALENDAR_READONLY
    # ...and the fake verified the RS256 signature with the registered public key.


def test_authorized_user_file_keeps_its_own_token_uri(
    google_server: GoogleServer, tmp_path: Path
) -> None:
    path = tmp_path / "vendor-google.json"
    path.write_text(json.dumps(authorized_user_info(google_server)))
    credentials = load_google_credentials(str(path))  # no override: the file's token_uri
    google_server.add_calendar("vendor@example.com", [EventSpec(at(0, 9), at(0, 10), "Call")])
    with GoogleCalendarSource(
        "vendor@example.com", credentials=credentials, api_base_url=google_server.api_base_url
    ) as source:
        assert [p.summary for p in source.busy(*DAY)] == ["Call"]
    assert [r.grant_type for r in google_server.token_requests()] == ["refresh_token"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "not found"),
        ("{not json", "not readable JSON"),
        ('{"type": "external_account"}', "unsupported type"),
        ('{"type": "authorized_user", "client_id": "x"}', "not usable"),
    ],
)
def test_unusable_credential_files_are_not_retryable(
    tmp_path: Path, content: str | None, match: str
) -> None:
    path = tmp_path / "google.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CalendarUnavailable, match=match) as info:
        load_google_credentials(str(path))
    assert info.value.retryable is False


def test_an_expired_stored_access_token_is_refreshed_before_use(
    google_server: GoogleServer,
) -> None:
    info = authorized_user_info(google_server)
    info["token"] = "ya29.stale-token-from-last-week"
    info["expiry"] = "2026-01-01T00:00:00Z"
    credentials = credentials_from_authorized_user_info(info)
    google_server.add_calendar("vendor@example.com", [EventSpec(at(0, 9), at(0, 10), "Call")])
    with GoogleCalendarSource(
        "vendor@example.com", credentials=credentials, api_base_url=google_server.api_base_url
    ) as source:
        assert len(source.busy(*DAY)) == 1
    [refresh] = google_server.token_requests()
    assert refresh.grant_type == "refresh_token"
    assert refresh.form["refresh_token"] == info["refresh_token"]
    [call] = google_server.requests_to(EVENTS)
    assert call.status == 200
    assert call.headers["authorization"] != "Bearer ya29.stale-token-from-last-week"
    assert credentials.token in google_server.issued_access_tokens()


def test_an_access_token_that_expired_on_the_server_is_refreshed_after_401(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    source = google_source_factory(
        [EventSpec(at(0, 9), at(0, 10), "Standup")], auth="authorized_user"
    )
    assert len(source.busy(*DAY)) == 1
    google_server.expire_access_tokens()
    assert len(source.busy(*DAY)) == 1
    assert [r.grant_type for r in google_server.token_requests()] == ["refresh_token"] * 2
    assert [r.status for r in google_server.requests_to(EVENTS)] == [200, 401, 200]


def test_short_lived_tokens_are_refreshed_without_a_401(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    # google-auth treats a token as expired 3m45s before its expiry, so a 60 s token is
    # refreshed before every request; the API never sees it stale.
    google_server.access_token_lifetime = 60
    source = google_source_factory([EventSpec(at(0, 9), at(0, 10), "A")], auth="authorized_user")
    source.busy(*DAY)
    source.busy(*DAY)
    assert len(google_server.token_requests("refresh_token")) == 2
    assert all(r.status == 200 for r in google_server.requests_to(EVENTS))


# --------------------------------------------------------------------------- failures


def test_401_that_survives_refresh_is_not_retryable(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    source = google_source_factory([], max_attempts=3)
    google_server.fail_next(EVENTS, 401, count=10)
    with pytest.raises(CalendarUnavailable) as info:
        source.busy(*DAY)
    assert (info.value.retryable, info.value.status) == (False, 401)
    assert "authError" in info.value.message
    # google-auth-httplib2 refreshes and retries a 401 twice on its own before giving up.
    assert len(google_server.requests_to(EVENTS)) == 3
    assert len(google_server.token_requests()) == 3


def test_403_is_not_retryable(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    source = google_source_factory([])
    google_server.fail_next(EVENTS, 403, count=10)
    with pytest.raises(CalendarUnavailable) as info:
        source.busy(*DAY)
    assert (info.value.retryable, info.value.status) == (False, 403)
    assert len(google_server.requests_to(EVENTS)) == 1


def test_403_rate_limit_is_retried_like_429(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    sleeps = Sleeps()
    source = google_source_factory([EventSpec(at(0, 9), at(0, 10), "A")], sleep=sleeps)
    google_server.fail_next(
        EVENTS,
        403,
        body={
            "error": {
                "errors": [
                    {
                        "domain": "usageLimits",
                        "reason": "userRateLimitExceeded",
                        "message": "User Rate Limit Exceeded",
                    }
                ],
                "code": 403,
                "message": "User Rate Limit Exceeded",
            }
        },
    )
    assert len(source.busy(*DAY)) == 1
    assert len(sleeps.waits) == 1


def test_unknown_calendar_is_not_retryable(google_source_factory: GoogleSourceFactory) -> None:
    source = google_source_factory([])
    missing = GoogleCalendarSource(
        "nobody@example.com",
        credentials=google_source_factory.credentials(),
        api_base_url=google_source_factory.server.api_base_url,
    )
    with pytest.raises(CalendarUnavailable) as info:
        missing.busy(*DAY)
    assert (info.value.retryable, info.value.status) == (False, 404)
    assert "not found" in info.value.message
    assert source.busy(*DAY) == []
    missing.close()


def test_429_with_retry_after_is_honoured_then_succeeds(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    sleeps = Sleeps()
    source = google_source_factory(
        [EventSpec(at(0, 9), at(0, 10), "A")], sleep=sleeps, max_retry_wait=5.0
    )
    google_server.fail_next(EVENTS, 429, headers={"Retry-After": "2"})
    assert len(source.busy(*DAY)) == 1
    assert sleeps.waits == [2.0]
    assert [r.status for r in google_server.requests_to(EVENTS)] == [429, 200]


def test_retry_after_is_capped_by_max_retry_wait(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    sleeps = Sleeps()
    source = google_source_factory([], sleep=sleeps, max_retry_wait=1.5)
    google_server.fail_next(EVENTS, 429, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})
    assert source.busy(*DAY) == []
    assert sleeps.waits == [1.5]


def test_429_forever_gives_up_retryable(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    sleeps = Sleeps()
    source = google_source_factory([], sleep=sleeps, max_attempts=4)
    google_server.fail_next(EVENTS, 429, count=100, headers={"Retry-After": "1"})
    with pytest.raises(CalendarUnavailable) as info:
        source.busy(*DAY)
    assert (info.value.retryable, info.value.status) == (True, 429)
    assert len(google_server.requests_to(EVENTS)) == 4
    assert len(sleeps.waits) == 3


def test_500_is_retried_with_bounded_backoff(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    sleeps = Sleeps()
    source = google_source_factory(
        [EventSpec(at(0, 9), at(0, 10), "A")], sleep=sleeps, max_retry_wait=0.4
    )
    google_server.fail_next(EVENTS, 500, count=2)
    assert len(source.busy(*DAY)) == 1
    assert [r.status for r in google_server.requests_to(EVENTS)] == [500, 500, 200]
    assert len(sleeps.waits) == 2
    assert all(0 < w <= 0.4 for w in sleeps.waits)


def test_503_forever_gives_up_retryable(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    source = google_source_factory([], sleep=Sleeps())
    google_server.fail_next(EVENTS, 503, count=100, body=b"<html>Service Unavailable</html>")
    with pytest.raises(CalendarUnavailable) as info:
        source.busy(*DAY)
    assert (info.value.retryable, info.value.status) == (True, 503)
    assert len(google_server.requests_to(EVENTS)) == 3


def test_a_slow_answer_times_out_retryable(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    source = google_source_factory([], timeout=0.3, max_attempts=1)
    google_server.fail_next(EVENTS, 200, delay=3)
    with pytest.raises(CalendarUnavailable) as info:
        source.busy(*DAY)
    assert info.value.retryable is True
    assert "no answer within 0.3s" in info.value.message


def test_a_timeout_is_retried(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer
) -> None:
    source = google_source_factory(
        [EventSpec(at(0, 9), at(0, 10), "A")], timeout=0.3, sleep=Sleeps()
    )
    google_server.fail_next(EVENTS, 200, delay=3)
    assert len(source.busy(*DAY)) == 1


def test_connection_refused_is_retryable(google_source_factory: GoogleSourceFactory) -> None:
    source = google_source_factory(
        [], api_base_url=f"http://127.0.0.1:{free_port()}/calendar/v3/", sleep=Sleeps()
    )
    with pytest.raises(CalendarUnavailable) as info:
        source.busy(*DAY)
    assert info.value.retryable is True
    assert "connection failed" in info.value.message


def test_unreachable_token_endpoint_is_retryable(google_server: GoogleServer) -> None:
    info = authorized_user_info(google_server)
    credentials = credentials_from_authorized_user_info(
        info, token_uri=f"http://127.0.0.1:{free_port()}/token"
    )
    google_server.add_calendar("vendor@example.com")
    with (
        GoogleCalendarSource(
            "vendor@example.com",
            credentials=credentials,
            api_base_url=google_server.api_base_url,
            sleep=Sleeps(),
        ) as source,
        pytest.raises(CalendarUnavailable) as caught,
    ):
        source.busy(*DAY)
    assert caught.value.retryable is True  # refused before any token could be obtained
    assert "connection failed" in caught.value.message
    assert google_server.requests_to(EVENTS) == []


def test_a_revoked_refresh_token_is_not_retryable(google_server: GoogleServer) -> None:
    info = authorized_user_info(google_server)
    google_server.revoke_refresh_token(info["refresh_token"])
    google_server.add_calendar("vendor@example.com")
    with (
        GoogleCalendarSource(
            "vendor@example.com",
            credentials=credentials_from_authorized_user_info(info),
            api_base_url=google_server.api_base_url,
        ) as source,
        pytest.raises(CalendarUnavailable) as caught,
    ):
        source.busy(*DAY)
    assert caught.value.retryable is False
    assert "invalid_grant" in caught.value.message
    assert google_server.requests_to(EVENTS) == []


def test_a_failing_token_endpoint_is_retryable(google_server: GoogleServer) -> None:
    info = authorized_user_info(google_server)
    google_server.add_calendar("vendor@example.com")
    google_server.fail_next("/token", 503, count=10)
    with (
        GoogleCalendarSource(
            "vendor@example.com",
            credentials=credentials_from_authorized_user_info(info),
            api_base_url=google_server.api_base_url,
            sleep=Sleeps(),
        ) as source,
        pytest.raises(CalendarUnavailable) as caught,
    ):
        source.busy(*DAY)
    assert caught.value.retryable is True
    assert "server_error" in caught.value.message
    # google-auth retried three times with its own ~1 s, ~2 s backoff; we did not add more.
    assert len(google_server.token_requests()) == 3


def test_a_service_account_can_impersonate_a_workspace_user(
    google_server: GoogleServer, tmp_path: Path
) -> None:
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(google_support.service_account_info(google_server)))
    credentials = load_google_credentials(
        str(path), token_uri=google_server.token_uri, subject="vendor@example.com"
    )
    google_server.add_calendar("vendor@example.com", [EventSpec(at(0, 9), at(0, 10), "Call")])
    with GoogleCalendarSource(
        "vendor@example.com", credentials=credentials, api_base_url=google_server.api_base_url
    ) as source:
        assert len(source.busy(*DAY)) == 1
    [grant] = google_server.token_requests()
    claims = json.loads(_b64(grant.form["assertion"].split(".")[1]))
    assert claims["sub"] == "vendor@example.com"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json at all",
        b'["a", "list"]',
        b'{"kind": "calendar#events", "items": {"not": "a list"}}',
        json.dumps({"items": [{"id": "x", "status": "confirmed", "start": {}}]}).encode(),
    ],
    ids=["not-json", "not-an-object", "items-not-a-list", "event-without-times"],
)
def test_a_malformed_answer_is_not_retryable(
    google_source_factory: GoogleSourceFactory, google_server: GoogleServer, body: bytes
) -> None:
    source = google_source_factory([], sleep=Sleeps())
    google_server.fail_next(EVENTS, 200, body=body)
    with pytest.raises(CalendarUnavailable) as info:
        source.busy(*DAY)
    assert info.value.retryable is False
    assert "malformed" in info.value.message
    assert len(google_server.requests_to(EVENTS)) == 1


def test_secrets_never_reach_messages_or_logs(
    google_server: GoogleServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    info = authorized_user_info(google_server)
    google_server.add_calendar("vendor@example.com", [EventSpec(at(0, 9), at(0, 10), "A")])
    source = GoogleCalendarSource(
        "vendor@example.com",
        credentials=credentials_from_authorized_user_info(info),
        api_base_url=google_server.api_base_url,
        sleep=Sleeps(),
    )
    source.busy(*DAY)  # obtains an access token
    [access_token] = google_server.issued_access_tokens()
    errors: list[CalendarUnavailable] = []

    # A server that echoes what it was sent, in every failure the adapter reports.
    leaky = f"echo {access_token} {info['refresh_token']} {info['client_secret']}"
    faults: list[tuple[str, int, Any]] = [
        (EVENTS, 401, {"error": {"code": 401, "message": leaky, "status": leaky}}),
        ("/token", 400, {"error": "invalid_grant", "error_description": leaky}),
        (EVENTS, 500, leaky),
        (EVENTS, 200, leaky),
    ]
    for fragment, status, body in faults:
        google_server.fail_next(fragment, status, count=3, body=body)
        if fragment == "/token":
            google_server.expire_access_tokens()
        with pytest.raises(CalendarUnavailable) as caught:
            source.busy(*DAY)
        errors.append(caught.value)
    source.close()

    secrets = [access_token, info["refresh_token"], info["client_secret"]]
    key_line = private_key_pem(service_account_key()).splitlines()[5]
    texts = [str(e) for e in errors] + [repr(e) for e in errors]
    texts += [json.dumps(e.to_envelope()) for e in errors]
    texts.append(caplog.text)
    for text in texts:
        for secret in [*secrets, key_line]:
            assert secret not in text
    assert [e.status for e in errors] == [401, None, 500, None]


# --------------------------------------------------------------------------- consent flow


def _consent_in_thread(config: dict[str, Any], **kwargs: Any) -> tuple[queue.Queue[str], Any]:
    urls: queue.Queue[str] = queue.Queue()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["info"] = run_google_consent(
                config, open_browser=False, on_url=urls.put, **kwargs
            )
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result(timeout: float = 15) -> dict[str, Any]:
        thread.join(timeout)
        assert not thread.is_alive(), "consent flow did not finish"
        if "error" in outcome:
            raise outcome["error"]
        info: dict[str, Any] = outcome["info"]
        return info

    return urls, result


def test_consent_flow_end_to_end(google_server: GoogleServer) -> None:
    config = client_config(google_server)
    urls, result = _consent_in_thread(config, timeout=15)
    url = urls.get(timeout=10)
    assert url.startswith(google_server.auth_uri + "?")

    # The test is the browser: Google's page redirects to the loopback server.
    with httpx.Client(follow_redirects=True, timeout=10, trust_env=False) as browser:
        page = browser.get(url)
    assert page.status_code == 200
    assert "connected to your Google Calendar" in page.text
    assert page.url.host == "127.0.0.1"

    info = result()
    assert info == {
        "type": "authorized_user",
        "client_id": config["installed"]["client_id"],
        "client_secret": config["installed"]["client_secret"],
        "refresh_token": info["refresh_token"],
        "token_uri": google_server.token_uri,
        "scopes": [CALENDAR_READONLY],
    }
    assert info["refresh_token"].startswith("1//")
    assert "OAUTHLIB_INSECURE_TRANSPORT" not in os.environ

    [authorize] = google_server.requests_to("/authorize")
    assert authorize.query["access_type"] == "offline"
    assert authorize.query["prompt"] == "consent"
    assert authorize.query["code_challenge_method"] == "S256"
    [exchange] = google_server.token_requests("authorization_code")
    assert exchange.form["code_verifier"]  # PKCE, checked by the fake
    assert exchange.form["redirect_uri"] == authorize.query["redirect_uri"]

    # The stored info is enough to read the vendor's calendar.
    google_server.add_calendar("primary", [EventSpec(at(0, 9), at(0, 10), "Dentist")])
    with GoogleCalendarSource(
        "primary",
        credentials=credentials_from_authorized_user_info(info),
        api_base_url=google_server.api_base_url,
    ) as source:
        assert [p.summary for p in source.busy(*DAY)] == ["Dentist"]


def test_consent_refused_by_the_user(google_server: GoogleServer) -> None:
    google_server.next_consent(approve=False)
    urls, result = _consent_in_thread(client_config(google_server), timeout=15)
    with httpx.Client(follow_redirects=True, timeout=10, trust_env=False) as browser:
        browser.get(urls.get(timeout=10))
    with pytest.raises(GoogleConsentError, match="access_denied"):
        result()
    assert google_server.token_requests() == []


def test_consent_without_the_calendar_scope_is_refused(google_server: GoogleServer) -> None:
    google_server.next_consent(scopes=["openid"])  # the user unticked the calendar box
    urls, result = _consent_in_thread(client_config(google_server), timeout=15)
    with httpx.Client(follow_redirects=True, timeout=10, trust_env=False) as browser:
        browser.get(urls.get(timeout=10))
    with pytest.raises(GoogleConsentError, match="did not grant"):
        result()


def test_consent_times_out_when_nobody_answers(google_server: GoogleServer) -> None:
    urls, result = _consent_in_thread(client_config(google_server), timeout=0.5)
    assert urls.get(timeout=10)
    with pytest.raises(GoogleConsentError, match="No answer"):
        result()


def test_consent_refuses_plain_http_endpoints_off_this_machine() -> None:
    config = {
        "installed": {
            "client_id": "x.apps.googleusercontent.com",
            "client_secret": "s",
            "auth_uri": "http://accounts.example.test/o/oauth2/auth",
            "token_uri": "http://oauth2.example.test/token",
        }
    }
    urls, result = _consent_in_thread(config, timeout=2)
    with pytest.raises(GoogleConsentError, match="insecure_transport"):
        result()
    assert urls.empty()
    assert "OAUTHLIB_INSECURE_TRANSPORT" not in os.environ


def _b64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
