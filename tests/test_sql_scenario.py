"""A lab-like PostgreSQL schema, end to end through the command line.

Results with comments (a cascade), a partitioned archive, a staging copy from a migration, holds
from the config and from `hold add`, and one rule whose table was renamed. After `apply`, exactly
the expired, unheld rows are gone, the copy is dropped, the bad rule failed alone naming its key,
and the ledger's counts add up to what disappeared.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text

from tests.configs import write_config
from tests.conftest import run_cli

SCHEMA = """
CREATE TABLE patients (id int PRIMARY KEY, name text);
CREATE TABLE results (id bigint PRIMARY KEY, patient_id int REFERENCES patients,
    validated_at timestamptz NOT NULL, analyte text, value numeric);
CREATE INDEX ON results (patient_id);
CREATE TABLE result_comments (id bigint PRIMARY KEY,
    result_id bigint NOT NULL CONSTRAINT fk_comment_result REFERENCES results, body text);
CREATE TABLE archive (id bigint NOT NULL, patient_id int, validated_at timestamptz NOT NULL,
    PRIMARY KEY (id, validated_at)) PARTITION BY RANGE (validated_at);
CREATE SCHEMA staging;
CREATE TABLE staging.export_v4 (id int PRIMARY KEY, payload text);
INSERT INTO patients SELECT i, 'p' || i FROM generate_series(1, 20) i;
INSERT INTO results SELECT i, 1 + i % 20, now() - (i % 40) * interval '30 days', 'GLU', i % 9
    FROM generate_series(1, 4000) i;
INSERT INTO result_comments SELECT i * 10 + k, i, 'c' FROM generate_series(1, 4000) i,
    generate_series(1, 2) k WHERE i % 3 = 0;
INSERT INTO staging.export_v4 SELECT i, 'x' FROM generate_series(1, 300) i;
"""


def _archive_partitions(conn: Any) -> None:
    statements = conn.execute(
        text(
            "SELECT format('CREATE TABLE archive_%s PARTITION OF archive FOR VALUES FROM (%L) "
            "TO (%L)', k, date_trunc('month', now()) - k * interval '1 month', "
            "date_trunc('month', now()) - (k - 1) * interval '1 month') FROM generate_series(0, 29) k"
        )
    ).scalars()
    for statement in list(statements):
        conn.execute(text(statement))
    conn.execute(
        text(
            "INSERT INTO archive SELECT i, 1 + i % 20, date_trunc('month', now()) "
            "- (i % 30) * interval '1 month' + interval '2 days' FROM generate_series(1, 6000) i"
        )
    )


def _config(tmp_path: Path, url: str) -> Path:
    since = (date.today() - timedelta(days=90)).isoformat()
    body = f"""
[stores.lims]
kind = "sql"
url = "{url}"

[[rules]]
name = "lab-results"
store = "lims"
table = "public.results"
age_column = "validated_at"
retain = "2y"
action = "delete"
cascade = ["public.result_comments"]

[[rules]]
name = "archive"
store = "lims"
table = "archive"
age_column = "validated_at"
retain = "1y"
action = "delete"
max_fraction = 0.8

[[rules]]
name = "migration-staging"
store = "lims"
table = "staging.export_v4"
since = "{since}"
retain = "30d"
action = "drop"

[[rules]]
name = "old-results"
store = "lims"
table = "public.results_v1"
age_column = "validated_at"
retain = "2y"
action = "delete"

[[holds]]
rule = "lab-results"
where = {{ patient_id = [4] }}
reason = "court case 2026-117"
"""
    return write_config(tmp_path, body)


def _count(conn: Any, sql: str) -> int:
    return int(conn.execute(text(sql)).scalar_one())


def test_a_lab_schema_is_purged_exactly(tmp_path: Path, pg_database: str) -> None:
    engine = create_engine(pg_database)
    with engine.begin() as conn:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(text(statement))
        _archive_partitions(conn)
    config = _config(tmp_path, pg_database)
    assert run_cli("init", "-c", str(config)).returncode == 0
    held = run_cli(
        "-c", str(config), "hold", "add", "--rule", "archive", "--where", "patient_id=7",
        "--reason", "inspection 2026-3",
    )  # fmt: skip
    assert held.returncode == 0, held.stderr
    with engine.connect() as conn:
        results_gone = _count(
            conn,
            "SELECT count(*) FROM results WHERE validated_at < now() - interval '2 years' "
            "AND patient_id <> 4",
        )
        comments_gone = _count(
            conn,
            "SELECT count(*) FROM result_comments c JOIN results r ON r.id = c.result_id "
            "WHERE r.validated_at < now() - interval '2 years' AND r.patient_id <> 4",
        )
        archive_gone = _count(
            conn,
            "SELECT count(*) FROM archive WHERE validated_at < now() - interval '1 year' "
            "AND patient_id <> 7",
        )
        before = {t: _count(conn, f"SELECT count(*) FROM {t}") for t in ("results", "archive")}

    applied = run_cli("-c", str(config), "apply", "--json")
    assert applied.returncode == 4, applied.stdout + applied.stderr  # one rule failed
    reports = {r["rule"]: r for r in json.loads(applied.stdout)}
    assert reports["old-results"]["result"] == "failure"
    assert (
        'rule "old-results": table: table "public.results_v1" does not exist'
        in (reports["old-results"]["message"])
    )
    assert all(reports[r]["result"] == "success" for r in ("lab-results", "archive"))

    with engine.connect() as conn:
        assert _count(conn, "SELECT count(*) FROM results") == before["results"] - results_gone
        assert (
            _count(
                conn,
                "SELECT count(*) FROM results WHERE validated_at < now() - interval '2 years' "
                "AND patient_id <> 4",
            )
            == 0
        )
        assert _count(conn, "SELECT count(*) FROM archive") == before["archive"] - archive_gone
        assert (
            _count(
                conn,
                "SELECT count(*) FROM archive WHERE validated_at < now() - interval '1 year' "
                "AND patient_id = 7",
            )
            > 0
        )
        assert _count(conn, "SELECT count(*) FROM patients") == 20
    assert "export_v4" not in inspect(engine).get_table_names(schema="staging")

    shown = run_cli("-c", str(config), "ledger", "show", "--json")
    entries = [json.loads(line) for line in shown.stdout.splitlines() if line.strip()]
    counts = {e["rule"]: e["count"] for e in entries if e["kind"] in ("purge", "drop")}
    assert counts == {
        "lab-results": results_gone + comments_gone,
        "archive": archive_gone,
        "migration-staging": 300,
    }
    assert run_cli("-c", str(config), "ledger", "verify").returncode == 0
    engine.dispose()
