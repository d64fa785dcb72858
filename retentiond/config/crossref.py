"""Checks that span several keys: which keys each kind of rule needs or forbids, and references."""

from __future__ import annotations

from collections.abc import Iterator

from retentiond.config.model import Config, FilesStore, Rule, SqlStore

Problem = tuple[str, str]  # (key path, reason)

_SQL_ONLY = ("table", "schema_name", "age_column", "columns", "cascade")
_FILES_ONLY = ("glob", "exclude", "path", "age_source", "overwrite", "prune_empty_dirs")
_ALIASES = {"schema_name": "schema"}


def _set(rule: Rule, key: str) -> bool:
    return key in rule.model_fields_set


def _forbid(rule: Rule, where: str, keys: tuple[str, ...], why: str) -> Iterator[Problem]:
    for key in keys:
        if _set(rule, key):
            yield f"{where}.{_ALIASES.get(key, key)}", f"not allowed {why}"


def _require(rule: Rule, where: str, keys: tuple[str, ...], why: str) -> Iterator[Problem]:
    for key in keys:
        if getattr(rule, key) in (None, []):
            yield f"{where}.{_ALIASES.get(key, key)}", f"required {why}"


def _sql_rule(rule: Rule, where: str) -> Iterator[Problem]:
    yield from _forbid(rule, where, _FILES_ONLY, "for a rule on a sql store")
    if rule.action in ("delete", "mask"):
        yield from _require(
            rule, where, ("table", "age_column", "retain"), f"for action {rule.action}"
        )
        yield from _forbid(rule, where, ("schema_name", "since"), f"for action {rule.action}")
        if rule.action == "mask":
            yield from _require(rule, where, ("columns",), "for action mask")
            if rule.age_column in rule.columns:
                yield f"{where}.columns", "cannot mask the age column itself"
            yield from _forbid(rule, where, ("cascade",), "for action mask")
        else:
            yield from _forbid(rule, where, ("columns",), "for action delete")
    elif rule.action == "drop":
        yield from _require(rule, where, ("since", "retain"), "for action drop")
        if (rule.table is None) == (rule.schema_name is None):
            yield f"{where}.table", "give either table or schema for action drop"
        yield from _forbid(rule, where, ("age_column", "columns", "cascade"), "for action drop")


def _files_rule(rule: Rule, where: str) -> Iterator[Problem]:
    yield from _forbid(rule, where, _SQL_ONLY, "for a rule on a files store")
    if rule.action == "delete":
        yield from _require(rule, where, ("glob", "retain"), "for action delete on files")
        yield from _forbid(rule, where, ("since", "path"), "for action delete on files")
    elif rule.action == "drop":
        yield from _require(rule, where, ("path", "since", "retain"), "for action drop on files")
        yield from _forbid(rule, where, ("glob", "exclude", "age_source"), "for action drop")
    else:
        yield (
            f"{where}.action",
            f'"{rule.action}" does not apply to a files store (use delete or drop)',
        )


def _shred_rule(rule: Rule, where: str) -> Iterator[Problem]:
    yield from _forbid(
        rule, where, ("store", "retain", "since", *_SQL_ONLY, *_FILES_ONLY), "for action shred"
    )


def cross_check(config: Config) -> list[Problem]:
    """Every problem that involves more than one key, in file order."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, rule in enumerate(config.rules):
        where = f"rules[{index}]"
        if rule.name in seen:
            problems.append(
                (f"{where}.name", f'"{rule.name}" is already the name of rules[{seen[rule.name]}]')
            )
        seen.setdefault(rule.name, index)
        if rule.action == "shred":
            problems.extend(_shred_rule(rule, where))
            continue
        if rule.store is None:
            problems.append((f"{where}.store", "required for this action"))
            continue
        store = config.stores.get(rule.store)
        if store is None:
            known = ", ".join(sorted(config.stores)) or "none defined"
            problems.append((f"{where}.store", f'no store named "{rule.store}" (stores: {known})'))
        elif isinstance(store, SqlStore):
            problems.extend(_sql_rule(rule, where))
        elif isinstance(store, FilesStore):
            problems.extend(_files_rule(rule, where))
    for index, hold in enumerate(config.holds):
        where = f"holds[{index}]"
        if hold.rule is None:
            continue
        if hold.rule not in seen:
            problems.append((f"{where}.rule", f'no rule named "{hold.rule}"'))
            continue
        rule = config.rules[seen[hold.rule]]
        store = config.stores.get(rule.store or "")
        if hold.where is not None and not isinstance(store, SqlStore):
            problems.append((f"{where}.where", f'rule "{hold.rule}" is not a rule on a sql store'))
        if hold.path is not None and not isinstance(store, FilesStore):
            problems.append((f"{where}.path", f'rule "{hold.rule}" is not a rule on a files store'))
    return problems
