"""The fast reads behind `ledger verify`: every entry reaches the hash as 0x00 || its exact bytes.

The state database prefixes and converts entries in SQL, an export is cut into lines in chunks; both
must hand over exactly the bytes that were appended (non-ASCII text included), line endings and
chunk boundaries must not move a byte, and what verifies must still verify.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from retentiond.commands import ledger as ledger_commands
from retentiond.errors import VerificationError
from retentiond.ledger.signing import checkpoint_now
from retentiond.ledger.store import append_entry, iter_entries, leaf_input_batches
from retentiond.ledger.verify import export_leaf_inputs
from retentiond.state.models import ledger_entry
from tests.ledger_support import EXPORT_CONTENTS, Workspace, build_workspace

# Not personal data: a reason written by an administrator, in their own language.
REASONS = ["Löschfrist für Laborbefunde: 10 Jahre", "délai légal — dossier 2026/117", "保存期限"]


@pytest.fixture(params=["sqlite", "postgresql"])
def workspace(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    url = None if request.param == "sqlite" else str(request.getfixturevalue("pg_database"))
    space = build_workspace(tmp_path, url)
    with space.engine.begin() as conn:
        for reason in REASONS:
            append_entry(conn, {"kind": "config", "reason": reason})
    checkpoint_now(space.engine, space.key_file)
    yield space
    space.engine.dispose()


def test_the_database_hands_over_each_entry_prefixed_and_unchanged(workspace: Workspace) -> None:
    with workspace.engine.connect() as conn:
        entries = [data for _, data, _ in iter_entries(conn)]
        fast = [piece for batch in leaf_input_batches(conn, 0, None) for piece in batch]
        window = [piece for batch in leaf_input_batches(conn, 3, 12) for piece in batch]
    assert len(entries) == 13
    assert fast == [b"\x00" + data for data in entries]
    assert window == fast[3:12]
    assert REASONS[2].encode() in fast[-1]


def test_a_ledger_with_non_ascii_entries_verifies_and_an_edit_of_them_does_not(
    workspace: Workspace,
) -> None:
    assert "OK: 13 entries, 4 signed checkpoints" in workspace.verify()
    with workspace.engine.begin() as conn:
        data = [d for _, d, _ in iter_entries(conn)][11]
        forged = data.decode().replace("délai", "delai")
        conn.execute(update(ledger_entry).where(ledger_entry.c.seq == 11).values(entry=forged))
    with pytest.raises(VerificationError) as caught:
        workspace.verify()
    assert caught.value.exit_code == 3
    assert "seq 11: entry does not match its stored leaf hash" in str(caught.value)


@pytest.mark.parametrize("content", EXPORT_CONTENTS)
def test_export_lines_survive_every_chunk_boundary(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "entries.jsonl"
    path.write_bytes(content)
    # What a line reader sees: lines without their newline, the last one may lack it.
    expected = [b"\x00" + line.removesuffix(b"\n") for line in io.BytesIO(content).readlines()]
    for chunk in range(1, len(content) + 2):
        pieces = [piece for batch in export_leaf_inputs(path, chunk) for piece in batch]
        assert pieces == expected, chunk


def test_an_export_without_its_last_newline_verifies_and_a_blank_line_does_not(
    tmp_path: Path,
) -> None:
    space = build_workspace(tmp_path / "ws")
    space.export(tmp_path / "audit")
    space.engine.dispose()
    audit = tmp_path / "audit"
    entries = audit / "entries.jsonl"
    entries.write_bytes(entries.read_bytes().removesuffix(b"\n"))
    out = io.StringIO()
    assert ledger_commands.verify(None, audit, out) == 0
    assert "OK: 10 entries" in out.getvalue()
    blank = shutil.copytree(audit, tmp_path / "blank")
    (blank / "entries.jsonl").write_bytes((audit / "entries.jsonl").read_bytes() + b"\n\n")
    with pytest.raises(VerificationError, match="seq 10: not covered by the signed checkpoint"):
        ledger_commands.verify(None, blank, io.StringIO())
