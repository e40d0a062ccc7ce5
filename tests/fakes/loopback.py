"""The lifecycle the local test servers share: a threaded HTTP server on 127.0.0.1, a free
port, a daemon thread, and a stop that wakes handlers sleeping on an injected delay."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Self


class LoopbackFake:
    """Subclasses set `_thread_name`, build their server in `_make_server`, may add
    `_background_threads`, and create `_stopping` and `_httpd` in `__init__`."""

    _thread_name = "fake"
    _stopping: threading.Event
    _httpd: ThreadingHTTPServer | None
    _threads: list[threading.Thread] = []

    def _make_server(self) -> ThreadingHTTPServer:
        raise NotImplementedError

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
