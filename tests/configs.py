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
