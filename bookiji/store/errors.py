"""Recognise the database's refusals, whichever backend raised them."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError, OperationalError


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None)


def is_overlap_violation(exc: BaseException) -> bool:
    """The exclusion constraint (Postgres) or the overlap trigger (SQLite) fired."""
    if not isinstance(exc, IntegrityError):
        return False
    return _sqlstate(exc) == "23P01" or "slot_unavailable" in str(getattr(exc, "orig", exc))


def is_unique_violation(exc: BaseException, constraint_hint: str = "") -> bool:
    if not isinstance(exc, IntegrityError):
        return False
    if _sqlstate(exc) == "23505":
        return constraint_hint in str(exc.orig)
    text = str(getattr(exc, "orig", exc))
    return "UNIQUE constraint failed" in text and constraint_hint in text


def is_transient(exc: BaseException) -> bool:
    """Serialisation failures, deadlocks, a locked SQLite file: retrying may succeed."""
    if _sqlstate(exc) in {"40001", "40P01", "55P03"}:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(exc)
