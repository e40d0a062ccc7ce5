"""How the CLI speaks: rich tables for people, exact JSON for scripts, one red line on error."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(document: Any) -> None:
    """Plain JSON on stdout: no colour codes, no wrapping, stable key order."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def error_line(message: str) -> None:
    first = " ".join(message.split())  # never more than one line
    # Escaped: "[slot_unavailable]" and file contents would otherwise be read as markup tags.
    err_console.print(f"[bold red]error:[/bold red] {escape(first)}", markup=True)


STATE_STYLES = {
    "COMMITTED": "bold green",
    "CANCELLED": "yellow",
    "EXPIRED": "yellow",
}


def state_style(state: str) -> str:
    if state.startswith("FAILED"):
        return "red"
    return STATE_STYLES.get(state, "cyan")
