"""Hostile config files: random TOML structures and values, mangled bytes, oversized inputs.

Every outcome is a loaded config or a ConfigError whose lines all start with the file name and a key
path; never another exception, and nothing is deleted. The duration and schedule parsers either
parse or raise their own error, and what they accept behaves (round trips, a next slot exists).
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retentiond.config.load import load_config
from retentiond.duration import Duration, DurationError, parse_duration
from retentiond.errors import ConfigError
from retentiond.schedule import ScheduleError, parse_schedule
from tests.configs import write_config
from tests.fault_support import check, cli, no_traceback, record
from tests.files_support import seed, tree

EXAMPLES = int(os.environ.get("RETENTIOND_TEST_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ROOT = Path(__file__).resolve().parent.parent
# A key path and a reason; or, for a file that is not TOML at all, the whole-file reason.
LINE = re.compile(
    r"^config\.toml: (not valid TOML: [^\n]+|the file is not UTF-8 text|[^\n]+?: [^\n]+)$"
)

# -- a small TOML writer: every value inline, so any nesting the strategy builds is valid TOML ----


def _string(value: str) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("\x7f", "\\u007f")


def _key(key: str) -> str:
    return key if re.match(r"^[A-Za-z0-9_-]+$", key) else _string(key)


def toml_value(value: Any) -> str:
    """One TOML value written inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(data: dict[str, Any]) -> str:
    """A TOML document of top-level keys with inline values."""
    return "".join(f"{_key(k)} = {toml_value(v)}\n" for k, v in data.items())


# -- strategies: mostly the real keys, with values of every type, and some strangers ------------

KNOWN = {
    "daemon": [
        "state_url",
        "state_password_file",
        "schedule",
        "max_parallel_rules",
        "batch_budget_ms",
        "lock_timeout_ms",
        "statement_timeout_ms",
        "log_level",
    ],
    "metrics": ["enabled", "listen", "basic_auth_users", "tls_cert_file", "tls_key_file"],
    "ledger": ["origin", "signing_key_file", "checkpoint_interval"],
    "keys": ["kek_file"],
    "store": ["kind", "url", "password_file", "password_credential", "root"],
    "rule": [
        "name",
        "store",
        "action",
        "retain",
        "table",
        "schema",
        "age_column",
        "columns",
        "cascade",
        "since",
        "glob",
        "exclude",
        "path",
        "age_source",
        "overwrite",
        "prune_empty_dirs",
        "schedule",
        "legal_basis",
        "max_fraction",
        "max_items",
        "enabled",
    ],
    "hold": ["rule", "table", "where", "path", "reason", "until"],
}
TRICKY = [
    "30d",
    "10y",
    "P10Y",
    "P",
    "PT",
    "every 1h",
    "0 3 * * *",
    "0 0 30 2 *",
    "sql",
    "files",
    "delete",
    "mask",
    "drop",
    "shred",
    "public.results",
    "results; DROP TABLE results",
    '"x"',
    "a.b.c",
    "..",
    "../../etc",
    "/etc/passwd",
    "**/*.csv",
    "lims",
    "transfer",
    "",
    " ",
    "\x00",
    "\n",
    "é" * 70,
    "sqlite:///x.db",
    "postgresql+psycopg://u:p@h/db",
    "127.0.0.1:9464",
    "$2b$12$" + "a" * 53,
    "9" * 30,
    "-1",
    "1e309",
    "mtime",
    "2026-11-01",
]
scalars = st.one_of(
    st.sampled_from(TRICKY),
    st.text(max_size=30),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([UTC])),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(TRICKY), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=12,
)


def section(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A table made mostly of the section's real keys, with random values."""
    key = st.one_of(st.sampled_from(keys), st.sampled_from(keys), st.text(max_size=10))
    value = st.one_of(scalars, values, st.sampled_from(TRICKY))
    return st.dictionaries(key, value, max_size=len(keys))


names = st.one_of(st.sampled_from(["lims", "transfer", "x"]), st.text(max_size=12))
documents = st.fixed_dictionaries(
    {},
    optional={
        "daemon": section(KNOWN["daemon"]),
        "metrics": section(KNOWN["metrics"]),
        "ledger": section(KNOWN["ledger"]),
        "keys": section(KNOWN["keys"]),
        "stores": st.one_of(st.dictionaries(names, section(KNOWN["store"]), max_size=3), values),
        "rules": st.one_of(st.lists(section(KNOWN["rule"]), max_size=4), values),
        "holds": st.one_of(st.lists(section(KNOWN["hold"]), max_size=3), values),
        "extra": values,
    },
)


def _outcome(path: Path) -> str:
    """Load `path`; 'ok' or 'error', asserting the error's shape (anything else propagates)."""
    try:
        load_config(path)
    except ConfigError as exc:
        bad = [m for m in exc.messages if not LINE.match(m)]
        check("config fuzz", bool(exc.messages) and not bad, bad or "an empty ConfigError")
        return "error"
    return "ok"


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """Expired files that must outlive every hostile config."""
    root = tmp_path / "canary"
    for i in range(5):
        seed(root, f"x/{i}.csv", 400)
    return root


@FUZZ
@given(document=documents)
def test_random_toml_structures_load_or_fail_with_a_located_error(
    document: dict[str, Any], tmp_path: Path, canary: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml_document(document), encoding="utf-8")
    os.chmod(path, 0o600)
    _outcome(path)
    record("config fuzz", bad_inputs=1)
    assert len(tree(canary)) == 6


EXAMPLE = (ROOT / "config.example.toml").read_bytes()


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, len(EXAMPLE) - 1),
            st.sampled_from(["flip", "cut", "insert"]),
            st.binary(min_size=1, max_size=6),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_mangled_bytes_of_the_example_config_never_crash_the_loader(
    edits: list[tuple[int, str, bytes]], tmp_path: Path
) -> None:
    data = bytearray(EXAMPLE)
    for at, how, blob in edits:
        at = min(at, len(data) - 1)
        if how == "flip":
            data[at] ^= blob[0] or 1
        elif how == "cut":
            del data[at : at + len(blob)]
        else:
            data[at:at] = blob
    path = tmp_path / "config.toml"
    path.write_bytes(bytes(data))
    os.chmod(path, 0o600)
    _outcome(path)
    record("config fuzz", bad_inputs=1)


# -- durations and schedules -------------------------------------------------------------------

durations_text = st.one_of(
    st.text(max_size=20),
    st.from_regex(r"\A\s*\d{1,8}\s*(s|m|h|d|w|y|mo|x)?\s*\Z"),
    st.from_regex(
        r"\AP(\d{0,4}Y)?(\d{0,4}M)?(\d{0,4}W)?(\d{0,4}D)?(T(\d{0,5}H)?(\d{0,5}M)?(\d{0,6}S)?)?\Z"
    ),
)


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(text=durations_text)
def test_durations_parse_or_fail_cleanly_and_round_trip(text: str) -> None:
    record("durations", bad_inputs=1)
    try:
        parsed = parse_duration(text)
    except DurationError:
        return
    again = parse_duration(str(parsed))
    check("durations", isinstance(parsed, Duration) and again == parsed, (text, parsed, again))
    moment = datetime(2026, 6, 15, tzinfo=UTC)
    assert parsed.subtract_from(moment) <= moment <= parsed.add_to(moment)


cron_field = st.one_of(
    st.sampled_from(
        ["*", "*/5", "0", "30", "31", "59", "60", "1-5", "5-1", "*/0", "L", "?", "2,30"]
    ),
    st.integers(-2, 70).map(str),
    st.text(alphabet="0123456789*/,-LW#?", min_size=1, max_size=5),
)
schedules_text = st.one_of(
    st.text(max_size=25),
    st.lists(cron_field, min_size=4, max_size=6).map(" ".join),
    st.builds(lambda d: f"every {d}", durations_text),
)


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(text=schedules_text)
def test_schedules_parse_or_fail_cleanly_and_always_have_a_next_slot(text: str) -> None:
    record("schedules", bad_inputs=1)
    try:
        parsed = parse_schedule(text)
    except ScheduleError:
        return
    moment = datetime(2026, 6, 15, 12, tzinfo=UTC)
    # What parses must schedule: a next slot strictly later, never an exception in the daemon.
    check("schedules", parsed.next_after(moment) > moment, text)


def test_a_cron_expression_naming_no_real_date_is_refused() -> None:
    with pytest.raises(ScheduleError, match="never matches"):
        parse_schedule("0 0 30 2 *")
    assert parse_schedule("0 0 29 2 *").cron == "0 0 29 2 *"


# -- through the command line: bad configs change nothing ---------------------------------------

BAD_BODIES = [
    'rules = "x"',
    '[[rules]]\nname = "a b"\nstore = "transfer"\nglob = "**"\nretain = "30d"\naction = "delete"',
    '[[rules]]\nname = "r"\nstore = "transfer"\nglob = "../**"\nretain = "1s"\naction = "delete"',
    '[[rules]]\nname = "r"\nstore = "transfer"\nglob = "**"\nretain = "0d"\naction = "delete"',
    '[[rules]]\nname = "r"\nstore = "transfer"\nglob = "**"\nretain = "30d"\naction = "delete"\n'
    'schedule = "0 0 30 2 *"',
    '[[rules]]\nname = "r"\nstore = "transfer"\nglob = "/etc/**"\nretain = "1d"\naction = "delete"',
    '[[rules]]\nname = "r"\nstore = "transfer"\nglob = "**"\nretain = "1d"\naction = "mask"',
    "[daemon\n",
    "\xff\xfe",
]


@pytest.mark.parametrize("bad", BAD_BODIES)
def test_apply_with_a_bad_config_exits_2_and_deletes_nothing(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "transfer"
    for i in range(5):
        seed(root, f"e{i}.csv", 400)
    store = f'[stores.transfer]\nkind = "files"\nroot = "{root}"\n'
    config = write_config(tmp_path, store + bad)
    if bad == "\xff\xfe":
        config.write_bytes(config.read_bytes() + b"\xff\xfe")
    done = cli(config, "apply")
    record("config cli", bad_inputs=1)
    check("config cli", done.returncode == 2 and no_traceback(done), done.stderr)
    lines = [line.removeprefix("retentiond: ") for line in done.stderr.splitlines() if line]
    check("config cli", all(line.startswith("config.toml: ") for line in lines), lines)
    check("config cli", len(tree(root)) == 5, "a bad config deleted files")


# -- oversized inputs --------------------------------------------------------------------------


def test_a_50_mb_config_is_refused_or_loaded_without_harm(tmp_path: Path) -> None:
    root = tmp_path / "transfer"
    for i in range(3):
        seed(root, f"e{i}.csv", 400)
    filler = "# " + "x" * 1022 + "\n"
    body = f'[stores.transfer]\nkind = "files"\nroot = "{root}"\n' + filler * (50 * 1024)
    body += 'legal = "' + "y" * 1_000_000 + '"\n'
    config = write_config(tmp_path, body)
    assert config.stat().st_size > 50 * 1024 * 1024
    done = cli(config, "apply", timeout=120)
    record("oversized", bad_inputs=1)
    check("oversized", done.returncode == 2 and no_traceback(done), done.stderr[-2000:])
    check("oversized", len(done.stderr) < 10_000, "the error repeats the input")
    check("oversized", len(tree(root)) == 3, "files deleted")


def test_a_very_long_rule_name_is_a_located_error(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        '[[rules]]\nname = "' + "r" * 100_000 + '"\naction = "shred"\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    record("oversized", bad_inputs=1)
    [line] = caught.value.messages
    check("oversized", line.startswith("config.toml: rules[0].name: ") and len(line) < 500, line)
