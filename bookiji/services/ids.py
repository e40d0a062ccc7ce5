"""Opaque, prefixed identifiers: the prefix tells a human what kind of thing an id names."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"
