"""`retentiond init`: create or upgrade the state database and the keys; safe to run again."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from retentiond import keystore
from retentiond.config import load_config
from retentiond.config.secrets import loose_permissions, redacted
from retentiond.errors import RetentiondError
from retentiond.fileutil import write_private_file
from retentiond.ledger.note import generate_signer_key
from retentiond.ledger.store import ensure_ledger
from retentiond.state.db import create_state_engine, state_url, upgrade


def _check_private(path: Path, what: str) -> None:
    if loose_permissions(path):
        raise RetentiondError(f"{what}: {path} is readable by other users; chmod 600 it")


def init(config_path: Path | None, out: TextIO) -> int:
    """Create or upgrade the state database, the ledger signing key and the key-encryption key."""
    cfg = load_config(config_path).config
    url = state_url(cfg)
    engine = create_state_engine(url)
    try:
        before, after = upgrade(engine)
        created_signer = write_private_file(
            cfg.ledger.signing_key_file, (generate_signer_key(cfg.ledger.origin) + "\n").encode()
        )
        created_kek = keystore.create_kek_file(cfg.keys.kek_file)
        _check_private(cfg.ledger.signing_key_file, "ledger.signing_key_file")
        _check_private(cfg.keys.kek_file, "keys.kek_file")
        with engine.begin() as conn:
            keystore.ensure_commitment_key(conn, cfg.keys.kek_file)
            ensure_ledger(conn, cfg.ledger.origin)
    finally:
        engine.dispose()
    state = (
        f"created at revision {after}"
        if before is None
        else (
            f"already at revision {after}" if before == after else f"upgraded {before} -> {after}"
        )
    )
    print(f"state database {redacted(url)}: {state}", file=out)
    for path, created, what in (
        (cfg.ledger.signing_key_file, created_signer, "ledger signing key"),
        (cfg.keys.kek_file, created_kek, "key-encryption key"),
    ):
        print(f"{what} {path}: {'created (mode 0600)' if created else 'exists, kept'}", file=out)
    return 0
