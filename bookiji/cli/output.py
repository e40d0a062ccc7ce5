"""How the CLI speaks: rich tables for people, exact JSON for scripts, one red line on error."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from bookiji.domain.timeutil import format_instant, parse_instant

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class _Mode:
    """Whether the running command was given `--json`: its failure then also prints the
    error envelope on stdout, so a script reads the code and every detail, not a red line."""

    json = False


def _note_json(value: bool) -> bool:
    _Mode.json = _Mode.json or value
    return value


def json_option(help: str = "Machine-readable output.") -> Any:
    return typer.Option(False, "--json", help=help, callback=_note_json)


JSON_OPTION: Any = json_option()


def json_requested() -> bool:
    return _Mode.json


def forget_json_request() -> None:
    _Mode.json = False


def note_json_argument(args: Sequence[str]) -> None:
    """`--json` among the arguments: parsing may stop before the option is read (an unknown
    option or a bad value ahead of it), and the script still expects the envelope."""
    _note_json("--json" in args)


def emit_json(document: Any) -> None:
    """Plain JSON on stdout: no colour codes, no wrapping, stable key order."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


#: Width of a listing piped to another program (no terminal to fit): a row stays one line.
PIPE_WIDTH = 1000


def listing(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    keys: Collection[str] = ("id",),
) -> Table:
    """A table for people that never loses a character: the `keys` columns (ids an operator
    copies into the next command) are never wrapped or shortened, and every other cell
    wraps onto more lines instead of ending in an ellipsis. Cells may hold rich markup."""
    rows = [list(row) for row in rows]
    table = Table(title=title)
    whole = _keys_that_fit(columns, rows, keys)
    for index, name in enumerate(columns):
        if index in whole:
            table.add_column(name, no_wrap=True, min_width=whole[index])
        else:
            table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


#: The narrowest a folded column may get and still be read (borders and padding: 3 a column).
_FOLDED_MIN, _PER_COLUMN = 6, 3


def _keys_that_fit(
    columns: Sequence[str], rows: Sequence[Sequence[str]], keys: Collection[str]
) -> dict[int, int]:
    """The key columns kept whole, by index, with their widths: in the order given, as long
    as the other columns keep room to be read. On a narrow terminal a later key folds like
    any other cell rather than squeezing every other column to nothing."""
    width = console.width if console.is_terminal or os.environ.get("COLUMNS") else PIPE_WIDTH
    budget = width - 1 - _PER_COLUMN * len(columns)
    budget -= _FOLDED_MIN * sum(1 for name in columns if name not in keys)
    whole: dict[int, int] = {}
    for key in keys:
        if key not in columns:
            continue
        index = list(columns).index(key)
        widest = max((Text.from_markup(row[index]).cell_len for row in rows), default=0)
        need = max(widest, len(key))
        if whole and need > budget:  # the first key is always whole
            budget -= _FOLDED_MIN
            continue
        whole[index] = need
        budget -= need
    return whole


def print_listing(table: Table) -> None:
    """On a terminal the table fits its width; piped (`| grep`), each row stays one line."""
    if console.is_terminal or os.environ.get("COLUMNS"):
        console.print(table)
    else:
        Console(highlight=False, soft_wrap=True, width=PIPE_WIDTH).print(table)


def instant_cell(value: datetime | str | None, missing: str = "") -> str:
    """A moment in a table: RFC 3339 UTC to the second (pasteable into --start/--end)."""
    if value is None:
        return missing
    moment = parse_instant(value, field="time") if isinstance(value, str) else value
    return format_instant(moment.replace(microsecond=0)) or missing


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """'1 calendar', '2 calendars': an operator reads these aloud in incident notes."""
    return f"{count} {noun}" if count == 1 else f"{count} {plural or noun + 's'}"


def attempts(count: int) -> str:
    return counted(count, "attempt")


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


def step_progress(label: str, *, json_output: bool) -> Progress:
    """A bar of N steps on stderr (stdout stays the report), hidden for `--json` and gone
    once done; `{task.description}` in `label` names the step in progress."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        transient=True,
        disable=not shows_progress(json_output=json_output),
    )


def shows_progress(*, json_output: bool) -> bool:
    """Only for a person at a terminal: in a pipe or a log a bar cannot redraw, and what it
    left (a blank line on stderr) read as an extra error line."""
    return not json_output and err_console.is_terminal
