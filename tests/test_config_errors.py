"""Bad configs: each exits 2 from `retentiond check`, and the message names the file and the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retentiond.config import load_config
from retentiond.errors import ConfigError
from tests.configs import write_config
from tests.conftest import run_cli

SQL_STORE = """
[stores.lims]
kind = "sql"
url = "postgresql+psycopg://retentiond@db/lims"
"""
FILES_STORE = """
[stores.transfer]
kind = "files"
root = "/srv/transfer"
"""
GOOD_RULE = """
[[rules]]
name = "results"
store = "lims"
table = "public.results"
age_column = "validated_at"
retain = "10y"
action = "delete"
"""


def rule(**overrides: str) -> str:
    """A delete rule on `lims` with some keys replaced (values are TOML literals; '' removes)."""
    keys = {
        "name": '"results"',
        "store": '"lims"',
        "table": '"public.results"',
        "age_column": '"validated_at"',
        "retain": '"10y"',
        "action": '"delete"',
    }
    keys.update(overrides)
    body = "\n".join(f"{k} = {v}" for k, v in keys.items() if v)
    return f"\n[[rules]]\n{body}\n"


# (name, config body, key path the message must name)
BAD_CONFIGS = [
    ("unknown top-level section", "[colours]\nx = 1", "colours"),
    ("unknown daemon key", "[daemon2]\nx = 1", "daemon2"),
    ("unknown rule key", SQL_STORE + rule(retention='"10y"'), "rules[0].retention"),
    (
        "unknown store key",
        SQL_STORE.replace('kind = "sql"', 'kind = "sql"\nhost = "x"'),
        "stores.lims.host",
    ),
    ("bad duration words", SQL_STORE + rule(retain='"10 years"'), "rules[0].retain"),
    ("bad ISO duration", SQL_STORE + rule(retain='"P10X"'), "rules[0].retain"),
    ("zero retention", SQL_STORE + rule(retain='"0d"'), "rules[0].retain"),
    ("negative retention", SQL_STORE + rule(retain='"-5d"'), "rules[0].retain"),
    ("retention as number", SQL_STORE + rule(retain="10"), "rules[0].retain"),
    ("missing store", rule(), "rules[0].store"),
    ("duplicate rule names", SQL_STORE + rule() + rule(), "rules[1].name"),
    ("max_fraction above 1", SQL_STORE + rule(max_fraction="1.5"), "rules[0].max_fraction"),
    ("max_fraction zero", SQL_STORE + rule(max_fraction="0"), "rules[0].max_fraction"),
    ("max_items zero", SQL_STORE + rule(max_items="0"), "rules[0].max_items"),
    ("table with semicolon", SQL_STORE + rule(table='"results; DROP TABLE x"'), "rules[0].table"),
    ("table with quote", SQL_STORE + rule(table="'\"results\"'"), "rules[0].table"),
    ("column with space", SQL_STORE + rule(age_column='"validated at"'), "rules[0].age_column"),
    ("cascade with comment", SQL_STORE + rule(cascade='["x--y"]'), "rules[0].cascade[0]"),
    ("three-part table", SQL_STORE + rule(table='"a.b.c"'), "rules[0].table"),
    ("unknown action", SQL_STORE + rule(action='"purge"'), "rules[0].action"),
    ("delete without age_column", SQL_STORE + rule(age_column=""), "rules[0].age_column"),
    ("mask without columns", SQL_STORE + rule(action='"mask"'), "rules[0].columns"),
    ("drop without since", SQL_STORE + rule(action='"drop"', age_column=""), "rules[0].since"),
    ("glob on a sql rule", SQL_STORE + rule(glob='"*.csv"'), "rules[0].glob"),
    (
        "mask on files",
        FILES_STORE
        + '\n[[rules]]\nname = "x"\nstore = "transfer"\nglob = "*"\nretain = "1d"\naction = "mask"\n',
        "rules[0].action",
    ),
    (
        "glob escaping the root",
        FILES_STORE
        + '\n[[rules]]\nname = "x"\nstore = "transfer"\nglob = "../*"\nretain = "1d"\naction = "delete"\n',
        "rules[0].glob",
    ),
    ("relative files root", '[stores.t]\nkind = "files"\nroot = "srv"', "stores.t.root"),
    ("unknown store kind", '[stores.t]\nkind = "ftp"\nroot = "/srv"', "stores.t"),
    ("bad URL scheme", '[stores.t]\nkind = "sql"\nurl = "oracle://x"', "stores.t.url"),
    (
        "missing password file",
        SQL_STORE.replace('kind = "sql"', 'kind = "sql"\npassword_file = "/nonexistent/pw"'),
        "stores.lims.password_file",
    ),
    ("bad schedule", SQL_STORE + rule(schedule='"sometimes"'), "rules[0].schedule"),
    ("bad cron", SQL_STORE + rule(schedule='"61 * * * *"'), "rules[0].schedule"),
    (
        "hold on unknown rule",
        SQL_STORE + rule() + '\n[[holds]]\nrule = "nope"\nreason = "case 1"\n',
        "holds[0].rule",
    ),
    (
        "hold without reason",
        SQL_STORE + rule() + '\n[[holds]]\nrule = "results"\n',
        "holds[0].reason",
    ),
    (
        "hold with empty values",
        SQL_STORE
        + rule()
        + '\n[[holds]]\nrule = "results"\nwhere = { patient_id = [] }\nreason = "case 1"\n',
        "holds[0].where",
    ),
    (
        "hold with bad date",
        SQL_STORE
        + rule()
        + '\n[[holds]]\nrule = "results"\nreason = "case 1"\nuntil = "someday"\n',
        "holds[0].until",
    ),
    ("bad metrics listen", '[metrics]\nlisten = "9464"', "metrics.listen"),
    (
        "plain password in basic auth",
        '[metrics]\nbasic_auth_users = { p = "secret" }',
        "metrics.basic_auth_users",
    ),
    (
        "shred rule with a store",
        SQL_STORE + '\n[[rules]]\nname = "s"\nstore = "lims"\naction = "shred"\n',
        "rules[0].store",
    ),
    ("rule name with space", SQL_STORE + rule(name='"lab results"'), "rules[0].name"),
]


@pytest.mark.parametrize(("name", "body", "key"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_refused_naming_the_key(
    tmp_path: Path, name: str, body: str, key: str
) -> None:
    path = write_config(tmp_path, body)
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 2, result.stderr
    assert f"config.toml: {key}" in result.stderr, result.stderr
    assert result.stdout == ""


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, SQL_STORE + rule(retain='"10 years"', table='"a;b"', max_fraction="3")
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    keys = " ".join(caught.value.messages)
    for key in ("rules[0].retain", "rules[0].table", "rules[0].max_fraction"):
        assert key in keys


def test_config_with_inline_password_readable_by_others_is_refused(tmp_path: Path) -> None:
    body = '[stores.lims]\nkind = "sql"\nurl = "postgresql+psycopg://u:hunter2@db/lims"\n'
    path = write_config(tmp_path, body)
    os.chmod(path, 0o644)
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 2
    assert "readable by other users" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    os.chmod(path, 0o600)
    assert run_cli("check", "-c", str(path)).returncode == 0


def test_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    os.chmod(secret, 0o644)
    body = SQL_STORE.replace('kind = "sql"', f'kind = "sql"\npassword_file = "{secret}"')
    result = run_cli("check", "-c", str(write_config(tmp_path, body)))
    assert result.returncode == 2
    assert "stores.lims.password_file" in result.stderr
    assert "hunter2" not in result.stderr


def test_secret_values_never_echoed_in_errors(tmp_path: Path) -> None:
    body = '[stores.lims]\nkind = "sql"\nurl = 12345\npassword_credential = "x"\npassword_file = "/x"\n'
    result = run_cli("check", "-c", str(write_config(tmp_path, body)))
    assert result.returncode == 2
    assert "12345" not in result.stderr


def test_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("check", "-c", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "absent.toml" in result.stderr


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[daemon\n")
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 2
    assert "config.toml: not valid TOML" in result.stderr
