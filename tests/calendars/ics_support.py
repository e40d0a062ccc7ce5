"""ICS test support: the conformance factory (events -> a real .ics file) and a loopback server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bookiji.integrations.ics import IcsCalendarSource
from tests.calendars.conformance import EventSpec

FIXTURES = Path(__file__).parent / "fixtures" / "ics"


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _text(value: str) -> str:
    """RFC 5545 TEXT escaping, so any summary round-trips."""
    for raw, escaped in (("\\", "\\\\"), (";", "\\;"), (",", "\\,"), ("\n", "\\n")):
        value = value.replace(raw, escaped)
    return value


def ics_text(events: list[EventSpec]) -> str:
    """A minimal but valid VCALENDAR, written by hand so the parser under test is not the writer."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//bookiji//tests//EN"]
    for number, event in enumerate(events):
        lines += [
            "BEGIN:VEVENT",
            f"UID:event-{number}@bookiji.test",
            "DTSTAMP:20260101T000000Z",
            f"DTSTART:{_utc(event.start)}",
            f"DTEND:{_utc(event.end)}",
            f"SUMMARY:{_text(event.summary)}",
        ]
        if event.status != "confirmed":
            lines.append(f"STATUS:{event.status.upper()}")
        if event.transparent:
            lines.append("TRANSP:TRANSPARENT")
        lines.append("END:VEVENT")
    lines.append("END:VCALENDAR")
    return "\r\n".join(lines) + "\r\n"


@pytest.fixture
def ics_source_factory(tmp_path: Path) -> Callable[[list[EventSpec]], IcsCalendarSource]:
    def make(events: list[EventSpec]) -> IcsCalendarSource:
        path = tmp_path / f"calendar-{len(list(tmp_path.iterdir()))}.ics"
        path.write_text(ics_text(events), encoding="utf-8", newline="")
        return IcsCalendarSource(str(path), vendor_timezone="UTC")

    return make


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    delay: float = 0.0  # seconds to stall before answering
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class SeenRequest:
    path: str
    authorization: str | None


class LoopbackCalendarServer:
    """Serves canned answers per path on 127.0.0.1; unknown paths are 404."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[SeenRequest] = []
        self._release = threading.Event()  # cuts stalls short at teardown
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.requests.append(SeenRequest(self.path, self.headers.get("Authorization")))
                route = server.routes.get(path, Route(b"not found", 404))
                if route.delay:
                    server._release.wait(route.delay)
                try:
                    self.send_response(route.status)
                    for name, value in route.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "text/calendar; charset=utf-8")
                    self.send_header("Content-Length", str(len(route.body)))
                    self.end_headers()
                    self.wfile.write(route.body)
                except OSError:  # the client gave up (timeout tests)
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve(
        self,
        path: str,
        body: bytes = b"",
        status: int = 200,
        *,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Answer GET `path` with `body`/`status`; returns the full URL."""
        self.routes[path] = Route(body, status, delay, headers or {})
        return self.base_url + path

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@contextmanager
def loopback_server() -> Iterator[LoopbackCalendarServer]:
    server = LoopbackCalendarServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ics_server() -> Iterator[LoopbackCalendarServer]:
    with loopback_server() as server:
        yield server
