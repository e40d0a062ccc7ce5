"""The partner guide's tables say what the API does: each error code with its real status and
retryability, every status the OpenAPI document lists has its codes, and every scope exists."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import bookiji
from bookiji.domain.errors import BookijiError
from bookiji.domain.states import ReservationState

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "partner-guide.md"


def _errors() -> dict[str, set[tuple[int, bool]]]:
    """Every error code the code base defines, with the statuses and retryability it has."""
    for module in pkgutil.walk_packages(bookiji.__path__, "bookiji."):
        if not module.name.startswith(("bookiji.tui", "bookiji.cli")):
            importlib.import_module(module.name)
    found: dict[str, set[tuple[int, bool]]] = {BookijiError.code: {(500, False)}}
    stack = list(BookijiError.__subclasses__())
    while stack:
        cls = stack.pop()
        found.setdefault(cls.code, set()).add((cls.http_status, cls.retryable))
        stack.extend(cls.__subclasses__())
    return found


def _table(heading: str) -> list[list[str]]:
    section = GUIDE.read_text(encoding="utf-8").split(f"\n## {heading}\n", 1)[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_every_error_code_in_the_guide_has_its_real_status_and_retryability() -> None:
    known = _errors()
    listed = {}
    for code, status, retryable, _when in _table("Errors"):
        code = code.strip("`")
        listed[code] = int(status)
        assert (int(status), retryable == "yes") in known.get(code, set()), code
    # The codes a partner meets on the routes the guide walks through.
    met = ("slot_unavailable", "idempotency_key_reused", "authorization_pending",
           "hold_limit_reached", "rate_limited", "invalid_request", "unauthorized",
           "deadline_passed")  # fmt: skip
    assert set(met) <= set(listed)


def test_every_error_status_the_openapi_document_lists_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bookiji.api.app import create_app
    from bookiji.bootstrap import build
    from bookiji.config import Settings
    from bookiji.store import crypto

    monkeypatch.setattr(crypto, "_keyring", crypto.keyring())  # build() installs its own
    monkeypatch.setenv("BOOKIJI_PII_KEYS", crypto.new_key())
    container = build(Settings(database_url=f"sqlite:///{tmp_path / 'api.db'}"))
    document = create_app(container).openapi()
    statuses = {
        int(status)
        for path, operations in document["paths"].items()
        if path.startswith("/v1/")
        for operation in operations.values()
        for status in operation["responses"]
        if int(status) >= 400
    }
    explained = {int(status) for _code, status, _retryable, _when in _table("Errors")}
    assert statuses <= explained


def test_the_scopes_and_states_tables_name_real_ones() -> None:
    from bookiji.services.apikeys import SCOPES

    assert {row[0].strip("`") for row in _table("Keys")} == set(SCOPES)
    named = {name for row in _table("States") for name in re.findall(r"`([A-Z_]+)`", row[0])}
    assert named == {state.value for state in ReservationState}


def test_the_metadata_limit_in_the_guide_is_the_real_one() -> None:
    from bookiji.services.reservations import MAX_METADATA_BYTES

    guide = " ".join(GUIDE.read_text(encoding="utf-8").split())
    assert f"at most {MAX_METADATA_BYTES:,} bytes as compact UTF-8 JSON" in guide
