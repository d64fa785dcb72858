"""What several commands share: loading the config and opening the state database."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from retentiond.config import Config, LoadedConfig, load_config
from retentiond.errors import RetentiondError
from retentiond.state.db import SCHEMA_REVISION, create_state_engine, state_url, stored_revision


def open_state(config_path: Path | None) -> tuple[LoadedConfig, Engine]:
    """Load the config and connect to a state database that `init` has brought up to date."""
    loaded = load_config(config_path)
    engine = create_state_engine(state_url(loaded.config))
    try:
        revision = stored_revision(engine)
    except Exception as exc:
        raise RetentiondError(f"cannot reach the state database: {type(exc).__name__}") from None
    if revision != SCHEMA_REVISION:
        raise RetentiondError(
            "the state database is not initialised or is out of date; run `retentiond init`"
        )
    return loaded, engine


def sign_checkpoint(engine: Engine, config: Config) -> str:
    """Sign and store a checkpoint of the ledger as it is now; returns the signed note."""
    from retentiond.ledger.signing import checkpoint_now

    # Also keeps a copy beside the signing key, which is how `verify` sees a checkpoint rollback.
    return checkpoint_now(engine, config.ledger.signing_key_file)
