"""What the metrics say after runs, reloads and state reads: every DESIGN.md name, right values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from retentiond.engine import Outcome, Plan
from retentiond.metrics import Metrics, RuleSnapshot
from retentiond.runner import RunReport
from tests.daemon_support import metric_names, sample

NOW = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)

# The list of DESIGN.md "Metrics", as a scrape shows them (counters with _total, histograms split).
DESIGN_NAMES = {
    "retentiond_build_info",
    "retentiond_config_last_reload_successful",
    "retentiond_config_last_reload_success_timestamp_seconds",
    "retentiond_rule_last_success_timestamp_seconds",
    "retentiond_rule_runs_total",
    "retentiond_rule_run_duration_seconds_bucket",
    "retentiond_rule_run_duration_seconds_count",
    "retentiond_rule_run_duration_seconds_sum",
    "retentiond_rows_deleted_total",
    "retentiond_files_deleted_total",
    "retentiond_bytes_deleted_total",
    "retentiond_copies_shredded_total",
    "retentiond_rule_overdue_items",
    "retentiond_rule_oldest_item_age_seconds",
    "retentiond_rule_held_items",
    "retentiond_ledger_entries",
    "retentiond_ledger_last_checkpoint_timestamp_seconds",
}


def _plan(rule: str, expired: int = 10, held: int = 2) -> Plan:
    return Plan(rule, "delete", "t", "pk-ranges", NOW, "database", 100, expired, held, 999, 3600.0)


def _report(rule: str, result: str, items: int = 0, nbytes: int = 0) -> RunReport:
    outcome = (
        Outcome(items, nbytes, "hmac-sha256-sum:00", "pk-ranges") if result == "success" else None
    )
    return RunReport(rule, result, "run", _plan(rule), outcome, "", 1.5)


def _scrape(metrics: Metrics) -> str:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return body.decode()


def test_every_design_metric_is_exported_from_the_start() -> None:
    metrics = Metrics()
    metrics.set_rules({"lab-results": "rows", "transfer-exports": "files", "sealed": "copies"})
    text = _scrape(metrics)
    assert metric_names(text) >= DESIGN_NAMES
    assert sample(text, "retentiond_build_info", version="0.1.0") == 1
    # Counters start at 0 for every configured rule and result, so increase() and alerts work.
    for result in ("success", "failure", "refused"):
        assert sample(text, "retentiond_rule_runs_total", rule="sealed", result=result) == 0
    assert "_created" not in text


def test_runs_feed_the_counter_of_their_store_kind() -> None:
    metrics = Metrics()
    metrics.set_rules({"lab-results": "rows", "transfer-exports": "files", "sealed": "copies"})
    metrics.observe_run(_report("lab-results", "success", items=120, nbytes=4096))
    metrics.observe_run(_report("transfer-exports", "success", items=3, nbytes=30))
    metrics.observe_run(_report("sealed", "success", items=2, nbytes=500))
    metrics.observe_run(_report("lab-results", "refused"))
    metrics.observe_run(_report("lab-results", "failure"))
    text = _scrape(metrics)
    assert sample(text, "retentiond_rows_deleted_total", rule="lab-results") == 120
    assert sample(text, "retentiond_files_deleted_total", rule="transfer-exports") == 3
    assert sample(text, "retentiond_copies_shredded_total", rule="sealed") == 2
    assert sample(text, "retentiond_bytes_deleted_total", rule="lab-results") == 4096
    assert sample(text, "retentiond_rows_deleted_total", rule="transfer-exports") is None
    for result, count in (("success", 1), ("refused", 1), ("failure", 1)):
        runs = sample(text, "retentiond_rule_runs_total", rule="lab-results", result=result)
        assert runs == count
    assert sample(text, "retentiond_rule_run_duration_seconds_count", rule="lab-results") == 3
    assert (
        sample(text, "retentiond_rule_run_duration_seconds_bucket", rule="lab-results", le="5.0")
        == 3
    )


def test_gauges_follow_rule_state() -> None:
    metrics = Metrics()
    metrics.set_rules({"a": "rows", "b": "rows", "c": "rows"})
    metrics.update_rules(
        [
            RuleSnapshot("a", "success", NOW, NOW, 0, 120.0, 4),
            RuleSnapshot("b", "refused", NOW - timedelta(minutes=10), None, 50, 600.0, 0),
            RuleSnapshot("gone", "success", NOW, NOW, 7, 1.0, 1),  # no longer configured
        ],
        NOW,
    )
    text = _scrape(metrics)
    assert (
        sample(text, "retentiond_rule_last_success_timestamp_seconds", rule="a") == NOW.timestamp()
    )
    assert sample(text, "retentiond_rule_last_success_timestamp_seconds", rule="b") == 0
    assert sample(text, "retentiond_rule_overdue_items", rule="b") == 50
    assert sample(text, "retentiond_rule_held_items", rule="a") == 4
    # Nothing overdue: no expired item is left, whatever age the last plan saw.
    assert sample(text, "retentiond_rule_oldest_item_age_seconds", rule="a") == 0
    # Overdue data keeps aging after the run that left it.
    assert sample(text, "retentiond_rule_oldest_item_age_seconds", rule="b") == 600 + 600
    assert sample(text, "retentiond_rule_last_result", rule="b", result="refused") == 1
    assert sample(text, "retentiond_rule_last_result", rule="b", result="success") == 0
    assert sample(text, "retentiond_rule_overdue_items", rule="gone") is None
    assert sample(text, "retentiond_rule_overdue_items", rule="c") == 0  # never ran


def test_reload_adds_and_removes_rule_series() -> None:
    metrics = Metrics()
    metrics.set_rules({"old": "rows", "kept": "files"})
    metrics.observe_run(_report("kept", "success", items=5))
    metrics.set_rules({"kept": "files", "new": "copies"})
    text = _scrape(metrics)
    assert 'rule="old"' not in text
    assert sample(text, "retentiond_copies_shredded_total", rule="new") == 0
    assert sample(text, "retentiond_files_deleted_total", rule="kept") == 5  # counters survive
    # A run of a rule removed while it ran is not counted under a ghost label.
    metrics.observe_run(_report("old", "success", items=9))
    assert 'rule="old"' not in _scrape(metrics)


def test_config_and_ledger_gauges() -> None:
    metrics = Metrics()
    metrics.config_loaded(True, NOW)
    metrics.config_loaded(False, NOW + timedelta(hours=1))
    metrics.update_ledger(42, NOW)
    text = _scrape(metrics)
    assert sample(text, "retentiond_config_last_reload_successful") == 0
    assert (
        sample(text, "retentiond_config_last_reload_success_timestamp_seconds") == NOW.timestamp()
    )
    assert sample(text, "retentiond_ledger_entries") == 42
    assert sample(text, "retentiond_ledger_last_checkpoint_timestamp_seconds") == NOW.timestamp()


def test_a_scrape_after_a_change_shows_the_change() -> None:
    metrics = Metrics()
    metrics.set_rules({"lab-results": "rows"})
    first = _scrape(metrics)
    assert _scrape(metrics) == first  # served again from the same rendering
    metrics.observe_run(_report("lab-results", "success", items=7))
    assert sample(_scrape(metrics), "retentiond_rows_deleted_total", rule="lab-results") == 7
    metrics.update_ledger(3, NOW)
    assert sample(_scrape(metrics), "retentiond_ledger_entries") == 3
    metrics.update_rules([RuleSnapshot("lab-results", "failure", NOW, None, 9, 1.0, 0)], NOW)
    assert sample(_scrape(metrics), "retentiond_rule_overdue_items", rule="lab-results") == 9
    metrics.config_loaded(False, NOW)
    assert sample(_scrape(metrics), "retentiond_config_last_reload_successful") == 0
    # The OpenMetrics rendering is kept apart from the text one.
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert b"# EOF" in body
    assert "# EOF" not in _scrape(metrics)
