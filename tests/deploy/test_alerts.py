"""The Prometheus alert rules in deploy/prometheus: valid (`promtool check rules`), behaving
as their unit tests say (`promtool test rules`), each tested both ways, annotated and
documented in the operator guide, and built only on metrics, labels and label values that
a running daemon really exports at /metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.api.daemon_support import free_port, running_daemon, write_config

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts_test.yml"
GUIDE = ROOT / "docs" / "operator-guide.md"

#: Labels Prometheus itself puts on scraped series (or histogram buckets carry).
TARGET_LABELS = {"job", "instance", "le"}
SELECTOR = re.compile(r"\b(bookiji_[a-z0-9_]+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    return path


def alerts() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules() -> None:
    result = run(promtool(), "check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_check_example_config() -> None:
    result = run(promtool(), "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    result = run(promtool(), "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_alert_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, list[list[Any]]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    for rule in alerts():
        name = rule["alert"]
        assert any(expected for expected in cases.get(name, [])), f"{name} is never shown firing"
        assert any(not expected for expected in cases.get(name, [])), (
            f"{name} is never shown staying quiet"
        )


def test_each_alert_is_annotated_and_its_runbook_is_a_section_of_the_guide() -> None:
    guide = GUIDE.read_text()
    headings = {line.lstrip("#").strip() for line in guide.splitlines() if line.startswith("#")}
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert notes["summary"].strip() and notes["description"].strip(), name
        assert notes["runbook"] == f"docs/operator-guide.md#{name.lower()}", name
        assert name in headings, f"the operator guide has no section `### {name}`"


def scrape(client: httpx.Client) -> dict[str, list[dict[str, str]]]:
    """Every sample name at /metrics with the label sets it has."""
    body = client.get("/metrics").text
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


def problems(expr: str, exported: dict[str, list[dict[str, str]]]) -> list[str]:
    """What an alert expression uses that the daemon does not export."""
    missing = []
    used = SELECTOR.findall(expr)
    for metric, matchers in used:
        series = exported.get(metric)
        if not series:
            missing.append(f"metric {metric}")
            continue
        for label, op, wanted in MATCHER.findall(matchers):
            values = {s[label] for s in series if label in s}
            if not values:
                missing.append(f"label {label} on {metric}")
            elif op == "=" and wanted not in values:
                missing.append(f'{metric}{{{label}="{wanted}"}}')
            elif op == "=~":
                # A plain alternation names values: each must exist. Otherwise one must match.
                if re.fullmatch(r"[\w|]+", wanted):
                    missing += [f'{metric}{{{label}="{w}"}}' for w in wanted.split("|")
                                if w not in values]  # fmt: skip
                elif not any(re.fullmatch(wanted, v) for v in values):
                    missing.append(f'{metric}{{{label}=~"{wanted}"}}')
    for grouping in GROUPING.findall(expr):
        for label in {g.strip() for g in grouping.split(",")} - TARGET_LABELS:
            if not any(label in s for metric, _ in used for s in exported.get(metric, [])):
                missing.append(f"grouping label {label}")
    return missing


def test_every_metric_the_rules_use_is_exported_by_a_running_daemon(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(tmp_path / "bookiji.toml", database_url, port)
    rules = {rule["alert"]: str(rule["expr"]) for rule in alerts()}
    with running_daemon(config, tmp_path, port=port) as daemon, daemon.client() as client:
        client.get("/v1/events")  # a partner API route (401): its latency is observed
        deadline = time.monotonic() + 20
        while True:  # job runs are recorded within a second or so of the start
            exported = scrape(client)
            found = {name: problems(expr, exported) for name, expr in rules.items()}
            if not any(found.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    assert {name: missing for name, missing in found.items() if missing} == {}
    # The rules' selectors were really checked (the regexes found them).
    assert "bookiji_job_last_run_timestamp_seconds" in exported
    unchecked = {name for name, expr in rules.items() if not SELECTOR.findall(expr)}
    assert unchecked == {"BookijiDaemonDown", "BookijiDaemonAbsent"}  # Prometheus's own `up`
