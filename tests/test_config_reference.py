"""The README's config reference and the JSON Schema come from the model and agree with it."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema

from retentiond.config.reference import END, START, render_reference
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_readme_reference_matches_the_model() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(START), readme.index(END) + len(END)
    assert readme[start:end] == render_reference(), (
        "README config reference is stale: regenerate with `python -m retentiond.config.reference`"
    )


def test_schema_command_validates_the_example_and_rejects_typos() -> None:
    result = run_cli("config", "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    # TOML dates are date objects; editors see them as strings.
    for rule in example["rules"]:
        if "since" in rule:
            rule["since"] = rule["since"].isoformat()
    for hold in example["holds"]:
        if "until" in hold:
            hold["until"] = hold["until"].isoformat()
    jsonschema.validate(example, schema)
    example["rules"][0]["retention"] = "10y"
    try:
        jsonschema.validate(example, schema)
    except jsonschema.ValidationError as exc:
        assert "retention" in exc.message
    else:
        raise AssertionError("an unknown key passed the schema")


def test_every_command_help_has_purpose_and_example() -> None:
    from retentiond.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():  # type: ignore[union-attr]
        text = command.format_help()
        assert "example:" in text, f"`retentiond {name} --help` has no example"
