"""Bind a rule to its store: pick the target implementation by store kind and action."""

from __future__ import annotations

from retentiond.config.model import FilesStore, SqlStore
from retentiond.engine import Target, TargetContext


def make_target(context: TargetContext) -> Target:
    """The target that applies `context.rule` to its store."""
    if context.rule.action == "shred":
        from retentiond.stores.sealed import make_shred_target

        return make_shred_target(context)
    if isinstance(context.store, SqlStore):
        from retentiond.stores.sql.target import make_sql_target

        return make_sql_target(context)
    if isinstance(context.store, FilesStore):
        from retentiond.stores.files.target import make_files_target

        return make_files_target(context)
    raise TypeError(f"no target for rule {context.rule.name}")
