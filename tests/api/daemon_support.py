"""A real `bookiji daemon` subprocess on a free loopback port, for API tests over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

SCRIPT = str(Path(sys.executable).parent / "bookiji")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10, trust_env=False)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def write_config(
    path: Path, database_url: str, port: int, extra: str = "", api_extra: str = ""
) -> Path:
    path.write_text(
        f'database_url = "{database_url}"\n{extra}\n[api]\nport = {port}\n'
        f"reads_per_minute = 300\nwrites_per_minute = 60\n{api_extra}\n"
        "[daemon.jobs]\nexpiry = 0.5\nwebhooks = 0.5\nvendor_notifications = 0.5\n"
    )
    return path


def wait_until_healthy(
    process: subprocess.Popen[bytes],
    base_url: str,
    *,
    logs: Callable[[], str],
    timeout: float,
    error: type[Exception] = RuntimeError,
    name: str = "daemon",
) -> None:
    """Until the daemon answers /healthz; `error` with its log if it exits or never does."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise error(f"{name} exited early:\n{logs()}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise error(f"{name} did not come up:\n{logs()}")
        time.sleep(0.1)


@contextmanager
def running_daemon(
    config: Path, tmp_path: Path, *, port: int, name: str = "daemon"
) -> Iterator[Daemon]:
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [SCRIPT, "--config", str(config), "daemon", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    daemon = Daemon(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_healthy(process, daemon.base_url, logs=daemon.logs, timeout=30)
        yield daemon
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def seed_partner(database_url: str, partner: str = "acme", **vendor: object) -> str:
    """A vendor `shop` (with `vendor` overrides) and a partner with a full-scope key; the key."""
    from bookiji.services.apikeys import ApiKeyService
    from bookiji.services.clock import SystemClock
    from bookiji.store.database import Database
    from tests.factories import add_vendor

    db = Database(database_url)
    try:
        add_vendor(db, "shop", **vendor)
        keys = ApiKeyService(db, SystemClock())
        keys.add_partner(partner, partner.title())
        return keys.create_key(partner)[1]
    finally:
        db.dispose()
