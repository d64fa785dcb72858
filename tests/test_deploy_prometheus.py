"""Alert rules, their promtool tests, the Grafana dashboard, and a real Prometheus scraping a daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tests.daemon_support import (
    ALL_KINDS,
    SHRED_RULE,
    DaemonProcess,
    cli,
    free_port,
    metric_names,
    seal,
    write_daemon_config,
)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "retentiond.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "retentiond.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "retentiond.json"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install prometheus)"
        if IN_CI:
            pytest.fail(message + " (CI=true: .ci/run installs it)")
        pytest.skip(message)
    return path


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def test_alert_rules_are_valid() -> None:
    done = _run(_tool("promtool"), "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    done = _run(_tool("promtool"), "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    # Every alert has a test case.
    alerts = set(re.findall(r"^\s+- alert: (\w+)", RULES.read_text(), re.MULTILINE))
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert alerts == tested


_FUNCTIONS_AND_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "le", "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels, keywords or numbers)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word.lower() in _FUNCTIONS_AND_KEYWORDS:
            continue
        names.add(word)
    return names


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            queries.append(variable["definition"].replace("label_values(", "").split(",")[0])
    return queries


def test_promql_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (rule, le) (rate(a_bucket{x=~"y|z"}[$__rate_interval])))'
    )
    assert promql_metric_names(expr) == {"a_bucket"}
    assert promql_metric_names('time() - max by (rule) (b{i="$i"})') == {"b"}
    assert promql_metric_names("up == 0 or absent(up)") == {"up"}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A running daemon (SQLite state) with a rule of every kind: rows, files, sealed copies."""
    port = free_port()
    (tmp_path / "transfer").mkdir()
    body = ALL_KINDS.format(directory=tmp_path) + SHRED_RULE.format(name="sealed-copies")
    config = write_daemon_config(tmp_path, body, port=port)
    assert cli(config, "init").returncode == 0
    process = DaemonProcess(config, port)
    try:
        process.wait_http()
        yield process
    finally:
        process.close()


def test_every_dashboard_query_uses_exported_metrics(daemon: DaemonProcess) -> None:
    status, body = daemon.get("/metrics")
    assert status == 200
    exported = metric_names(body)
    queries = _dashboard_queries()
    assert len(queries) >= 10
    for query in queries:
        names = promql_metric_names(query)
        assert names, f"no metric in {query!r}"
        assert names <= exported, f"{query!r} reads {names - exported}, not exported"
    # The dashboard covers what the issue asks for.
    read = set().union(*(promql_metric_names(q) for q in queries))
    for wanted in (
        "retentiond_rule_overdue_items",
        "retentiond_rows_deleted_total",
        "retentiond_rule_runs_total",
        "retentiond_rule_last_success_timestamp_seconds",
        "retentiond_ledger_last_checkpoint_timestamp_seconds",
    ):
        assert wanted in read


def _query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        data = json.loads(response.read())
    assert data["status"] == "success"
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


def _wait_value(base: str, promql: str, wanted: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = _query(base, promql)
        if result and float(result[0]["value"][1]) == wanted:
            return
        time.sleep(0.5)
    raise AssertionError(f"{promql} = {result}, wanted {wanted}")


def test_a_real_prometheus_scrapes_deletions_and_overdue_items(tmp_path: Path) -> None:
    prometheus = _tool("prometheus")
    port, web = free_port(), free_port()
    password = "scrape-secret"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    auth = f'basic_auth_users = {{ prometheus = "{hashed}" }}'
    # One rule at a time, in name order at start: "a-guarded" sees three copies due but may
    # remove two at most, so it is refused and all three are overdue; then "b-copies" shreds them.
    body = (
        SHRED_RULE.format(name="a-guarded")
        + 'max_items = 2\nschedule = "every 1h"\n'
        + SHRED_RULE.format(name="b-copies")
    )
    config = write_daemon_config(
        tmp_path, body, port=port, metrics_extra=auth, daemon_extra="max_parallel_rules = 1"
    )
    assert cli(config, "init").returncode == 0
    for i in range(3):
        seal(config, tmp_path / f"dump-{i}.age", expires="1s")
    time.sleep(1.1)

    (tmp_path / "prometheus.yml").write_text(
        f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: retentiond
    basic_auth: {{ username: prometheus, password: {password} }}
    static_configs: [{{ targets: ["127.0.0.1:{port}"] }}]
"""
    )
    daemon = DaemonProcess(config, port)
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115 - closed with the process
    )
    base = f"http://127.0.0.1:{web}"
    try:
        daemon.wait_http()
        _wait_value(base, 'up{job="retentiond"}', 1)
        _wait_value(base, 'retentiond_rule_overdue_items{rule="a-guarded"}', 3)
        _wait_value(base, 'retentiond_rule_runs_total{rule="a-guarded",result="refused"}', 1)
        _wait_value(base, 'retentiond_copies_shredded_total{rule="b-copies"}', 3)
        _wait_value(base, 'retentiond_rule_overdue_items{rule="b-copies"}', 0)
        _wait_value(base, 'ALERTS{alertname="RetentiondRunRefused",alertstate="firing"}', 1)
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=5) as response:
            groups = json.loads(response.read())["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 7 and all(r["health"] == "ok" for r in rules), rules
        assert daemon.stop()[0] == 0
    finally:
        daemon.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
