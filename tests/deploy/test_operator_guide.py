"""Every `bookiji ...` command the operator guide (and the deploy files) tells an operator to
run exists, with the options it is given: resolved against the real CLI's command tree."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import typer

from bookiji.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operator-guide.md"
DEPLOY = ROOT / "deploy"

#: Where the text runs the CLI: a code span or a code line that starts with `bookiji` or
#: `bookiji-admin` (optionally after sudo), or the installed script's path anywhere.
INVOCATIONS = (
    re.compile(r"`(?:sudo )?bookiji(?:-admin)? ([^`]+)`"),
    re.compile(r"(?m)^\s*(?:sudo )?bookiji(?:-admin)? ([^|>#\n]+)"),
    re.compile(r"/bin/bookiji ([^'|>#\n]+)"),
)
GLOBAL_WITH_VALUE = {"--config", "--database"}


def invocations(text: str) -> list[str]:
    return [m.group(1).strip() for pattern in INVOCATIONS for m in pattern.finditer(text)]


def cli() -> Any:
    """The click command tree of the real CLI (Typer's own click: duck-typed, not imported)."""
    root = typer.main.get_command(app)
    assert hasattr(root, "commands")
    return root


def check(words: str, root: Any) -> list[str]:
    """Problems with one command line (empty when the CLI accepts its words and options)."""
    tokens = shlex.split(words.replace("[", " ").replace("]", " ").replace("...", " "))
    tokens = [t for t in tokens if not t.startswith("$")]  # "$@" in a wrapper script
    command = root
    path = ["bookiji"]
    while tokens:
        token = tokens[0]
        if token in GLOBAL_WITH_VALUE and command is root:
            tokens = tokens[2:]
            continue
        if hasattr(command, "commands"):
            sub = command.commands.get(token)
            if sub is None:
                return [f"`{' '.join(path)} {token}` is not a command"]
            command, path, tokens = sub, [*path, token], tokens[1:]
            continue
        break
    if hasattr(command, "commands"):
        return []  # a group named in prose ("bookiji db ...")
    options = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    return [
        f"`{' '.join(path)}` has no option {token}"
        for token in tokens
        if token.startswith("--") and token.split("=")[0] not in options
    ]


def test_documented_commands_exist() -> None:
    root = cli()
    sources = {GUIDE: GUIDE.read_text()}
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in ("", ".service", ".timer"):
            sources[path] = path.read_text()
    problems: dict[str, list[str]] = {}
    checked = 0
    for path, text in sources.items():
        for words in invocations(text):
            checked += 1
            found = check(words, root)
            if found:
                problems.setdefault(str(path.relative_to(ROOT)), []).extend(found)
    assert problems == {}
    assert checked >= 40  # the pattern really finds the guide's commands


def test_the_checker_catches_a_wrong_command_and_option() -> None:
    root = cli()
    assert check("apikeys rotate KEY --overlap 24h", root) == []
    assert check("--config /etc/bookiji/bookiji.toml reconcile --once", root) == []
    assert check("apikeys rotat KEY", root) == ["`bookiji apikeys rotat` is not a command"]
    assert check("compensate RES --force", root) == ["`bookiji compensate` has no option --force"]


def _vendors_section() -> str:
    text = GUIDE.read_text(encoding="utf-8")
    return text.split("\n## Vendors\n", 1)[1].split("\n## ", 1)[0]


def test_the_vendors_file_reference_documents_every_key_and_its_example_imports() -> None:
    from bookiji.domain.vendors import (
        _VENDOR_KEYS,
        NOTIFY_KEYS,
        PAYMENT_KEYS,
        parse_vendor_document,
    )

    section = _vendors_section()
    documented = set(re.findall(r"(?m)^\| `([a-z_]+)` \|", section))
    assert documented == set(_VENDOR_KEYS)
    for key in (*PAYMENT_KEYS, *NOTIFY_KEYS):
        assert f"`{key}`" in section, key
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    (vendor,) = parse_vendor_document(example.group(1), filename="operator-guide.md")
    assert (vendor.slot_minutes, vendor.buffer_before_minutes, vendor.price) == (30, 10, 5000)
