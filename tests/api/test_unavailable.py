"""When the database goes away under a running daemon, the API answers 503 with the error
envelope (retryable), /readyz says not ready while /healthz stays up, and the API and the
scheduled jobs recover on their own once the database is back."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlmodel import col, select

from bookiji.store.database import Database
from bookiji.store.models import JobRun
from bookiji.store.uow import UnitOfWork
from tests.api.daemon_support import free_port, running_daemon, seed_partner, write_config
from tests.conftest import _admin_connect, postgres_admin_url


@pytest.fixture
def postgres_url(backend: str, database_url: str) -> Iterator[str]:
    if backend != "postgres":
        pytest.skip("cutting the database off a running daemon is done on Postgres")
    yield database_url


def wait_for(check: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_database_outage_is_503_and_recovers(postgres_url: str, tmp_path: Path) -> None:
    key = seed_partner(postgres_url, max_advance_days=30)
    name = make_url(postgres_url).database
    admin = postgres_admin_url()
    assert admin is not None
    start = (datetime.now(UTC) + timedelta(days=2)).replace(hour=0, minute=0, second=0)
    window = {"startTime": start.isoformat(), "endTime": (start + timedelta(days=1)).isoformat()}

    def cut_off(allow: bool) -> None:
        with _admin_connect(admin) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
            if not allow:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )

    port = free_port()
    config = write_config(tmp_path / "bookiji.toml", postgres_url, port)
    with running_daemon(config, tmp_path, port=port) as daemon, daemon.client(key) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/vendors/shop/availability", params=window).status_code == 200
        try:
            cut_off(allow=False)
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "service_unavailable"
            answer = client.get("/v1/vendors/shop/availability", params=window)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == {
                "code": "service_unavailable",
                "message": "the database is not reachable; retry later",
                "retryable": True,
                "details": {},
            }
            assert client.get("/healthz").status_code == 200  # the process itself is fine
            time.sleep(1.5)  # let the jobs (every 0.5 s here) meet the outage too
        finally:
            cut_off(allow=True)
        restored = datetime.now(UTC)

        def recovered() -> bool:
            try:
                return client.get("/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(recovered)
        assert client.get("/v1/vendors/shop/availability", params=window).status_code == 200

        def expiry_ran_again() -> bool:
            db = Database(postgres_url)
            try:
                with UnitOfWork(db, readonly=True) as uow:
                    return (
                        uow.session.exec(
                            select(JobRun).where(
                                col(JobRun.name) == "expiry", col(JobRun.started_at) > restored
                            )
                        ).first()
                        is not None
                    )
            finally:
                db.dispose()

        wait_for(expiry_ran_again)  # the job thread survived the outage
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.logs()
