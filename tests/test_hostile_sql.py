"""SQL identifiers and hold values crafted for injection, through the config and `hold add --where`,
and oversized holds: each gets a clear error or is used as a correctly quoted, harmless value; the
target table and its neighbours stay intact except for the expired, unheld rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.configs import write_config
from tests.fault_support import check, cli, no_traceback, record

INJECTIONS = [
    "results; DROP TABLE other",
    'results" ; DROP TABLE other; --',
    "results' OR '1'='1",
    "results/**/",
    "results --",
    "res ults",
    "public.results.x",
    "`results`",
    "results\nDROP",
    "résultats",
    "",
]
COLUMN_INJECTIONS = [
    "validated_at; DELETE FROM other",
    'validated_at"--',
    "validated_at) OR (1=1",
    "1=1",
    "validated_at,id",
]
VALUE_INJECTIONS = [
    "x' OR '1'='1",
    "'; DROP TABLE other; --",
    '"); DELETE FROM results; --',
    "1 OR 1=1",
    "%",
    "_",
    "\\",
    "x\x00y",
]


@pytest.fixture(params=["postgres", "mysql"])
def target_url(request: pytest.FixtureRequest) -> str:
    """A fresh PostgreSQL or MariaDB database."""
    return str(
        request.getfixturevalue("pg_database" if request.param == "postgres" else "mysql_database")
    )


def _fill(url: str) -> Any:
    """results: 40 rows, ids 1..40, even ids expired; code holds crafted strings; other: 10 rows."""
    engine = create_engine(url)
    pg = url.startswith("postgresql")
    ts = "timestamptz" if pg else "datetime"
    old = "now() - interval '90 day'" if pg else "now() - interval 90 day"
    new = "now() - interval '1 day'" if pg else "now() - interval 1 day"
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE results (id int PRIMARY KEY, patient_id int, code varchar(60), "
                f"validated_at {ts} NOT NULL)"
            )
        )
        conn.execute(text("CREATE TABLE other (id int PRIMARY KEY)"))
        for i in range(1, 41):
            code = VALUE_INJECTIONS[i % len(VALUE_INJECTIONS)].replace("\x00", "0")
            conn.execute(
                text(f"INSERT INTO results VALUES (:i, :p, :c, {old if i % 2 == 0 else new})"),
                {"i": i, "p": i % 5, "c": f"{code}#{i}"},
            )
        for i in range(10):
            conn.execute(text("INSERT INTO other VALUES (:i)"), {"i": i})
    return engine


def _ids(engine: Any, table: str = "results") -> set[int]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(text(f"SELECT id FROM {table}"))}


def _config(tmp_path: Path, url: str, rule: str = "", holds: str = "") -> Path:
    body = f"""
[stores.lims]
kind = "sql"
url = "{url}"

[[rules]]
name = "lab-results"
store = "lims"
retain = "30d"
action = "delete"
max_fraction = 1.0
{rule or 'table = "results"' + chr(10) + 'age_column = "validated_at"'}
{holds}
"""
    # `init` on a plain config first: a hostile one would (rightly) stop `init` itself.
    plain = body.replace(rule, "") if rule else body
    if rule:
        plain = plain.replace(
            "max_fraction = 1.0\n",
            'max_fraction = 1.0\ntable = "results"\nage_column = "validated_at"\n',
        )
    config = write_config(tmp_path, plain)
    init = cli(config, "init")
    assert init.returncode == 0, init.stderr
    return write_config(tmp_path, body)


def _intact(engine: Any) -> bool:
    return _ids(engine) == set(range(1, 41)) and _ids(engine, "other") == set(range(10))


def test_injected_table_names_are_config_errors(tmp_path: Path, pg_database: str) -> None:
    engine = _fill(pg_database)
    for n, table in enumerate(INJECTIONS):
        quoted = table.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        rule = f'table = "{quoted}"\nage_column = "validated_at"'
        config = _config(tmp_path / str(n), pg_database, rule)
        # The config check refuses these before any connection: `check --connect` once, then apply.
        for command in (("check", "--connect"),) * (n == 0) + (("apply",),):
            done = cli(config, *command)
            record("sql injection", bad_inputs=1)
            check(
                "sql injection", done.returncode == 2 and no_traceback(done), (table, done.stderr)
            )
            check("sql injection", "rules[0].table" in done.stderr, done.stderr)
    check("sql injection", _intact(engine), "a crafted table name touched data")
    engine.dispose()


def test_injected_column_names_are_config_errors(tmp_path: Path, pg_database: str) -> None:
    engine = _fill(pg_database)
    for n, column in enumerate(COLUMN_INJECTIONS):
        quoted = column.replace('"', '\\"')
        rule = f'table = "results"\nage_column = "{quoted}"'
        config = _config(tmp_path / str(n), pg_database, rule)
        done = cli(config, "apply")
        record("sql injection", bad_inputs=1)
        check("sql injection", done.returncode == 2 and no_traceback(done), done.stderr)
        check("sql injection", "rules[0].age_column" in done.stderr, done.stderr)
    check("sql injection", _intact(engine), "a crafted column name touched data")
    engine.dispose()


def test_unknown_but_plain_names_are_located_errors_at_check_connect(
    tmp_path: Path, target_url: str
) -> None:
    engine = _fill(target_url)
    for rule, key in (
        ('table = "no_such_table"\nage_column = "validated_at"', "table"),
        ('table = "results"\nage_column = "no_such_column"', "age_column"),
        ('table = "other_schema.results"\nage_column = "validated_at"', "table"),
    ):
        config = _config(tmp_path / key / str(len(rule)), target_url, rule)
        done = cli(config, "check", "--connect")
        record("sql injection", bad_inputs=1)
        check("sql injection", done.returncode == 2 and no_traceback(done), done.stderr)
        check("sql injection", f"rules[0].{key}" in done.stderr + done.stdout, done.stderr)
        applied = cli(config, "apply")
        check("sql injection", applied.returncode != 0 and no_traceback(applied), applied.stderr)
    check("sql injection", _intact(engine), "an unknown name touched data")
    engine.dispose()


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", "\\u0000") + '"'


def test_crafted_hold_values_in_the_config_are_literal_values(
    tmp_path: Path, target_url: str
) -> None:
    engine = _fill(target_url)
    # Hold the rows whose code is one crafted string, exactly; the others are plain data.
    held_ids = [i for i in range(2, 41, 2) if i % 3 == 0]
    with engine.connect() as conn:
        codes = [
            conn.execute(text("SELECT code FROM results WHERE id = :i"), {"i": i}).scalar_one()
            for i in held_ids
        ]
    crafted = [v for v in VALUE_INJECTIONS if "\x00" not in v]  # PostgreSQL text has no NUL
    values = ", ".join(_toml_string(c) for c in codes + crafted)
    holds = f"""
[[holds]]
rule = "lab-results"
where = {{ code = [{values}] }}
reason = "court case 2026-117"
"""
    config = _config(tmp_path, target_url, holds=holds)
    done = cli(config, "apply")
    record("sql injection", bad_inputs=len(VALUE_INJECTIONS))
    check("sql injection", done.returncode == 0 and no_traceback(done), done.stderr)
    expected = {i for i in range(1, 41) if i % 2 == 1} | set(held_ids)
    check("sql injection", _ids(engine) == expected, sorted(_ids(engine) ^ expected))
    check("sql injection", _ids(engine, "other") == set(range(10)), "other table touched")
    engine.dispose()


def test_crafted_hold_add_where_values_hold_nothing_else_and_break_nothing(
    tmp_path: Path, target_url: str
) -> None:
    engine = _fill(target_url)
    config = _config(tmp_path, target_url)
    # On an integer column a string is either refused (clear error, nothing deleted) or matches
    # no row; on a text column it is a literal that matches no row either.
    crafted = [v for v in VALUE_INJECTIONS if "\x00" not in v]  # argv cannot carry a NUL
    for value in crafted:
        for column in ("patient_id", "code"):
            added = cli(
                config,
                "hold",
                "add",
                "--rule",
                "lab-results",
                "--where",
                f"{column}={value}",
                "--reason",
                "crafted",
            )
            record("sql injection", bad_inputs=1)
            check("sql injection", added.returncode in (0, 2) and no_traceback(added), added.stderr)
    done = cli(config, "apply")
    check("sql injection", done.returncode in (0, 1, 4) and no_traceback(done), done.stderr)
    left = _ids(engine)
    if done.returncode == 0:
        check("sql injection", left == {i for i in range(1, 41) if i % 2 == 1}, sorted(left))
    else:
        check("sql injection", left == set(range(1, 41)), "a failed run deleted rows")
        for value in crafted:
            if len(value) > 3:
                check("sql injection", value not in done.stderr + done.stdout, "value echoed")
    check("sql injection", _ids(engine, "other") == set(range(10)), "other table touched")
    engine.dispose()


@pytest.mark.parametrize(
    "where",
    ["patient_id) OR (1=1=5", "patient_id;DROP TABLE other=1", "=1", "patient_id", '"id"=1'],
)
def test_crafted_hold_add_columns_are_usage_errors(
    tmp_path: Path, pg_database: str, where: str
) -> None:
    engine = _fill(pg_database)
    config = _config(tmp_path, pg_database)
    added = cli(config, "hold", "add", "--rule", "lab-results", "--where", where, "--reason", "x y")
    record("sql injection", bad_inputs=1)
    check("sql injection", added.returncode == 2 and no_traceback(added), added.stderr)
    listed = cli(config, "hold", "list", "--json")
    check("sql injection", listed.returncode == 0 and '"id": 1' not in listed.stdout, listed.stdout)
    check("sql injection", _intact(engine), "a crafted hold column touched data")
    engine.dispose()


def test_a_hold_of_100000_values_keeps_its_rows(tmp_path: Path, pg_database: str) -> None:
    engine = _fill(pg_database)
    # Every patient id from 0 to 99,999 is held, so no row may go.
    values = ", ".join(str(i) for i in range(100_000))
    holds = f"""
[[holds]]
rule = "lab-results"
where = {{ patient_id = [{values}] }}
reason = "court case 2026-117"
"""
    config = _config(tmp_path, pg_database, holds=holds)
    done = cli(config, "apply", timeout=300)
    record("oversized", bad_inputs=1)
    check("oversized", done.returncode in (0, 1, 2) and no_traceback(done), done.stderr[-2000:])
    check("oversized", _intact(engine), "rows of a held patient were deleted")
    check("oversized", len(done.stderr) < 10_000, "the error repeats the hold's values")
    # The same through `hold add`: 100,000 values in --where arguments (one argument is limited
    # to 128 KiB by the kernel, so they come in ten).
    plain = _config(tmp_path / "cli", pg_database)
    args = [
        part
        for k in range(10)
        for part in ("--where", "patient_id=" + ",".join(str(i) for i in range(k, 100_000, 10)))
    ]
    added = cli(plain, "hold", "add", "--rule", "lab-results", *args, "--reason", "big one")
    check("oversized", added.returncode in (0, 2) and no_traceback(added), added.stderr[-2000:])
    done = cli(plain, "apply", timeout=300)
    check("oversized", no_traceback(done), done.stderr[-2000:])
    if added.returncode == 0:
        check("oversized", _intact(engine), "rows of a held patient were deleted")
    engine.dispose()
