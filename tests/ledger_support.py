"""A small ledger built the way the daemon builds one, for the ledger tests to verify and tamper with."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from retentiond.commands import ledger as ledger_commands
from retentiond.commands.init import init
from retentiond.ledger.signing import checkpoint_now
from retentiond.ledger.store import append_entry
from retentiond.state.db import create_state_engine
from tests.configs import write_config

# Three runs, each followed by its checkpoint, as the daemon does: sizes 4, 7 and 10.
RUNS = (4, 3, 3)

# Export files that test how lines are cut: empty, blank lines, no last newline, CRLF, non-ASCII,
# and lines longer than the smallest reads.
EXPORT_CONTENTS = [
    b"",
    b"\n",
    b"a\n",
    b"a",
    b"ab\ncd\n",
    b"ab\ncd",
    b"ab\n\ncd\n\n",
    b"x\ny\nz\n",
    b"\xc3\xa9t\xc3\xa9\nline\r\n" + b"x" * 40 + b"\n",
    b"\xc3\xa9t\xc3\xa9\nline\r\n" + b"x" * 40 + b"\n" + b"e\n" * 9 + b"last",
]


@dataclass
class Workspace:
    """A configured, initialised ledger: its config file, state engine and signing key file."""

    config: Path
    engine: Engine
    key_file: Path
    directory: Path

    def verify(self) -> str:
        """`retentiond ledger verify`; returns its output, raises VerificationError on tampering."""
        out = io.StringIO()
        assert ledger_commands.verify(self.config, None, out) == 0
        return out.getvalue()

    def export(self, directory: Path) -> str:
        """`retentiond ledger export DIR`; returns its output."""
        out = io.StringIO()
        assert ledger_commands.export(self.config, directory, out) == 0
        return out.getvalue()


def entry_fields(seq: int) -> dict[str, object]:
    """What the runner records: purges mostly, a refusal and a hold now and then."""
    if seq % 5 == 3:
        return {"kind": "refused", "rule": "lab-results", "reason": "would delete 62% of the table"}
    if seq % 5 == 4:
        return {"kind": "hold", "event": "added", "hold_id": seq, "reason": "court case 2026-117"}
    return {
        "kind": "purge",
        "rule": "lab-results",
        "store": "lims",
        "target": "public.results",
        "count": 100 + seq,
        "bytes": 4096 * (seq + 1),
        "method": "pk-ranges",
    }


def build_workspace(directory: Path, state_url: str | None = None) -> Workspace:
    """Init a workspace and write RUNS runs of entries, each followed by a signed checkpoint."""
    config = write_config(directory, "", state_url=state_url)
    assert init(config, io.StringIO()) == 0
    url = state_url or f"sqlite:///{directory / 'state.db'}"
    engine = create_state_engine(url)
    key_file = directory / "ledger.key"
    seq = 0
    for size in RUNS:
        with engine.begin() as conn:
            for _ in range(size):
                assert append_entry(conn, entry_fields(seq)) == seq
                seq += 1
        checkpoint_now(engine, key_file)
    return Workspace(config=config, engine=engine, key_file=key_file, directory=directory)
