"""The lifecycle the local test servers share: a threaded HTTP server on 127.0.0.1, a free
port, a daemon thread, and a stop that wakes handlers sleeping on an injected delay."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import traceback
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class FakeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: Any  # the test server object whose `_handle(handler, method)` answers requests

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout test) makes our late write fail: not a bug.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        self.fake.errors.append(traceback.format_exc())


class FakeHandler(BaseHTTPRequestHandler):
    """Hands every request to the fake; `reply` and `drop` are how the fake answers."""

    protocol_version = "HTTP/1.1"
    # Keep-alive plus a header write then a body write would wait on delayed ACKs (~40 ms).
    disable_nagle_algorithm = True
    content_type = "application/json"  # unless the reply's headers name one
    server: FakeHTTPServer

    def do_GET(self) -> None:
        self.server.fake._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.fake._handle(self, "DELETE")

    def reply(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            self.send_response(status)
            if "content-type" not in {name.lower() for name in headers}:
                self.send_header("Content-Type", self.content_type)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def drop(self) -> None:
        """Close the connection without answering (the client sees a network error)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LoopbackFake:
    """Subclasses set `_thread_name` (and `_content_type` if not plain JSON), may add
    `_background_threads`, and create `_stopping` and `_httpd` in `__init__`."""

    _thread_name = "fake"
    _content_type = "application/json"
    _stopping: threading.Event
    _httpd: ThreadingHTTPServer | None
    _threads: list[threading.Thread] = []

    def _make_server(self) -> ThreadingHTTPServer:
        handler = type("Handler", (FakeHandler,), {"content_type": self._content_type})
        return FakeHTTPServer(("127.0.0.1", 0), handler)

    def _background_threads(self) -> list[threading.Thread]:
        """Threads besides the server's own (e.g. a webhook sender), started with it."""
        return []

    def start(self) -> Self:
        httpd = self._make_server()
        httpd.fake = self  # type: ignore[attr-defined]  # handlers reach their fake here
        self._httpd = httpd
        serve = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self._thread_name,
            daemon=True,
        )
        self._threads = [serve, *self._background_threads()]
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()  # wakes handlers sleeping on an injected delay
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_port}"
