"""OpenTelemetry: spans for API requests, each commit step and each call that leaves the
process; exported over OTLP/HTTP when configured (to a collector on loopback here)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bookiji.bootstrap import build
from bookiji.config import Settings
from bookiji.services import tracing
from bookiji.services.clock import ManualClock
from bookiji.services.reservations import HoldRequest
from bookiji.store.database import Database
from tests.api.daemon_support import free_port, running_daemon, seed_partner, write_config
from tests.conftest import T0
from tests.factories import add_vendor


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    return exporter


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for item in finished:
        named.setdefault(item.name, []).append(item)
    return named


def test_commit_steps_and_external_calls_are_spans(
    spans: InMemorySpanExporter, database_url: str, tmp_path: Path
) -> None:
    db = Database(database_url)
    add_vendor(db, "shop")
    db.dispose()
    feed = tmp_path / "busy.ics"
    feed.write_text(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:1@t\r\n"
        "DTSTAMP:20260101T000000Z\r\nDTSTART:20261202T150000Z\r\nDTEND:20261202T160000Z\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    container = build(Settings(database_url=database_url), clock=ManualClock(T0))
    try:
        connection = container.calendars.connect("shop", "ics", str(feed))
        container.calendars.sync_one(connection.id)
        start = T0 + timedelta(days=1, hours=2)
        rid = container.reservations.create_hold(
            HoldRequest("shop", start, start + timedelta(hours=1), "req-1"), actor="test"
        ).reservation_id
        container.reservations.confirm(rid, actor="vendor")
        container.payments.authorize(rid, "vendor", payment_method="pm_card_visa", actor="t")
        container.payments.authorize(rid, "requester", payment_method="pm_card_visa", actor="t")
    finally:
        container.close()
    named = by_name(spans.get_finished_spans())
    assert "calendar.busy" in named and "notify.send" in named
    (commit,) = named["commit"]
    assert commit.attributes is not None
    assert commit.attributes["bookiji.reservation_id"] == rid
    assert commit.attributes["bookiji.state"] == "COMMITTED"
    steps = [
        "commit.claim", "commit.revalidate", "commit.capture_vendor",
        "commit.capture_requester", "commit.finalize",
    ]  # fmt: skip
    for step in steps:
        (child,) = named[step]
        assert child.parent is not None and child.parent.span_id == commit.context.span_id
    captures = named["payments.capture"]
    assert sorted(c.parent.span_id for c in captures if c.parent) == sorted(
        named[s][0].context.span_id for s in ("commit.capture_vendor", "commit.capture_requester")
    )
    assert all(c.attributes and c.attributes["bookiji.adapter"] == "LocalGateway" for c in captures)
    ordered = sorted((named[s][0].start_time or 0, s) for s in steps)
    assert [s for _, s in ordered] == steps  # in the order the commit runs them


class Collector:
    """An OTLP/HTTP trace receiver on loopback."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.raw: list[bytes] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                assert self.path == "/v1/traces"
                assert self.headers["content-type"] == "application/x-protobuf"
                collector.raw.append(body)
                collector.requests.append(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def span_names(self) -> list[str]:
        return [
            s.name
            for request in self.requests
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for s in scope.spans
        ]

    def service_names(self) -> set[str]:
        return {
            a.value.string_value
            for request in self.requests
            for resource in request.resource_spans
            for a in resource.resource.attributes
            if a.key == "service.name"
        }


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()
    c.server.server_close()


def test_the_daemon_exports_request_spans_over_otlp(
    collector: Collector, database_url: str, tmp_path: Path
) -> None:
    key = seed_partner(database_url, slot_interval_minutes=60, max_advance_days=30)
    port = free_port()
    config = write_config(
        tmp_path / "bookiji.toml",
        database_url,
        port,
        extra=f'[tracing]\notlp_endpoint = "{collector.url}"\nservice_name = "bookiji-test"\n',
    )
    day = (datetime.now(UTC) + timedelta(days=2)).replace(hour=10, minute=0, second=0,
                                                          microsecond=0)  # fmt: skip
    with running_daemon(config, tmp_path, port=port) as daemon, daemon.client(key) as client:
        created = client.post(
            "/v1/reservations",
            json={"vendorId": "shop", "requesterId": "r1", "slotStartTime": day.isoformat(),
                  "slotEndTime": (day + timedelta(hours=1)).isoformat()},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        rid = created.json()["reservationId"]
        assert client.get(f"/v1/reservations/{rid}").status_code == 200
        deadline = time.monotonic() + 15
        while "GET /v1/reservations/{reservationId}" not in collector.span_names():
            assert time.monotonic() < deadline, collector.span_names()
            time.sleep(0.1)
        assert daemon.stop() == 0
    names = collector.span_names()
    assert "POST /v1/reservations" in names
    assert collector.service_names() == {"bookiji-test"}
    exported = b"".join(collector.raw)
    assert key.encode() not in exported  # the API key never travels in a span
