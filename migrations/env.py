"""Alembic environment: the URL comes from `retentiond init`, `-x state_url=...` or the config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from retentiond.state.models import metadata

config = context.config


def _url() -> str:
    given = config.attributes.get("state_url") or context.get_x_argument(as_dictionary=True).get(
        "state_url"
    )
    if given:
        return str(given)
    from retentiond.config import load_config
    from retentiond.state.db import state_url

    return state_url(load_config(None).config).render_as_string(hide_password=False)


def run_migrations() -> None:
    """Run migrations on a live connection (offline SQL generation is not supported)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(
        {"sqlalchemy.url": _url()}, prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
