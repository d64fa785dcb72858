"""Build small config files for tests."""

from __future__ import annotations

import os
from pathlib import Path


def write_config(
    directory: Path, body: str, *, state_url: str | None = None, name: str = "config.toml"
) -> Path:
    """Write a config with [daemon], [ledger] and [keys] pointing inside `directory`, then `body`."""
    directory.mkdir(parents=True, exist_ok=True)
    state = state_url or f"sqlite:///{directory / 'state.db'}"
    text = f"""[daemon]
state_url = "{state}"

[ledger]
origin = "test.example.org/retentiond"
signing_key_file = "{directory / "ledger.key"}"

[keys]
kek_file = "{directory / "kek"}"

{body}
"""
    path = directory / name
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


# -- pieces of a config body: the lab's results table and its retention rule ----------------------


def lims_store(url: str) -> str:
    """The `lims` SQL store: the lab's database at `url`."""
    return f"""
[stores.lims]
kind = "sql"
url = "{url}"
"""


def max_fraction_line(max_fraction: float | None) -> str:
    """A rule's `max_fraction` guard; nothing leaves the action's default."""
    return "" if max_fraction is None else f"max_fraction = {max_fraction}\n"


def lab_results_rule(*, table: str = "results", max_fraction: float | None = None) -> str:
    """The `lab-results` rule on `lims`: delete rows of `table` validated over 30 days ago."""
    return f"""
[[rules]]
name = "lab-results"
store = "lims"
table = "{table}"
age_column = "validated_at"
retain = "30d"
action = "delete"
{max_fraction_line(max_fraction)}"""


def patient_hold(patient_id: int) -> str:
    """A hold that keeps every `lab-results` row of one patient."""
    return f"""
[[holds]]
rule = "lab-results"
where = {{ patient_id = [{patient_id}] }}
reason = "court case 2026-117"
"""
