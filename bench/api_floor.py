"""The floor under bench/api_load.py: what this stack reaches on this machine when an endpoint
does almost nothing (loopback only, bounded, stops by itself).

A FastAPI app on uvicorn, configured as the daemon is (same uvicorn settings, 8 request
threads, no access log), over the project's own SQLite engine (WAL, synchronous=FULL,
BEGIN IMMEDIATE, the write gate) with three routes in two styles:
- `healthz`: returns a constant (the ceiling each style is measured against);
- `read`: one indexed single-row SELECT, as a cached availability answer's version check;
- `write`: the create body validated by the API's own pydantic model, then one single-row
  INSERT transaction, the database ceiling of bench/scale.py.
`sync` routes are plain `def`s run in the thread pool, as the daemon's writes are; `async`
routes run on the event loop, as the daemon's `/healthz` and cached availability answers on
SQLite are (a database call there would stall every request on Postgres). The same client
as api_load measures each at 1 and 16 clients.

A real create does far more than `write` (authentication, rate limit, idempotency, the
availability re-check, about ten rows); a real availability read more than `read`
(authentication, rate limit, the cached document). So api_load's targets can only be met if
this floor clears them by a wide margin. Run: .venv/bin/python bench/api_floor.py [seconds]
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.api_load import Connection, measure, pct
from bookiji.api.schemas import CreateReservation  # at module level: FastAPI resolves it here
from tests.api.daemon_support import free_port

LEVELS = (1, 16)
REQUEST_THREADS = 8  # the daemon's default (daemon.request_threads)


def serve(port: int, url: str) -> None:
    import uvicorn
    from anyio import to_thread
    from fastapi import FastAPI
    from sqlalchemy import text

    from bookiji.store.database import Database

    db = Database(url)
    with db.write_gate, db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS floor (id INTEGER PRIMARY KEY, "
                          "vendor TEXT, requester TEXT, start TEXT, stop TEXT)"))  # fmt: skip
        conn.execute(text("INSERT INTO floor (vendor, requester, start, stop) "
                          "VALUES ('shop', 'r', 'a', 'b')"))  # fmt: skip
    insert = text("INSERT INTO floor (vendor, requester, start, stop) VALUES (:v, :r, :s, :e)")
    select = text("SELECT id, vendor FROM floor WHERE id = 1")

    def write(body: CreateReservation) -> dict[str, Any]:
        with db.write_gate, db.engine.begin() as conn:
            conn.execute(insert, {"v": body.vendorId, "r": body.requesterId,
                                  "s": body.slotStartTime, "e": body.slotEndTime})  # fmt: skip
        return {"reservationId": "res_floor", "state": "HELD"}

    def read() -> dict[str, Any]:
        with db.read_engine.connect() as conn:
            row = conn.execute(select).one()
        return {"id": row.id, "vendorId": row.vendor, "slots": []}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/sync/healthz")
    def sync_healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/sync/read")
    def sync_read() -> dict[str, Any]:
        return read()

    @app.post("/sync/write", status_code=201)
    def sync_write(body: CreateReservation) -> dict[str, Any]:
        return write(body)

    @app.get("/async/healthz")
    async def async_healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/async/read")
    async def async_read() -> dict[str, Any]:
        return read()

    @app.post("/async/write", status_code=201)
    async def async_write(body: CreateReservation) -> dict[str, Any]:
        return write(body)

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    uvicorn.Server(config).run()


def wait_for(base: str, process: Any) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.is_alive():
        try:
            if httpx.get(f"{base}/sync/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the floor server did not start")


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    workdir = Path(tempfile.mkdtemp(prefix="bookiji-floor-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=(port, f"sqlite:///{workdir / 'floor.db'}"), daemon=True
    )
    server.start()
    try:
        wait_for(base, server)
        start = datetime.now(UTC) + timedelta(days=2)
        slot = count()

        def route(style: str, name: str) -> Any:
            async def call(connection: Connection, n: int) -> int:
                if name != "write":
                    status = await connection.request("GET", f"/{style}/{name}")
                else:
                    begin = start + timedelta(minutes=15 * next(slot))
                    body = {"vendorId": "shop", "requesterId": f"r{n}",
                            "slotStartTime": begin.isoformat(),
                            "slotEndTime": (begin + timedelta(minutes=15)).isoformat()}  # fmt: skip
                    status = await connection.request(
                        "POST", f"/{style}/write", json.dumps(body).encode()
                    )
                if status >= 300:  # a floor that answers errors measures nothing
                    raise SystemExit(f"{style} {name} answered {status}")
                return status

            return call

        print(f"{seconds:g} s per level, FastAPI on uvicorn, SQLite (WAL, synchronous=FULL), "
              f"loopback, {socket.gethostname()}")  # fmt: skip
        print(f"{'route':<16}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}"
              f"{'p99 ms':>9}{'5xx':>6}{'of ceiling':>12}")  # fmt: skip
        for clients in LEVELS:
            for style in ("sync", "async"):
                ceiling = None
                for name in ("healthz", "read", "write"):
                    rate, latencies, errors = measure(
                        route(style, name), clients, seconds, base, "floor"
                    )
                    ceiling = ceiling or rate
                    print(f"{style + ' ' + name:<16}{clients:>8}{rate:>9.0f}"
                          f"{statistics.median(latencies):>9.1f}{pct(latencies, 0.95):>9.1f}"
                          f"{pct(latencies, 0.99):>9.1f}{errors:>6}"
                          f"{rate / ceiling:>11.0%}")  # fmt: skip
    finally:
        server.terminate()
        server.join(timeout=10)


if __name__ == "__main__":
    main()
