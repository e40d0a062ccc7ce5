"""Two daemons on one Postgres under a bounded load of holds and expiries; one is SIGKILLed
midway. Afterwards the audit is clean, every webhook event reached the partner, and no job
ran in both daemons at once (from the `job_runs` table)."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlmodel import col, select
from standardwebhooks import Webhook

from bookiji.domain.states import StageTTLs
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.audit import audit
from bookiji.services.clock import ManualClock, SystemClock
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.store.database import Database
from bookiji.store.models import JobRun, OutboxEvent, Partner
from bookiji.store.uow import UnitOfWork
from tests.api.daemon_support import free_port, running_daemon, write_config
from tests.factories import add_vendor


class Receiver:
    """A partner endpoint that verifies every signature and remembers each webhook-id."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.seen: dict[str, dict[str, object]] = {}
        self.bad = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    receiver.verifier.verify(body, dict(self.headers))
                except Exception:
                    receiver.bad += 1
                    self.send_response(400)
                else:
                    receiver.seen[self.headers["webhook-id"]] = json.loads(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def postgres_url(backend: str, database_url: str) -> Iterator[str]:
    if backend != "postgres":
        pytest.skip("several daemons share a Postgres database")
    yield database_url


@pytest.mark.slow
def test_two_daemons_share_the_work_and_survive_a_kill(postgres_url: str, tmp_path: Path) -> None:
    db = Database(postgres_url)
    add_vendor(db, "shop", slot_interval_minutes=60, max_advance_days=30)
    keys = ApiKeyService(db, SystemClock())
    _, secret = keys.add_partner("acme", "Acme")
    _, key = keys.create_key("acme")
    receiver = Receiver(secret)
    with UnitOfWork(db) as uow:
        partner = uow.session.get(Partner, "acme")
        assert partner is not None
        partner.webhook_url = receiver.url
        uow.commit()
    # Holds already past their deadline, so the daemons' expiry jobs have work to share.
    past = ManualClock(datetime.now(UTC) - timedelta(hours=1))
    old = ReservationService(db, past, StageTTLs())
    day = (datetime.now(UTC) + timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    for hour in range(12):
        old.create_hold(
            HoldRequest("shop", day + timedelta(hours=hour), day + timedelta(hours=hour + 1),
                        f"old-{hour}", partner_id="acme"),
            actor="test",
        )  # fmt: skip

    ports = free_port(), free_port()
    configs = [
        # A SIGKILLed daemon's job leases hold their jobs back until they run out (the
        # default 60 s is as long as this test waits): 10 s, renewed every third of it.
        write_config(
            tmp_path / f"d{i}.toml", postgres_url, port, extra="[daemon]\njob_lease_seconds = 10\n"
        )
        for i, port in enumerate(ports)
    ]
    try:
        with (
            running_daemon(configs[0], tmp_path, port=ports[0], name="a") as first,
            running_daemon(configs[1], tmp_path, port=ports[1], name="b") as second,
        ):
            clients = [first.client(key), second.client(key)]
            later = day + timedelta(days=1)
            for hour in range(16):  # bounded load, alternating daemons
                if hour == 8:
                    first.stop(signal.SIGKILL)
                client = clients[1] if hour >= 8 else clients[hour % 2]
                response = client.post(
                    "/v1/reservations",
                    json={"vendorId": "shop", "requesterId": f"new-{hour}",
                          "slotStartTime": (later + timedelta(hours=hour)).isoformat(),
                          "slotEndTime": (later + timedelta(hours=hour + 1)).isoformat()},
                )  # fmt: skip
                assert response.status_code in (201, 409), response.text
                if hour % 4 == 0 and response.status_code == 201:
                    rid = response.json()["reservationId"]
                    assert client.post(f"/v1/reservations/{rid}/cancel").status_code == 200
            # Wait (bounded) until the survivor expired the old holds and sent every event.
            deadline = time.monotonic() + 60
            while True:
                with UnitOfWork(db, readonly=True) as uow:
                    ours = col(OutboxEvent.partner_id) == "acme"
                    events = set(uow.session.exec(select(OutboxEvent.event_id).where(ours)).all())
                    states = uow.reservations.count_by_state()
                if (
                    events
                    and events <= set(receiver.seen)
                    and states.get("HELD", 0) == 0
                    and (states.get("FAILED_VENDOR_TIMEOUT", 0) >= 12)
                ):
                    break
                assert time.monotonic() < deadline, (states, len(events), len(receiver.seen))
                time.sleep(0.3)
            for client in clients:
                client.close()
            assert second.stop(signal.SIGTERM) == 0
    finally:
        receiver.close()

    assert audit(db) == []
    assert receiver.bad == 0
    with UnitOfWork(db, readonly=True) as uow:
        runs = uow.session.exec(
            select(JobRun).order_by(col(JobRun.name), col(JobRun.started_at))
        ).all()
    assert len({run.owner for run in runs}) == 2  # both daemons took part
    by_job: dict[str, list[JobRun]] = {}
    for run in runs:
        by_job.setdefault(run.name, []).append(run)
    for name, job_runs in by_job.items():
        for earlier, later_run in itertools.pairwise(job_runs):
            if earlier.owner != later_run.owner and earlier.finished_at is not None:
                assert later_run.started_at >= earlier.finished_at, f"{name} ran twice at once"
    db.dispose()
