"""Load on a local daemon (loopback only, bounded, stops by itself).

Starts `bookiji daemon` on a free port with a fresh SQLite database, then for 1, 16 and 64
concurrent clients measures GET /healthz (the server's ceiling), availability reads and
reservation creates: throughput and p50/p95/p99 latency, and each as a share of the
/healthz ceiling. Run: .venv/bin/python bench/api_load.py [seconds-per-level]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bookiji.services.apikeys import ApiKeyService
from bookiji.services.clock import SystemClock
from bookiji.store import migrate
from bookiji.store.crypto import new_key
from bookiji.store.database import Database
from tests.api.daemon_support import free_port, running_daemon, write_config
from tests.factories import add_vendor

LEVELS = (1, 16, 64)
MAX_REQUESTS = 4000  # per level and endpoint, whatever the duration


def measure(
    call: Callable[[httpx.Client, int], int], clients: int, seconds: float, base: str, key: str
) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    numbers = count()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"},
                          timeout=10, trust_env=False) as client:  # fmt: skip
            while time.monotonic() < stop_at:
                n = next(numbers)
                if n >= MAX_REQUESTS:
                    return
                began = time.perf_counter()
                status = call(client, n)
                elapsed = (time.perf_counter() - began) * 1000
                with lock:
                    latencies.append(elapsed)
                    errors += status >= 500

    began = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(worker)
    return len(latencies) / (time.monotonic() - began), latencies, errors


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
    config = write_config(
        workdir / "bookiji.toml",
        url,
        port,
        api_extra="max_active_holds_per_requester = 1000000\n"
        "max_active_holds_per_partner = 10000000",
    )
    # Lift the rate limits: this measures the server, not the limiter.
    config.write_text(
        config.read_text()
        .replace("reads_per_minute = 300", "reads_per_minute = 10000000")
        .replace("writes_per_minute = 60", "writes_per_minute = 10000000")
    )
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
    window = {"startTime": start.isoformat(), "endTime": (start + timedelta(days=7)).isoformat()}
    slot = count()

    def healthz(client: httpx.Client, _n: int) -> int:
        return client.get("/healthz").status_code

    def availability(client: httpx.Client, _n: int) -> int:
        return client.get("/v1/vendors/shop/availability", params=window).status_code

    def create(client: httpx.Client, _n: int) -> int:
        begin = start + timedelta(minutes=15 * next(slot))
        return client.post(
            "/v1/reservations",
            json={"vendorId": "shop", "requesterId": f"r{_n}", "slotStartTime": begin.isoformat(),
                  "slotEndTime": (begin + timedelta(minutes=15)).isoformat()},
        ).status_code  # fmt: skip

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
