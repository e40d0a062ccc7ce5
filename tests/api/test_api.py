"""The partner API over real HTTP against a running daemon (uvicorn on a free port),
with httpx as the client, on SQLite and Postgres."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from bookiji.api.schemas import (
    AuthorizationAnswer,
    AvailabilityDocument,
    ConfirmationAnswer,
    EventPage,
    ReservationDocument,
)
from bookiji.domain.states import StageTTLs
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.clock import SystemClock
from bookiji.services.confirmation import ConfirmationService, installation_key
from bookiji.store.database import Database
from bookiji.store.models import ConfirmationToken
from bookiji.store.uow import UnitOfWork
from tests.api.daemon_support import SCRIPT, Daemon, free_port, running_daemon, write_config
from tests.conftest import REDIS_ENV
from tests.factories import add_vendor

DAY = (datetime.now(UTC) + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)


def at(hour: float) -> str:
    return (DAY + timedelta(hours=hour)).isoformat().replace("+00:00", "Z")


@dataclass
class Api:
    daemon: Daemon
    db: Database
    key: str
    other_key: str
    read_only_key: str

    def client(self, key: str | None = None) -> httpx.Client:
        return self.daemon.client(key)


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    db = Database(database_url)
    add_vendor(
        db, "shop", slot_interval_minutes=60, max_advance_days=30,
        payment={"payment_method": "pm_card_visa"},
    )  # fmt: skip
    keys = ApiKeyService(db, SystemClock())
    keys.add_partner("acme", "Acme Travel")
    keys.add_partner("globex", "Globex")
    _, key = keys.create_key("acme")
    _, other = keys.create_key("globex")
    _, read_only = keys.create_key("acme", scopes=["availability:read", "reservations:read"])
    port = free_port()
    config = write_config(tmp_path / "bookiji.toml", database_url, port)
    with running_daemon(config, tmp_path, port=port) as daemon:
        yield Api(daemon, db, key, other, read_only)
    db.dispose()


def create(client: httpx.Client, start: float = 10, **extra: object) -> httpx.Response:
    body = {
        "vendorId": "shop",
        "slotStartTime": at(start),
        "slotEndTime": at(start + 1),
        "requesterId": "traveller-1",
        **extra,
    }
    return client.post("/v1/reservations", json=body)


def error(response: httpx.Response) -> dict[str, object]:
    envelope = response.json()
    assert set(envelope) == {"error"}
    assert set(envelope["error"]) == {"code", "message", "retryable", "details"}
    return envelope["error"]  # type: ignore[no-any-return]


def test_health_readiness_metrics_and_openapi(api: Api) -> None:
    with api.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        schema = client.get("/openapi.json").json()
        for path in ("/v1/reservations", "/v1/reservations/{reservationId}", "/v1/events",
                     "/v1/vendors/{vendorId}/availability"):  # fmt: skip
            assert path in schema["paths"]
        # What a partner's client generator reads: the key as a bearer scheme, camelCase path
        # parameters, and per route only the statuses it can answer (400, never FastAPI's 422
        # validation shape, for a malformed request).
        assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
        read = schema["paths"]["/v1/vendors/{vendorId}/availability"]["get"]
        assert read["security"] == [{"bearerAuth": []}]
        assert [p["name"] for p in read["parameters"] if p["in"] == "path"] == ["vendorId"]
        assert sorted(read["responses"]) == [
            "200", "400", "401", "403", "404", "413", "429", "500", "503"
        ]  # fmt: skip
        create = schema["paths"]["/v1/reservations"]["post"]["responses"]
        assert "422" in create  # key reused
        assert create["201"]["headers"]["Location"]["required"] is True
        assert set(create["429"]["headers"]) == {
            "Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"
        }  # fmt: skip
        # A declined card is a 200 with the failed state: no 422 on authorizations.
        paying = schema["paths"]["/v1/reservations/{reservationId}/authorizations"]["post"]
        assert "422" not in paying["responses"]
        # The edge refuses an oversized body on any route, before the route runs.
        for operations in schema["paths"].values():
            for operation in operations.values():
                assert "413" in operation["responses"]
        assert "HTTPValidationError" not in json.dumps(schema)
        assert "security" not in schema["paths"]["/healthz"]["get"]
        client.get("/nowhere")
        metrics = client.get("/metrics").text
    assert "bookiji_http_requests_total" in metrics and "bookiji_reservations" in metrics


def test_keys_and_scopes(api: Api) -> None:
    with api.client() as anonymous:
        missing = anonymous.get(f"/v1/vendors/shop/availability?startTime={at(0)}&endTime={at(24)}")
        assert missing.status_code == 401 and error(missing)["code"] == "unauthorized"
    with api.client("bk_live_000000000000_nope") as forged:
        assert forged.get("/v1/events").status_code == 401
    with api.client(api.read_only_key) as reader:
        refused = create(reader)
        assert refused.status_code == 403 and "reservations:write" in str(error(refused)["message"])


def test_availability(api: Api) -> None:
    with api.client(api.key) as client:
        ok = client.get(
            "/v1/vendors/shop/availability",
            params={"startTime": at(9), "endTime": at(13), "slotDuration": 60},
        )
        assert ok.status_code == 200 and ok.headers["RateLimit-Limit"] == "300"
        document = ok.json()
        assert document["vendorId"] == "shop" and document["slotDuration"] == 60
        assert [s["startTime"] for s in document["slots"]] == [at(9), at(10), at(11), at(12)]
        naive = client.get(
            "/v1/vendors/shop/availability",
            params={"startTime": "2026-12-01T10:00:00", "endTime": at(13)},
        )
        assert naive.status_code == 400 and "offset" in str(error(naive)["message"])
        unknown = client.get(
            "/v1/vendors/nobody/availability", params={"startTime": at(9), "endTime": at(13)}
        )
        assert unknown.status_code == 404
        misspelt = client.get(
            "/v1/vendors/shop/availability",
            params={"startTime": at(9), "endTime": at(13), "slotduration": 30},
        )
        assert misspelt.status_code == 400  # not a silently different answer (60-min slots)
        assert error(misspelt)["message"] == (
            "unknown query parameter(s): slotduration; this route takes startTime, endTime, "
            "slotDuration, includeConfidence"
        )
        paging = client.get("/v1/events", params={"cursor": 5})
        assert paging.status_code == 400 and "takes after, limit" in str(error(paging)["message"])


def test_create_replay_conflicts_and_isolation(api: Api) -> None:
    with api.client(api.key) as client, api.client(api.other_key) as other:
        first = create(client, idempotencyKey="trip-1", metadata={"pnr": "X1"})
        assert first.status_code == 201, first.text
        body = first.json()
        assert first.headers["Location"] == f"/v1/reservations/{body['reservationId']}"
        assert body["state"] == "AWAITING_VENDOR_CONFIRMATION" and body["expiresAt"].endswith("Z")
        replay = create(client, idempotencyKey="trip-1", metadata={"pnr": "X1"})
        assert (replay.status_code, replay.json()) == (201, body)
        assert replay.headers["Location"] == first.headers["Location"]
        # Byte for byte, keys in the first answer's order (the stored copy came back sorted).
        assert replay.content == first.content
        assert replay.headers["Content-Type"] == first.headers["Content-Type"]
        header = client.post(
            "/v1/reservations",
            headers={"Idempotency-Key": "trip-1"},
            json={"vendorId": "shop", "slotStartTime": at(10), "slotEndTime": at(11),
                  "requesterId": "traveller-1", "metadata": {"pnr": "X1"}},
        )  # fmt: skip
        assert (header.status_code, header.json()) == (201, body)
        reused = create(client, start=12, idempotencyKey="trip-1")
        assert reused.status_code == 422 and error(reused)["code"] == "idempotency_key_reused"
        taken = create(client, requesterId="traveller-2")
        assert taken.status_code == 409 and error(taken)["code"] == "slot_unavailable"

        rid = body["reservationId"]
        # The answer does not wait for the vendor to be told; the daemon tells it right after.
        assert [n["status"] for n in body["vendorNotifications"]] == ["pending"]
        deadline = time.monotonic() + 10
        while (
            notes := client.get(f"/v1/reservations/{rid}").json()["vendorNotifications"]
        ) and notes[0]["status"] != "sent":
            assert time.monotonic() < deadline, notes
            time.sleep(0.05)
        assert client.get(f"/v1/reservations/{rid}").json()["reservationId"] == rid
        hidden = other.get(f"/v1/reservations/{rid}")
        assert hidden.status_code == 404 and error(hidden)["code"] == "not_found"
        assert other.post(f"/v1/reservations/{rid}/cancel").status_code == 404
        events = client.get("/v1/events", params={"after": 0}).json()
        assert [e["type"] for e in events["events"]][:3] == [
            "reservation.intent_created",
            "reservation.held",
            "reservation.awaiting_vendor_confirmation",
        ]
        assert other.get("/v1/events").json()["events"] == []
        later = client.get("/v1/events", params={"after": events["nextCursor"]}).json()
        assert later["events"] == [] and later["nextCursor"] == events["nextCursor"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "body: not valid JSON at character 1: Expecting property name"),
        (json.dumps({"vendorId": 5}).encode(), "vendorId"),
        (
            json.dumps(
                {
                    "vendorId": "shop",
                    "slotStartTime": at(10),
                    "slotEndTime": at(11),
                    "requesterId": "r",
                    "colour": "red",
                }
            ).encode(),
            "colour",
        ),
        (
            json.dumps(
                {
                    "vendorId": "shop",
                    "slotStartTime": "2026-12-01T10:00:00",
                    "slotEndTime": at(11),
                    "requesterId": "r",
                }
            ).encode(),
            "offset",
        ),
    ],
)
def test_bad_bodies_are_400_and_write_nothing(api: Api, content: bytes, fragment: str) -> None:
    with api.client(api.key) as client:
        before = len(client.get("/v1/events").json()["events"])
        response = client.post(
            "/v1/reservations", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert fragment in str(error(response)["message"])
        assert len(client.get("/v1/events").json()["events"]) == before


def test_oversized_body_is_413(api: Api) -> None:
    with api.client(api.key) as client:
        big = create(client, metadata={"blob": "x" * 70_000})
        assert big.status_code == 413 and error(big)["code"] == "payload_too_large"


def events_seen(client: httpx.Client) -> int:
    return len(client.get("/v1/events").json()["events"])


RANGE = "times must lie between 1970-01-01T00:00:00Z and 9000-01-01T00:00:00Z"


def test_extreme_times_are_400_naming_the_range(api: Api) -> None:
    """Valid RFC 3339 far from now overflowed datetime's years 1-9999 on the way (a 500)."""
    window = "/v1/vendors/shop/availability"
    with api.client(api.key) as client:
        before = events_seen(client)
        refused = [
            client.get(window, params={"startTime": "0001-01-01T00:00:00+01:00",
                                       "endTime": "2026-12-02T00:00:00Z"}),
            client.get(window, params={"startTime": "9999-12-30T00:00:00Z",
                                       "endTime": "9999-12-31T23:00:00Z"}),
            create(client, slotStartTime="9999-12-31T23:00:00Z",
                   slotEndTime="9999-12-31T23:30:00Z"),
        ]  # fmt: skip
        for response in refused:
            assert response.status_code == 400, response.text
            assert error(response)["code"] == "validation_error"
            assert RANGE in str(error(response)["message"])
        assert events_seen(client) == before


def test_times_must_be_rfc_3339_at_the_api(api: Api) -> None:
    """`datetime.fromisoformat` took any ISO 8601 form; the API takes RFC 3339's date-time
    ('T' and 'Z' in either case)."""
    window = "/v1/vendors/shop/availability"
    day = at(0)[:10]
    with api.client(api.key) as client:
        before = events_seen(client)
        for text in (f"{day} 10:00:00Z", f"{day.replace('-', '')}T100000Z",
                     "2026-W49-2T10:00:00Z", f"{day}T10:00Z", f"{day}T11:00:00+0100"):  # fmt: skip
            listed = client.get(window, params={"startTime": text, "endTime": at(24)})
            held = create(client, slotStartTime=text)
            for response in (listed, held):
                assert response.status_code == 400, (text, response.text)
                assert error(response)["code"] == "validation_error"
                assert "is not an RFC 3339 timestamp" in str(error(response)["message"])
        assert events_seen(client) == before
        lower = client.get(window, params={"startTime": f"{day}t00:00:00z", "endTime": at(24)})
        assert lower.status_code == 200 and lower.json()["startTime"] == at(0)


def test_unknown_or_repeated_query_parameters_are_400_on_every_route(api: Api) -> None:
    """POST routes silently ignored their query (a create went ahead); a repeated parameter
    silently took its last value."""
    with api.client(api.key) as client:
        rid = create(client).json()["reservationId"]
        before = events_seen(client)
        body = {"vendorId": "shop", "slotStartTime": at(12), "slotEndTime": at(13),
                "requesterId": "traveller-1"}  # fmt: skip
        for method, path, content in [
            ("POST", "/v1/reservations?idempotencyKey=q1&foo=bar", body),
            ("POST", f"/v1/reservations/{rid}/cancel?foo=bar", None),
            ("POST", f"/v1/reservations/{rid}/authorizations?foo=bar",
             {"party": "requester", "paymentMethod": "pm_card_visa"}),
            ("POST", f"/v1/reservations/{rid}/vendor-confirmation?foo=bar",
             {"token": "x" * 20, "decision": "decline"}),
            ("GET", f"/v1/reservations/{rid}?foo=bar", None),
        ]:  # fmt: skip
            response = client.request(method, path, json=content)
            assert response.status_code == 400, (path, response.text)
            refusal = error(response)
            assert refusal["code"] == "invalid_request"
            assert "foo: unknown query parameter" in refusal["details"]["problems"]  # type: ignore[index, operator]
        assert events_seen(client) == before  # nothing created, cancelled or declined
        twice = client.get(
            "/v1/vendors/shop/availability",
            params=[("startTime", at(9)), ("startTime", at(10)), ("endTime", at(13))],
        )
        assert twice.status_code == 400 and error(twice)["code"] == "invalid_request"
        assert error(twice)["details"] == {"problems": ["startTime: given more than once"]}


def test_sub_second_slot_times_are_400_not_a_misleading_409(api: Api) -> None:
    with api.client(api.key) as client:
        fraction = create(client, slotStartTime=at(10).replace("Z", ".500Z"),
                          slotEndTime=at(11).replace("Z", ".500Z"))  # fmt: skip
        assert fraction.status_code == 400, fraction.text
        assert error(fraction)["code"] == "validation_error"
        assert error(fraction)["message"] == "slots start and end on whole minutes"


def test_metadata_is_measured_as_compact_utf8_and_must_be_json(api: Api) -> None:
    """3,000 "é" is 6 KB of UTF-8 but was measured as 18 KB of `\\u00e9` escapes; NaN was
    stored, then the answer echoing it could not render (a 500 after the write)."""
    with api.client(api.key) as client:
        accented = create(client, metadata={"note": "é" * 3000})
        assert accented.status_code == 201, accented.text
        assert accented.json()["metadata"] == {"note": "é" * 3000}
        over = create(client, start=12, metadata={"note": "é" * 8200})  # 16,411 bytes
        assert over.status_code == 400 and error(over)["code"] == "validation_error"
        assert "metadata is larger than 16384 bytes" in str(error(over)["message"])
        before = events_seen(client)
        not_json = client.post(
            "/v1/reservations",
            content=json.dumps(
                {"vendorId": "shop", "slotStartTime": at(14), "slotEndTime": at(15),
                 "requesterId": "r", "metadata": {"x": float("nan")}}
            ).encode(),
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert not_json.status_code == 400, not_json.text
        assert "metadata must be a JSON object" in str(error(not_json)["message"])
        assert events_seen(client) == before


def test_deeply_nested_metadata_is_refused_so_the_reservation_stays_readable(api: Api) -> None:
    """950 levels of arrays fit in 2 KB: the create answered 201, then every read and cancel
    of that reservation was a 500 (the JSON encoder's recursion overflowed)."""
    with api.client(api.key) as client:
        before = events_seen(client)
        deep: Any = "x"
        for _ in range(950):
            deep = [deep]
        refused = create(client, metadata={"x": deep})
        assert refused.status_code == 400, refused.text
        assert error(refused)["code"] == "validation_error"
        assert "metadata nests objects and arrays more than 32 deep" in error(refused)["message"]
        assert events_seen(client) == before
        limit: Any = "x"
        for _ in range(31):  # with the metadata object itself: 32 levels
            limit = {"k": limit}
        kept = create(client, metadata={"x": limit})
        assert kept.status_code == 201, kept.text
        read = client.get(f"/v1/reservations/{kept.json()['reservationId']}")
        assert read.status_code == 200 and read.json()["metadata"] == {"x": limit}


def test_a_body_that_cannot_be_decoded_is_invalid_request_not_internal_error(api: Api) -> None:
    """Partners branch on `code`: `internal_error` means our bug, and a 400 is theirs."""
    with api.client(api.key) as client:
        for body, encoding in ((b'{"a": "\xff"}', None), (gzip.compress(b"{}"), "gzip")):
            headers = {"content-type": "application/json"}
            if encoding:
                headers["content-encoding"] = encoding
            answer = client.post("/v1/reservations", content=body, headers=headers)
            assert answer.status_code == 400, answer.text
            assert error(answer)["code"] == "invalid_request"
            assert error(answer)["details"]["problems"] == [error(answer)["message"]]  # type: ignore[index]


def test_an_ambiguous_request_is_refused_not_guessed(api: Api) -> None:
    """A key given twice in the body (the parser kept the last) or two Idempotency-Key
    headers (the first was used) created a reservation; now nothing is created."""
    with api.client(api.key) as client:
        before = events_seen(client)
        body = json.dumps(
            {"vendorId": "shop", "slotStartTime": at(10), "slotEndTime": at(11), "requesterId": "r"}
        )
        json_type = {"content-type": "application/json"}
        twice = client.post(
            "/v1/reservations",
            content=body.replace('"vendorId": "shop"', '"vendorId": "shop", "vendorId": "other"'),
            headers=json_type,
        )
        assert twice.status_code == 400, twice.text
        assert error(twice)["code"] == "invalid_request"
        assert error(twice)["message"] == "body: duplicate key 'vendorId' (each key at most once)"
        nested = client.post(
            "/v1/reservations",
            content=body[:-1] + ', "metadata": {"a": 1, "a": 2}}',
            headers=json_type,
        )
        assert nested.status_code == 400 and "duplicate key 'a'" in error(nested)["message"]
        headers = [("Idempotency-Key", "dh-a"), ("Idempotency-Key", "dh-b")]
        two_keys = client.post(
            "/v1/reservations",
            json={"vendorId": "shop", "slotStartTime": at(12), "slotEndTime": at(13),
                  "requesterId": "r"},
            headers=headers,
        )  # fmt: skip
        assert two_keys.status_code == 400, two_keys.text
        assert error(two_keys)["message"] == "Idempotency-Key: given more than once"
        assert events_seen(client) == before


def test_a_caller_without_a_fitting_key_hears_so_before_anything_about_its_body(
    api: Api,
) -> None:
    broken = b'{"vendorId":'
    headers = {"content-type": "application/json"}
    with api.client() as anonymous:
        assert anonymous.post("/v1/reservations", content=broken, headers=headers
                              ).status_code == 401  # fmt: skip
    with api.client(api.read_only_key) as reader:
        refused = reader.post("/v1/reservations", content=b"\xff", headers=headers)
        assert refused.status_code == 403 and error(refused)["code"] == "forbidden"
    with api.client(api.key) as client:  # with a good key: what is wrong with the body
        answer = client.post("/v1/reservations", content=broken, headers=headers)
        assert answer.status_code == 400 and error(answer)["code"] == "invalid_request"


def test_a_trailing_slash_is_a_404_in_the_envelope_not_a_redirect(api: Api) -> None:
    with api.client(api.key) as client:
        for method, path in (("POST", "/v1/reservations/"), ("GET", "/v1/events/")):
            answer = client.request(method, path, json={})
            assert answer.status_code == 404, answer.text
            assert error(answer)["code"] == "not_found" and "Location" not in answer.headers


def test_405_says_which_methods_are_allowed(api: Api) -> None:
    with api.client(api.key) as client:
        wrong = client.delete("/v1/reservations")
        assert wrong.status_code == 405 and error(wrong)["code"] == "method_not_allowed"
        assert wrong.headers["Allow"] == "POST"
        assert client.put("/v1/events").headers["Allow"] == "GET, HEAD"


def test_an_id_longer_than_any_id_is_refused_without_being_echoed(api: Api) -> None:
    long_id = "x" * 4000
    with api.client(api.key) as client:
        for answer in (
            client.get(f"/v1/reservations/{long_id}"),
            client.post(f"/v1/reservations/{long_id}/cancel", json={}),
            client.get(
                f"/v1/vendors/{long_id}/availability",
                params={"startTime": at(10), "endTime": at(11)},
            ),
        ):
            assert answer.status_code == 400, answer.text
            assert error(answer)["code"] == "invalid_request"
            assert "at most 64 characters" in answer.text and long_id not in answer.text
        assert client.get(f"/v1/reservations/{'x' * 64}").status_code == 404
    with api.client(None) as anonymous:  # the key is still checked first
        assert anonymous.get(f"/v1/reservations/{long_id}").status_code == 401


def test_head_answers_as_get_without_the_body(api: Api) -> None:
    """Load balancers and `curl -I` probe with HEAD: it gets the GET's status and headers
    (a key still required where GET needs one), no body, and never a 405."""
    with api.client(api.key) as client:
        health = client.head("/healthz")
        assert health.status_code == 200 and health.content == b""
        assert health.headers["content-type"].startswith("application/json")
        assert client.head("/v1/events").status_code == 200
        assert client.head("/v1/reservations/res_nope").status_code == 404
        assert client.head("/v1/reservations").status_code == 405
    with api.client(None) as anonymous:
        assert anonymous.head("/v1/events").status_code == 401


def test_idempotency_key_refusals(api: Api) -> None:
    """An empty header was ignored (a create without a key) while an empty body key is 400;
    every invalid_request carries details.problems, as the partner guide says."""
    with api.client(api.key) as client:
        before = events_seen(client)
        body = {"vendorId": "shop", "slotStartTime": at(10), "slotEndTime": at(11),
                "requesterId": "traveller-1"}  # fmt: skip
        empty = client.post("/v1/reservations", headers={"Idempotency-Key": ""}, json=body)
        assert empty.status_code == 400, empty.text
        assert error(empty)["code"] == "invalid_request"
        assert error(empty)["details"] == {"problems": [error(empty)["message"]]}
        assert create(client, idempotencyKey="").status_code == 400
        differ = client.post(
            "/v1/reservations",
            headers={"Idempotency-Key": "a"},
            json={**body, "idempotencyKey": "b"},
        )
        assert differ.status_code == 400 and error(differ)["code"] == "invalid_request"
        assert error(differ)["details"] == {
            "problems": ["Idempotency-Key header and idempotencyKey differ"]
        }
        assert events_seen(client) == before


def served(response: httpx.Response, model: type[BaseModel]) -> dict[str, Any]:
    """The body, checked against the model the OpenAPI document publishes for it (unknown
    fields refused: a document that grows a field without its schema fails here)."""
    body: dict[str, Any] = response.json()
    model.model_validate(body)
    return body


def test_the_whole_workflow_over_http(api: Api) -> None:
    with api.client(api.key) as client:
        rid = served(create(client), ReservationDocument)["reservationId"]
        listed = client.get(
            "/v1/vendors/shop/availability", params={"startTime": at(9), "endTime": at(13)}
        )
        served(listed, AvailabilityDocument)
        bare = client.get(
            "/v1/vendors/shop/availability",
            params={"startTime": at(9), "endTime": at(13), "includeConfidence": "false"},
        )
        assert "confidence" not in served(bare, AvailabilityDocument)["slots"][0]
        # The vendor answers with the token its notification carried.
        with UnitOfWork(api.db, readonly=True) as uow:
            from sqlmodel import select

            row = uow.session.exec(
                select(ConfirmationToken).where(ConfirmationToken.reservation_id == rid)
            ).one()
        signer = ConfirmationService(
            api.db, SystemClock(), StageTTLs(), {}, lambda: installation_key(api.db, SystemClock())
        )
        token = signer.token_for(row)
        with api.client() as vendor:
            answer = f"/v1/reservations/{rid}/vendor-confirmation"
            forged = vendor.post(answer, json={"token": token[:-3] + "abc", "decision": "confirm"})
            assert forged.status_code == 403 and error(forged)["code"] == "invalid_token"
            answered = vendor.post(answer, json={"token": token, "decision": "confirm"})
            assert answered.status_code == 200
            # deposit authorized
            assert served(answered, ConfirmationAnswer)["state"] == "AWAITING_REQUESTER_AUTH"
        card = {"party": "requester", "paymentMethod": "pm_card_visa"}
        paid = client.post(f"/v1/reservations/{rid}/authorizations", json=card)
        assert paid.status_code == 200 and served(paid, AuthorizationAnswer)["state"] == "COMMITTED"
        booked = served(client.get(f"/v1/reservations/{rid}"), ReservationDocument)
        assert booked["payment"]["requesterPayment"]["state"] == "captured"
        served(client.get("/v1/events", params={"after": 0}), EventPage)

        second = create(client, start=13).json()["reservationId"]
        cancelled = client.post(f"/v1/reservations/{second}/cancel", json={"reason": "no"})
        assert cancelled.status_code == 200
        assert served(cancelled, ReservationDocument)["state"] == "CANCELLED"

    # One log line per request, carrying the reservation it was about (a create's new one).
    cancel_line = ("POST", "/v1/reservations/{reservationId}/cancel", 200, second)
    deadline = time.monotonic() + 10
    while cancel_line not in (logged := request_lines(api.daemon)):  # written after the answer
        assert time.monotonic() < deadline, logged[-3:]
        time.sleep(0.05)
    assert ("POST", "/v1/reservations", 201, rid) in logged
    assert ("POST", "/v1/reservations/{reservationId}/vendor-confirmation", 200, rid) in logged
    assert ("GET", "/v1/reservations/{reservationId}", 200, rid) in logged


def test_every_answer_carries_a_request_id_that_its_log_line_shares(api: Api) -> None:
    """Support asks a partner for the request id and finds the daemon's line for it; a
    partner's own plain id is kept so both sides' logs share it."""
    with api.client(api.key) as client:
        own = client.get("/v1/events", headers={"X-Request-Id": "acme-7f3a:42"})
        made = client.get("/v1/reservations/res_nope")
        odd = client.get("/v1/events", headers={"X-Request-Id": "x" * 200})
    assert own.headers["X-Request-Id"] == "acme-7f3a:42"
    assert made.status_code == 404 and made.headers["X-Request-Id"].startswith("req_")
    assert odd.headers["X-Request-Id"].startswith("req_")  # not echoed: not a plain token
    wanted = {own.headers["X-Request-Id"], made.headers["X-Request-Id"]}
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in api.daemon.logs().splitlines() if line[:1] == "{"]
        found = {e["request_id"]: e for e in lines if e.get("request_id") in wanted}
        if len(found) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert found["acme-7f3a:42"]["route"] == "/v1/events"
    assert found[made.headers["X-Request-Id"]]["status"] == 404


def request_lines(daemon: Daemon) -> list[tuple[str, str, int, str | None]]:
    lines = [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]
    return [
        (e["method"], e["route"], e["status"], e["reservation_id"])
        for e in lines
        if e.get("message") == "request"
    ]


def test_sigterm_drains_and_exits_zero(api: Api) -> None:
    began = time.monotonic()
    assert api.daemon.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - began < 10
    lines = [json.loads(line) for line in api.daemon.logs().splitlines() if line.startswith("{")]
    assert any(line["message"] == "daemon stopped" for line in lines)
    assert api.key not in api.daemon.logs()


def test_a_taken_port_is_one_error_line_and_nothing_runs(api: Api, tmp_path: Path) -> None:
    """A second daemon on the first one's port: exit 1 and one line on stderr, before any
    job or log line (it used to start its jobs, log a traceback and exit 3)."""
    port = int(api.daemon.base_url.rsplit(":", 1)[1])
    config = tmp_path / "bookiji.toml"  # the first daemon's own settings
    second = subprocess.run(
        [SCRIPT, "--config", str(config), "daemon", "--port", str(port)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use [service_unavailable]"
    )
    assert second.stdout == ""
    assert api.client(api.key).get("/healthz").status_code == 200  # the first one serves on


def test_port_zero_logs_the_port_it_bound(api: Api, tmp_path: Path) -> None:
    """`--port 0` takes any free port; the start-up line is how an operator finds it (it
    said 0)."""
    config = tmp_path / "bookiji.toml"  # the first daemon's database and settings
    process = subprocess.Popen(
        [SCRIPT, "--config", str(config), "daemon", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        started: dict[str, Any] = {}
        while not started and time.monotonic() < deadline:
            line = process.stdout.readline()
            if '"daemon starting"' in line:
                started = json.loads(line)
        assert started and started["port"] != 0
        with httpx.Client(base_url=f"http://127.0.0.1:{started['port']}", timeout=10) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def test_rate_limits_hold_caps_and_key_rotation(database_url: str, tmp_path: Path) -> None:
    db = Database(database_url)
    add_vendor(db, "shop", slot_interval_minutes=60, max_advance_days=30)
    keys = ApiKeyService(db, SystemClock())
    keys.add_partner("acme", "Acme")
    old_row, old_key = keys.create_key("acme")
    port = free_port()
    config = write_config(tmp_path / "tight.toml", database_url, port,
                          api_extra="max_active_holds_per_requester = 2")  # fmt: skip
    config.write_text(config.read_text().replace("reads_per_minute = 300", "reads_per_minute = 3"))
    with running_daemon(config, tmp_path, port=port) as daemon, daemon.client(old_key) as client:
        seen = [client.get("/v1/events") for _ in range(4)]
        assert [r.status_code for r in seen] == [200, 200, 200, 429]
        assert [r.headers["RateLimit-Remaining"] for r in seen[:3]] == ["2", "1", "0"]
        limited = seen[3]
        assert error(limited)["code"] == "rate_limited" and error(limited)["retryable"] is True
        assert int(limited.headers["Retry-After"]) > 0 and limited.headers["RateLimit-Limit"] == "3"

        assert create(client, start=9).status_code == 201
        assert create(client, start=11).status_code == 201
        capped = create(client, start=13)
        assert capped.status_code == 409 and error(capped)["code"] == "hold_limit_reached"

        # Rotation with overlap: both keys work until the overlap ends.
        _, new_key = keys.rotate(old_row.id, overlap=timedelta(hours=1))
        with daemon.client(new_key) as rotated:
            assert create(rotated, start=15, requesterId="someone-else").status_code == 201
        keys.revoke(old_row.id)
        time.sleep(6)  # past the verified-key cache
        assert daemon.client(old_key).post("/v1/reservations", json={}).status_code == 401
    db.dispose()


def test_a_budget_kept_in_redis_limits_over_http(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Redis the rate-limit hit is a network call, made in a thread (with the key check
    on Postgres, on the event loop with it on SQLite): the answers must not change."""
    redis_url = os.environ.get(REDIS_ENV)
    if not redis_url:
        pytest.skip(f"{REDIS_ENV} is not set: the Redis-backed API budget is not tested")
    monkeypatch.setenv("BOOKIJI_REDIS_URL", redis_url)
    db = Database(database_url)
    add_vendor(db, "shop", slot_interval_minutes=60, max_advance_days=30)
    keys = ApiKeyService(db, SystemClock())
    keys.add_partner("acme", "Acme")
    _, key = keys.create_key("acme", scopes=["availability:read"])
    db.dispose()
    port = free_port()
    config = write_config(tmp_path / "redis.toml", database_url, port)
    config.write_text(config.read_text().replace("reads_per_minute = 300", "reads_per_minute = 2"))
    window = {"startTime": at(0), "endTime": at(24)}
    with running_daemon(config, tmp_path, port=port) as daemon, daemon.client(key) as client:
        seen = [client.get("/v1/vendors/shop/availability", params=window) for _ in range(3)]
        assert [r.status_code for r in seen] == [200, 200, 429]
        assert [r.headers["RateLimit-Remaining"] for r in seen] == ["1", "0", "0"]
        assert int(seen[2].headers["Retry-After"]) > 0
        assert client.post("/v1/reservations", json={}).status_code == 403  # scope, before budget


def test_concurrent_requests_with_one_key_create_one_reservation(api: Api) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def attempt(_: int) -> httpx.Response:
        with api.client(api.key) as client:
            return create(client, start=14, idempotencyKey="burst-1")

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(attempt, range(8)))
    created = {r.json()["reservationId"] for r in responses if r.status_code == 201}
    assert len(created) == 1
    for response in responses:
        if response.status_code != 201:
            assert response.status_code == 409, response.text
            assert error(response)["code"] == "idempotency_in_progress"
            assert error(response)["retryable"] is True


def test_a_card_needing_authentication_returns_the_client_secret(api: Api) -> None:
    with api.client(api.key) as client:
        rid = create(client, start=15).json()["reservationId"]
        # An operator confirms; the vendor's deposit is authorized with its saved card.
        from bookiji.bootstrap import build
        from bookiji.config import Settings

        container = build(Settings(database_url=api.db.url))
        container.reservations.confirm(rid, actor="operator")
        container.close()
        card = {"party": "requester", "paymentMethod": "pm_card_authenticationRequired"}
        pending = client.post(f"/v1/reservations/{rid}/authorizations", json=card).json()
        assert pending["state"] == "AWAITING_REQUESTER_AUTH"
        assert pending["paymentState"] == "pending"
        assert pending["clientSecret"].startswith(pending["paymentIntentId"] + "_secret_")
