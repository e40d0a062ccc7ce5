"""Property-based API testing from the served OpenAPI document (bounded): no 5xx, and every
response matches the schema the daemon publishes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bookiji.services.apikeys import ApiKeyService
from bookiji.services.clock import SystemClock
from bookiji.store.database import Database
from tests.api.daemon_support import free_port, running_daemon, write_config
from tests.factories import add_vendor

ST = str(Path(sys.executable).parent / "st")


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    if backend != "sqlite":
        pytest.skip("the API contract does not depend on the database; SQLite is enough")
    db = Database(database_url)
    add_vendor(db, "shop", slot_interval_minutes=60)
    keys = ApiKeyService(db, SystemClock())
    keys.add_partner("fuzz", "Fuzz")
    _, key = keys.create_key("fuzz")
    db.dispose()
    port = free_port()
    config = write_config(
        tmp_path / "bookiji.toml", database_url, port,
        api_extra="max_active_holds_per_requester = 100000\nmax_active_holds_per_partner = 100000",
    )  # fmt: skip
    config.write_text(
        config.read_text()
        .replace("reads_per_minute = 300", "reads_per_minute = 1000000")
        .replace("writes_per_minute = 60", "writes_per_minute = 1000000")
    )
    with running_daemon(config, tmp_path, port=port) as daemon:
        result = subprocess.run(
            [
                ST,
                "run",
                f"{daemon.base_url}/openapi.json",
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "--max-examples",
                "15",
                "--header",
                f"Authorization: Bearer {key}",
                "--request-timeout",
                "10",
                "--phases",
                "examples,coverage,fuzzing",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
