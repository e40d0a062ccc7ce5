"""Load on a local daemon (loopback only, bounded, stops by itself).

Starts `bookiji daemon` on a free port with a fresh SQLite database, then for 1, 16 and 64
concurrent clients measures GET /healthz (the server's ceiling), availability reads and
reservation creates: throughput and p50/p95/p99 latency, and each as a share of the
/healthz ceiling. Run: .venv/bin/python bench/api_load.py [seconds-per-level]
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bookiji.services.apikeys import ApiKeyService
from bookiji.services.clock import SystemClock
from bookiji.store import migrate
from bookiji.store.crypto import new_key
from bookiji.store.database import Database
from tests.api.daemon_support import free_port, running_daemon
from tests.factories import add_vendor

LEVELS = (1, 16, 64)
MAX_REQUESTS = 4000  # per level and endpoint, whatever the duration


class Connection:
    """One keep-alive HTTP/1.1 connection, a few lines of asyncio instead of a full client.

    httpx costs the load generator ~0.5 ms of CPU per request; on a 2-core machine shared
    with the server that would measure the client, not the daemon.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 host: str, key: str) -> None:  # fmt: skip
        self.reader, self.writer = reader, writer
        self.head = f"Host: {host}\r\nAuthorization: Bearer {key}\r\n"

    async def request(self, method: str, target: str, body: bytes | None = None) -> int:
        lines = f"{method} {target} HTTP/1.1\r\n{self.head}"
        if body is not None:
            lines += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write((lines + "\r\n").encode() + (body or b""))
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status


Call = Callable[[Connection, int], Awaitable[int]]


async def _measure(call: Call, clients: int, seconds: float, base: str,
                   key: str) -> tuple[float, list[float], int]:  # fmt: skip
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    numbers = count()
    stop_at = time.monotonic() + seconds

    async def worker(connection: Connection) -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            n = next(numbers)
            if n >= MAX_REQUESTS:
                return
            began = time.perf_counter()
            status = await call(connection, n)
            latencies.append((time.perf_counter() - began) * 1000)
            errors += status >= 500

    connections = []
    for _ in range(clients):
        reader, writer = await asyncio.open_connection(host, int(port))
        connections.append(Connection(reader, writer, f"{host}:{port}", key))
    began = time.monotonic()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.monotonic() - began
    for connection in connections:
        connection.writer.close()
    return len(latencies) / elapsed, latencies, errors


def measure(call: Call, clients: int, seconds: float, base: str,
            key: str) -> tuple[float, list[float], int]:  # fmt: skip
    return asyncio.run(_measure(call, clients, seconds, base, key))


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    # A throw-away key for the partner's sealed webhook secret (the daemon inherits it).
    os.environ.setdefault("BOOKIJI_PII_KEYS", new_key())
    workdir = Path(tempfile.mkdtemp(prefix="bookiji-load-"))
    url = f"sqlite:///{workdir / 'load.db'}"
    db = Database(url)
    migrate.upgrade(db)
    add_vendor(db, "shop", slot_minutes=15, slot_interval_minutes=15, max_advance_days=3650)
    keys = ApiKeyService(db, SystemClock())
    keys.add_partner("bench", "Bench")
    _, key = keys.create_key("bench")
    db.dispose()
    port = free_port()
    config = workdir / "bookiji.toml"
    # The limits and caps are lifted (this measures the server, not the limiter); the jobs
    # keep the daemon's default schedules, as deployed.
    config.write_text(
        f'database_url = "{url}"\n[api]\nport = {port}\n'
        "reads_per_minute = 10000000\nwrites_per_minute = 10000000\n"
        "max_active_holds_per_requester = 1000000\nmax_active_holds_per_partner = 10000000\n"
    )
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
    window = urlencode(
        {"startTime": start.isoformat(), "endTime": (start + timedelta(days=7)).isoformat()}
    )
    slot = count()

    async def healthz(connection: Connection, _n: int) -> int:
        return await connection.request("GET", "/healthz")

    async def availability(connection: Connection, _n: int) -> int:
        return await connection.request("GET", f"/v1/vendors/shop/availability?{window}")

    async def create(connection: Connection, n: int) -> int:
        begin = start + timedelta(minutes=15 * next(slot))
        body = {"vendorId": "shop", "requesterId": f"r{n}", "slotStartTime": begin.isoformat(),
                "slotEndTime": (begin + timedelta(minutes=15)).isoformat()}  # fmt: skip
        return await connection.request("POST", "/v1/reservations", json.dumps(body).encode())

    with running_daemon(config, workdir, port=port) as daemon:
        print(f"{seconds:g} s per level (at most {MAX_REQUESTS} requests), SQLite, loopback")
        print(f"{'endpoint':<14}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}"
              f"{'p99 ms':>9}{'5xx':>6}{'of ceiling':>12}")  # fmt: skip
        for clients in LEVELS:
            ceiling = None
            for name, call in (("healthz", healthz), ("availability", availability),
                               ("create", create)):  # fmt: skip
                rate, latencies, errors = measure(call, clients, seconds, daemon.base_url, key)
                ceiling = ceiling or rate
                print(f"{name:<14}{clients:>8}{rate:>9.0f}{statistics.median(latencies):>9.1f}"
                      f"{pct(latencies, 0.95):>9.1f}{pct(latencies, 0.99):>9.1f}{errors:>6}"
                      f"{rate / ceiling:>11.0%}")  # fmt: skip
        daemon.stop()


if __name__ == "__main__":
    main()
