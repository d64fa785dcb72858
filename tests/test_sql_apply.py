"""`retentiond plan` and `apply` on SQL stores, as a user runs them: guards, holds, bad rules, ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from tests.configs import write_config
from tests.conftest import run_cli
from tests.sql_support import Row, load_rows, surviving

ROWS = [Row(i, i % 10, 100 if i % 4 else 2) for i in range(1, 401)]  # 300 expired of 400


def _config(tmp_path: Path, url: str, extra: str = "", state_url: str | None = None) -> Path:
    body = f"""
[stores.lab]
kind = "sql"
url = "{url}"

[[rules]]
name = "lab-results"
store = "lab"
table = "results"
age_column = "validated_at"
retain = "30d"
action = "delete"
max_fraction = 0.8
{extra}
"""
    config = write_config(tmp_path, body, state_url=state_url)
    assert run_cli("init", "-c", str(config)).returncode == 0
    return config


def _entries(config: Path) -> list[dict[str, Any]]:
    shown = run_cli("-c", str(config), "ledger", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    return [json.loads(line) for line in shown.stdout.splitlines() if line.strip()]


def test_apply_purges_and_the_ledger_counts_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    engine, table = load_rows(url, ROWS)
    config = _config(tmp_path, url)
    held = run_cli(
        "-c",
        str(config),
        "hold",
        "add",
        "--rule",
        "lab-results",
        "--where",
        "patient_id=3",
        "--reason",
        "court case 2026-117",
    )
    assert held.returncode == 0, held.stderr
    plan = run_cli("-c", str(config), "plan", "--json")
    planned = json.loads(plan.stdout)["plans"][0]
    assert planned["expired_items"] == 260 and planned["held_items"] == 40
    assert planned["method"] == "rowid-ranges"

    applied = run_cli("-c", str(config), "apply", "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)[0]["items"] == 260
    left = surviving(engine, table)
    assert len(left) == 140 and all(r.id in left for r in ROWS if r.patient_id == 3)
    purge = [e for e in _entries(config) if e["kind"] == "purge"]
    assert [e["count"] for e in purge] == [260] and purge[0]["remaining_expired"] == 0
    assert purge[0]["digest"].startswith("hmac-sha256-sum:")
    assert "patient" not in json.dumps(purge)  # no key value, no column value in the ledger
    verify = run_cli("-c", str(config), "ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    engine.dispose()


def test_a_guard_refuses_the_whole_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    engine, table = load_rows(url, ROWS)
    config = _config(tmp_path, url, "max_items = 100")
    applied = run_cli("-c", str(config), "apply")
    assert applied.returncode == 4
    assert len(surviving(engine, table)) == 400
    (refused,) = [e for e in _entries(config) if e["kind"] == "refused"]
    assert refused["count"] == 300 and "max_items 100" in refused["reason"]
    engine.dispose()


def test_a_bad_rule_fails_alone_naming_its_key(tmp_path: Path, pg_database: str) -> None:
    engine, table = load_rows(pg_database, ROWS)
    extra = """
[[rules]]
name = "renamed"
store = "lab"
table = "results_v1"
age_column = "validated_at"
retain = "30d"
action = "delete"

[[rules]]
name = "dropped-column"
store = "lab"
table = "results"
age_column = "checked_at"
retain = "30d"
action = "delete"
"""
    config = _config(tmp_path, pg_database, extra, state_url=pg_database)
    applied = run_cli("-c", str(config), "apply")
    assert applied.returncode == 4, applied.stdout + applied.stderr
    assert 'rule "renamed": table: table "results_v1" does not exist' in applied.stdout
    assert 'rule "dropped-column": age_column: column "checked_at" does not exist' in (
        applied.stdout
    )
    assert len(surviving(engine, table)) == 100  # the good rule ran, in its own transactions
    kinds = sorted(e["kind"] for e in _entries(config))
    assert kinds.count("error") == 2 and kinds.count("purge") == 1
    with engine.connect() as conn:
        # The state lives in the target database: each batch was recorded in its own transaction.
        batches = conn.execute(text("SELECT sum(items) FROM run_batch")).scalar_one()
    assert batches == 300
    engine.dispose()


def test_a_failing_store_does_not_stop_the_other_rules(tmp_path: Path, mysql_database: str) -> None:
    engine, table = load_rows(mysql_database, ROWS)
    extra = f"""
[stores.gone]
kind = "sql"
url = "sqlite:///{tmp_path / "missing" / "nothing.db"}"

[[rules]]
name = "nowhere"
store = "gone"
table = "results"
age_column = "validated_at"
retain = "30d"
action = "delete"
"""
    config = _config(tmp_path, mysql_database, extra)
    applied = run_cli("-c", str(config), "apply", "--json")
    reports = {r["rule"]: r for r in json.loads(applied.stdout)}
    assert reports["lab-results"]["result"] == "success" and reports["lab-results"]["items"] == 300
    assert reports["nowhere"]["result"] == "failure"
    assert applied.returncode == 4
    assert len(surviving(engine, table)) == 100
    create_engine(mysql_database).dispose()
    engine.dispose()


def test_a_table_hold_named_without_its_schema_still_holds(
    tmp_path: Path, pg_database: str
) -> None:
    engine, table = load_rows(pg_database, ROWS)
    body = """
[[holds]]
table = "results"
where = { patient_id = [3] }
reason = "court case 2026-117"
"""
    config = _config(tmp_path, pg_database, body).read_text()
    config = config.replace('table = "results"\nage_column', 'table = "public.results"\nage_column')
    path = tmp_path / "config.toml"
    path.write_text(config)
    applied = run_cli("-c", str(path), "apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    left = surviving(engine, table)
    assert all(r.id in left for r in ROWS if r.patient_id == 3)
    assert len(left) == 140
    engine.dispose()
