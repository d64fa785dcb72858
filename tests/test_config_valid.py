"""Valid configs load, the example config is valid, and environment overrides apply."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from retentiond.config import load_config, rule_hash
from retentiond.duration import parse_duration
from tests.configs import write_config
from tests.conftest import run_cli
from tests.test_config_errors import GOOD_RULE, SQL_STORE

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_valid() -> None:
    result = run_cli("check", "-c", str(ROOT / "config.example.toml"))
    assert result.returncode == 0, result.stderr
    assert "configuration is valid (2 stores, 6 rules, 2 holds)" in result.stdout


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, SQL_STORE + GOOD_RULE)
    result = run_cli("check", env={"RETENTIOND_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, SQL_STORE + GOOD_RULE)
    monkeypatch.setenv("RETENTIOND_DAEMON__SCHEDULE", "every 6h")
    monkeypatch.setenv("RETENTIOND_DAEMON__BATCH_BUDGET_MS", "80")
    config = load_config(path).config
    assert config.daemon.schedule.text == "every 6h"
    assert config.daemon.batch_budget_ms == 80


def test_bad_environment_override_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, SQL_STORE + GOOD_RULE)
    result = run_cli("check", "-c", str(path), env={"RETENTIOND_DAEMON__BATCH_BUDGET_MS": "soon"})
    assert result.returncode == 2
    assert "daemon.batch_budget_ms" in result.stderr


def test_defaults_for_copies_allow_removing_everything(tmp_path: Path) -> None:
    body = (
        SQL_STORE
        + GOOD_RULE
        + (
            '\n[[rules]]\nname = "copy"\nstore = "lims"\ntable = "staging.x"\n'
            'since = 2026-01-01\nretain = "30d"\naction = "drop"\n'
        )
    )
    config = load_config(write_config(tmp_path, body)).config
    assert config.rule("results").effective_max_fraction == 0.5
    assert config.rule("copy").effective_max_fraction == 1.0


def test_rule_hash_changes_with_the_rule_only(tmp_path: Path) -> None:
    first = load_config(write_config(tmp_path, SQL_STORE + GOOD_RULE)).config.rule("results")
    again = load_config(write_config(tmp_path, SQL_STORE + GOOD_RULE)).config.rule("results")
    longer = load_config(
        write_config(tmp_path, SQL_STORE + GOOD_RULE.replace('"10y"', '"11y"'))
    ).config.rule("results")
    assert rule_hash(first) == rule_hash(again)
    assert rule_hash(first) != rule_hash(longer)


def test_durations_are_calendar_aware() -> None:
    leap = datetime(2024, 2, 29, tzinfo=UTC)
    assert parse_duration("1y").add_to(leap) == datetime(2025, 2, 28, tzinfo=UTC)
    assert parse_duration("P10Y") == parse_duration("10y")
    assert parse_duration("6w").approx_seconds() == 42 * 86400
    assert parse_duration("PT12H").subtract_from(leap) == datetime(2024, 2, 28, 12, tzinfo=UTC)


def test_credential_is_read_from_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retentiond.config.secrets import store_url

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "lims-password").write_text("s3cret\n")
    os.chmod(creds / "lims-password", 0o400)
    body = SQL_STORE.replace('kind = "sql"', 'kind = "sql"\npassword_credential = "lims-password"')
    config = load_config(write_config(tmp_path, body)).config
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    url = store_url(config.stores["lims"], "lims")  # type: ignore[arg-type]
    assert url.password == "s3cret"
    assert "s3cret" not in repr(url)
