"""Load the config: TOML file, then `RETENTIOND_` environment overrides, then every check.

All problems are collected and raised together as one ConfigError whose lines read
`config.toml: rules[2].retain: "10 years" is not a duration (use 10y or P10Y)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from retentiond.config.crossref import cross_check
from retentiond.config.model import Config, Rule, SqlStore
from retentiond.config.secrets import loose_permissions, url_has_password
from retentiond.errors import ConfigError

DEFAULT_PATH = Path("/etc/retentiond/config.toml")
ENV_PATH = "RETENTIOND_CONFIG"
_STORE_KINDS = {"sql", "files"}


class _EnvConfig(Config, BaseSettings):
    """The config model with `RETENTIOND_SECTION__KEY` environment variables on top of the file."""

    model_config = SettingsConfigDict(
        env_prefix="RETENTIOND_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file; no .env files, no secrets directory magic.
        return (env_settings, init_settings)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where it came from."""

    path: Path
    config: Config
    digest: str  # sha256 of the file's bytes, recorded in `config` ledger entries


def config_path(explicit: Path | str | None) -> Path:
    """The config path: the argument, else $RETENTIOND_CONFIG, else /etc/retentiond/config.toml."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(ENV_PATH) or DEFAULT_PATH)


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        elif i == 2 and loc[0] == "stores" and item in _STORE_KINDS:
            continue  # the discriminator's tag is not a key the admin wrote
        elif re.fullmatch(r"[A-Za-z0-9_-]+", str(item)):
            parts.append(str(item))
        else:
            # Quoted as TOML quotes it, so that a key with a newline or a dot stays on one line.
            parts.append(json.dumps(str(item)))
    return ".".join(parts) or "(top level)"


def _reason(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return 'kind must be "sql" or "files"'
    if kind == "union_tag_not_found":
        return 'kind is missing (use "sql" or "files")'
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    # Input values are deliberately not echoed: they may be passwords or personal data.
    return message


def one_line(message: str) -> str:
    """The message with control characters escaped, so that each problem stays on one line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], message)


def render_validation(path: Path, exc: ValidationError) -> list[str]:
    """One `file: key.path: reason` line per pydantic error."""
    return [
        one_line(f"{path.name}: {_key_path(tuple(e['loc']))}: {_reason(e)}") for e in exc.errors()
    ]


def _secret_problems(path: Path, config: Config, raw: bytes) -> list[str]:
    problems: list[str] = []
    inline = [
        f"stores.{n}.url"
        for n, s in config.stores.items()
        if isinstance(s, SqlStore) and url_has_password(s.url)
    ]
    if url_has_password(config.daemon.state_url):
        inline.append("daemon.state_url")
    if config.metrics.basic_auth_users:
        inline.append("metrics.basic_auth_users")
    if inline and loose_permissions(path):
        problems.append(
            f"{path.name}: {inline[0]}: the file holds a secret and is readable by other users; "
            "chmod 600 it or move the secret to a password_file"
        )
    files: list[tuple[str, Path | None]] = [
        ("daemon.state_password_file", config.daemon.state_password_file)
    ]
    files += [
        (f"stores.{n}.password_file", s.password_file)
        for n, s in config.stores.items()
        if isinstance(s, SqlStore)
    ]
    for key, secret_file in files:
        if secret_file is None:
            continue
        if not secret_file.is_file():
            problems.append(f"{path.name}: {key}: {secret_file} does not exist or is not a file")
        elif loose_permissions(secret_file):
            problems.append(
                f"{path.name}: {key}: {secret_file} is readable by other users; chmod 600 it"
            )
    return problems


def load_config(explicit: Path | str | None = None) -> LoadedConfig:
    """Read, override from the environment, and check a config file; raises ConfigError."""
    path = config_path(explicit)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{path.name}: the file is not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path.name}: not valid TOML: {exc}"]) from None
    try:
        config: Config = _EnvConfig(**data)
    except ValidationError as exc:
        raise ConfigError(render_validation(path, exc)) from None
    except SettingsError as exc:
        # The message names the field; the value (maybe a secret) is not repeated.
        raise ConfigError([f"environment RETENTIOND_*: {exc}"]) from None
    problems = [f"{path.name}: {key}: {reason}" for key, reason in cross_check(config)]
    problems += _secret_problems(path, config, raw)
    if problems:
        raise ConfigError(one_line(p) for p in problems)
    # Downstream code works on the plain model; the settings subclass only did the loading.
    plain = Config.model_validate(config.model_dump(by_alias=True, exclude_unset=True))
    return LoadedConfig(path=path, config=plain, digest=hashlib.sha256(raw).hexdigest())


def rule_hash(rule: Rule) -> str:
    """A stable hash of a rule's settings, written in every ledger entry of the rule."""
    settings = rule.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
