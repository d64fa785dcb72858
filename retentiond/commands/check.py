"""`retentiond check [--connect]`: validate the config, optionally against the live stores."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TextIO

from sqlalchemy import create_engine

from retentiond.config import Config, FilesStore, LoadedConfig, SqlStore, load_config
from retentiond.config.secrets import redacted, store_url
from retentiond.errors import ConfigError, RetentiondError
from retentiond.stores.sql.catalog import rule_problems


def _sql_store_problems(config: Config, name: str, store: SqlStore) -> list[tuple[str, str]]:
    url = store_url(store, name)
    connect_args = {"connect_timeout": 10} if url.get_backend_name() != "sqlite" else {}
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        return [(f"stores.{name}.url", f"SQLite database {url.database} does not exist")]
    engine = create_engine(url, connect_args=connect_args)
    problems: list[tuple[str, str]] = []
    try:
        with engine.connect() as conn:
            for index, rule in enumerate(config.rules):
                if rule.store != name:
                    continue
                holds = [
                    (f"holds[{i}]", h)
                    for i, h in enumerate(config.holds)
                    if h.where
                    and (h.rule == rule.name or (h.rule is None and h.table == rule.table))
                ]
                problems += rule_problems(conn, rule, f"rules[{index}]", holds)
    except Exception as exc:
        raise RetentiondError(
            f"stores.{name}: cannot connect to {redacted(url)} ({type(exc).__name__})"
        ) from None
    finally:
        engine.dispose()
    return problems


def _files_store_problems(name: str, store: FilesStore) -> list[tuple[str, str]]:
    try:
        info = os.lstat(store.root)
    except OSError as exc:
        return [(f"stores.{name}.root", f"{store.root}: {exc.strerror}")]
    if stat.S_ISLNK(info.st_mode):
        return [
            (f"stores.{name}.root", f"{store.root} is a symbolic link; name the real directory")
        ]
    if not stat.S_ISDIR(info.st_mode):
        return [(f"stores.{name}.root", f"{store.root} is not a directory")]
    return []


def connect_problems(loaded: LoadedConfig) -> list[str]:
    """Every problem found by reaching the stores: missing tables, columns, roots."""
    problems: list[tuple[str, str]] = []
    for name, store in loaded.config.stores.items():
        if isinstance(store, SqlStore):
            problems += _sql_store_problems(loaded.config, name, store)
        else:
            problems += _files_store_problems(name, store)
    return [f"{loaded.path.name}: {key}: {reason}" for key, reason in problems]


def check(config_path: Path | None, connect: bool, out: TextIO) -> int:
    """Validate the config (and with `connect`, every store, table and column); exit 2 if bad."""
    loaded = load_config(config_path)
    if connect:
        problems = connect_problems(loaded)
        if problems:
            raise ConfigError(problems)
    cfg = loaded.config
    what = f"{len(cfg.stores)} stores, {len(cfg.rules)} rules, {len(cfg.holds)} holds"
    reached = "; every store reached, every table and column found" if connect else ""
    print(f"{loaded.path}: configuration is valid ({what}){reached}", file=out)
    return 0


def schema(out: TextIO) -> int:
    """Print the JSON Schema of the config file (generated from the same models that load it)."""
    from retentiond.config.reference import json_schema

    print(json.dumps(json_schema(), indent=2), file=out)
    return 0
