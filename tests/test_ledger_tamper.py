"""Every way an insider could tamper with the ledger is caught (exit 3), in the database and in an export.

The insider has write access to the state database (or to an export), not to the signing key. Each
case starts from a fresh ledger of three runs (checkpoints at sizes 4, 7 and 10) that verifies, and
checks that `ledger verify` fails and says where.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, delete, insert, select, update

from retentiond.commands import ledger as ledger_commands
from retentiond.errors import VerificationError
from retentiond.ledger.fanout import Fanout
from retentiond.ledger.merkle import CompactRange, leaf_hash
from retentiond.ledger.note import (
    Checkpoint,
    generate_signer_key,
    parse_checkpoint,
    sign_checkpoint,
    verifier_key,
)
from retentiond.ledger.signing import (
    checkpoint_now,
    key_verifier,
    load_signer_key,
    local_copy_path,
    read_local_copy,
)
from retentiond.ledger.store import append_entry, iter_entries, list_checkpoints
from retentiond.ledger.verify import Report, verify_export, verify_state
from retentiond.state.models import ledger_checkpoint, ledger_entry, ledger_head
from tests.conftest import run_cli
from tests.ledger_support import Workspace, build_workspace


@pytest.fixture(params=["sqlite", "postgresql"])
def workspace(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    url = None if request.param == "sqlite" else str(request.getfixturevalue("pg_database"))
    space = build_workspace(tmp_path, url)
    yield space
    space.engine.dispose()


def entries(conn: Connection) -> list[bytes]:
    return [data for _, data, _ in iter_entries(conn)]


def set_entry(conn: Connection, seq: int, data: bytes, *, fix_leaf: bool) -> None:
    values: dict[str, object] = {"entry": data.decode()}
    if fix_leaf:
        values["leaf_hash"] = leaf_hash(data)
    conn.execute(update(ledger_entry).where(ledger_entry.c.seq == seq).values(**values))


def fix_head(conn: Connection) -> None:
    """What a careful insider does after editing entries: make the head agree with them."""
    edge = CompactRange()
    edge.extend(leaf_hash(data) for data in entries(conn))
    conn.execute(
        update(ledger_head).values(
            tree_size=edge.size, root_hash=edge.root(), frontier=edge.to_bytes()
        )
    )


def change_a_field(conn: Connection) -> None:
    data = entries(conn)[2]
    set_entry(conn, 2, data.replace(b'"count":102', b'"count":2'), fix_leaf=False)


def change_a_field_and_cover_it(conn: Connection) -> None:
    data = entries(conn)[2]
    set_entry(conn, 2, data.replace(b'"count":102', b'"count":2'), fix_leaf=True)
    fix_head(conn)


def delete_an_entry(conn: Connection) -> None:
    conn.execute(delete(ledger_entry).where(ledger_entry.c.seq == 5))


def delete_an_entry_and_renumber(conn: Connection) -> None:
    conn.execute(delete(ledger_entry).where(ledger_entry.c.seq == 5))
    for seq in range(6, 10):
        conn.execute(update(ledger_entry).where(ledger_entry.c.seq == seq).values(seq=seq - 1))
    fix_head(conn)


def swap_two_entries(conn: Connection) -> None:
    rows = entries(conn)
    set_entry(conn, 5, rows[6], fix_leaf=True)
    set_entry(conn, 6, rows[5], fix_leaf=True)
    fix_head(conn)


def insert_an_entry(conn: Connection) -> None:
    rows = entries(conn)
    for seq in range(9, 4, -1):
        conn.execute(update(ledger_entry).where(ledger_entry.c.seq == seq).values(seq=seq + 1))
    recorded = conn.execute(select(ledger_entry.c.recorded_at)).scalars().first()
    forged = rows[5]  # a well-formed entry, as the one at seq 5 would be
    conn.execute(
        insert(ledger_entry).values(
            seq=5, entry=forged.decode(), leaf_hash=leaf_hash(forged), recorded_at=recorded
        )
    )
    fix_head(conn)


def truncate_the_tail(conn: Connection) -> None:
    conn.execute(delete(ledger_entry).where(ledger_entry.c.seq >= 7))
    fix_head(conn)


def replace_a_checkpoint(conn: Connection) -> None:
    newest = list_checkpoints(conn)[-1]
    other = generate_signer_key("test.example.org/retentiond")
    forged = sign_checkpoint(Checkpoint("test.example.org/retentiond", 10, newest.root_hash), other)
    conn.execute(
        update(ledger_checkpoint).where(ledger_checkpoint.c.id == newest.id).values(note=forged)
    )


def roll_the_checkpoints_back(conn: Connection) -> None:
    newest = list_checkpoints(conn)[-1]
    conn.execute(delete(ledger_checkpoint).where(ledger_checkpoint.c.id == newest.id))


def roll_back_and_rewrite_the_unsigned_tail(conn: Connection) -> None:
    newest = list_checkpoints(conn)[-1]
    conn.execute(delete(ledger_checkpoint).where(ledger_checkpoint.c.id == newest.id))
    conn.execute(delete(ledger_entry).where(ledger_entry.c.seq >= 7))
    fix_head(conn)


def edit_the_head(conn: Connection) -> None:
    conn.execute(update(ledger_head).values(root_hash=b"\x00" * 32))


STATE_CASES: list[tuple[Callable[[Connection], None], str]] = [
    (change_a_field, "seq 2: entry does not match its stored leaf hash"),
    (change_a_field_and_cover_it, "seq 0-3: the entries no longer hash to the root"),
    (delete_an_entry, "seq 5: entries missing"),
    (delete_an_entry_and_renumber, "seq 5: its seq field is not its position"),
    (swap_two_entries, "seq 5: its seq field is not its position"),
    (insert_an_entry, "seq 6: its seq field is not its position"),
    (truncate_the_tail, "seq 7-9: missing: checkpoint #3 covers 10 entries"),
    (replace_a_checkpoint, "checkpoint #3: note is not signed by"),
    (roll_the_checkpoints_back, "the checkpoint table was rolled back to size 7"),
    (roll_back_and_rewrite_the_unsigned_tail, "the checkpoint table was rolled back to size 7"),
    (edit_the_head, "ledger head: its tree disagrees"),
]


def test_an_untouched_ledger_verifies(workspace: Workspace) -> None:
    assert "ledger: OK: 10 entries, 3 signed checkpoints" in workspace.verify()


@pytest.mark.parametrize(("tamper", "where"), STATE_CASES, ids=[c[0].__name__ for c in STATE_CASES])
def test_tampering_with_the_state_database_is_reported(
    workspace: Workspace, tamper: Callable[[Connection], None], where: str
) -> None:
    with workspace.engine.begin() as conn:
        tamper(conn)
    with pytest.raises(VerificationError) as caught:
        workspace.verify()
    assert caught.value.exit_code == 3
    assert where in str(caught.value)


# Every block of two entries hashed in a worker process, as a long ledger is.
WORKERS = Fanout(workers=2, block=2, min_blocks=1)


def verify_with_workers(space: Workspace) -> Report:
    kept = read_local_copy(local_copy_path(space.key_file))
    verifier = key_verifier(load_signer_key(space.key_file))
    with space.engine.connect() as conn:
        return verify_state(conn, verifier, local_copy=kept, fanout=WORKERS)


def test_an_untouched_ledger_verifies_when_workers_hash_it(workspace: Workspace) -> None:
    report = verify_with_workers(workspace)
    assert report.findings.lines() == []
    assert (report.entries, report.checkpoints, report.processes) == (10, 3, 2)


@pytest.mark.parametrize(("tamper", "where"), STATE_CASES, ids=[c[0].__name__ for c in STATE_CASES])
def test_tampering_is_reported_when_workers_hash_the_ledger(
    workspace: Workspace, tamper: Callable[[Connection], None], where: str
) -> None:
    with workspace.engine.begin() as conn:
        tamper(conn)
    report = verify_with_workers(workspace)
    assert not report.ok
    assert where in "\n".join(report.findings.lines())


def test_a_rolled_back_and_rewritten_ledger_is_never_signed_again(workspace: Workspace) -> None:
    with workspace.engine.begin() as conn:
        roll_back_and_rewrite_the_unsigned_tail(conn)
        for _ in range(4):  # the insider's own entries in place of the removed ones
            append_entry(conn, {"kind": "purge", "rule": "lab-results", "count": 0})
    with pytest.raises(VerificationError, match="rolled back or rewritten"):
        checkpoint_now(workspace.engine, workspace.key_file)
    with pytest.raises(VerificationError, match="seq 7-9: the entries no longer hash"):
        workspace.verify()


def test_an_export_of_a_tampered_ledger_is_refused(tmp_path: Path) -> None:
    space = build_workspace(tmp_path / "ws")
    with space.engine.begin() as conn:
        change_a_field(conn)
    with pytest.raises(VerificationError, match="nothing exported"):
        space.export(tmp_path / "audit")
    assert not (tmp_path / "audit").exists()
    space.engine.dispose()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def edit_a_line(export: Path) -> None:
    lines = _lines(export / "entries.jsonl")
    lines[2] = lines[2].replace(b'"count":102', b'"count":2')
    (export / "entries.jsonl").write_bytes(b"".join(lines))


def delete_a_line(export: Path) -> None:
    lines = _lines(export / "entries.jsonl")
    del lines[5]
    (export / "entries.jsonl").write_bytes(b"".join(lines))


def swap_two_lines(export: Path) -> None:
    lines = _lines(export / "entries.jsonl")
    lines[5], lines[6] = lines[6], lines[5]
    (export / "entries.jsonl").write_bytes(b"".join(lines))


def insert_a_line(export: Path) -> None:
    lines = _lines(export / "entries.jsonl")
    lines.insert(3, lines[3])
    (export / "entries.jsonl").write_bytes(b"".join(lines))


def truncate_the_file(export: Path) -> None:
    lines = _lines(export / "entries.jsonl")
    (export / "entries.jsonl").write_bytes(b"".join(lines[:7]))


def append_a_line(export: Path) -> None:
    with open(export / "entries.jsonl", "ab") as handle:
        handle.write(_lines(export / "entries.jsonl")[0])


def sign_with_another_key(export: Path) -> None:
    checkpoint = parse_checkpoint((export / "checkpoint").read_text().split("\n\n")[0] + "\n")
    other = generate_signer_key("test.example.org/retentiond")
    (export / "checkpoint").write_text(sign_checkpoint(checkpoint, other))


def replace_key_and_checkpoint_partly(export: Path) -> None:
    # The public key replaced by the forger's, but the checkpoint left as the ledger signed it.
    other = generate_signer_key("test.example.org/retentiond")
    (export / "ledger.pub").write_text(verifier_key(other) + "\n")


def edit_the_checkpoint(export: Path) -> None:
    text = (export / "checkpoint").read_text()
    (export / "checkpoint").write_text(text.replace("\n11\n", "\n9\n"))


EXPORT_CASES: list[tuple[Callable[[Path], None], str]] = [
    (edit_a_line, "seq 0-10: the entries no longer hash to the root"),
    (delete_a_line, "seq 5: its seq field is not its position"),
    (swap_two_lines, "seq 5: its seq field is not its position"),
    (insert_a_line, "seq 4: its seq field is not its position"),
    (truncate_the_file, "seq 7-10: missing"),
    (append_a_line, "seq 11: not covered by the signed checkpoint"),
    (sign_with_another_key, "checkpoint: note is not signed by"),
    (replace_key_and_checkpoint_partly, "checkpoint: note is not signed by"),
    (edit_the_checkpoint, "checkpoint: signature by"),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One ledger of 11 entries exported once, and its older checkpoint of size 7."""
    base = tmp_path_factory.mktemp("export")
    space = build_workspace(base / "ws")
    with space.engine.connect() as conn:
        older = list_checkpoints(conn)[1].note  # the checkpoint of size 7
    with space.engine.begin() as conn:
        append_entry(conn, {"kind": "config", "reason": "config reloaded"})  # not yet signed
    space.export(base / "audit")
    space.engine.dispose()
    yield base / "audit", older


def test_an_untouched_export_verifies(exported: tuple[Path, str], tmp_path: Path) -> None:
    audit = shutil.copytree(exported[0], tmp_path / "audit")
    out = io.StringIO()
    assert ledger_commands.verify(None, audit, out) == 0
    assert "OK: 11 entries" in out.getvalue()


@pytest.mark.parametrize(
    ("tamper", "where"), EXPORT_CASES, ids=[c[0].__name__ for c in EXPORT_CASES]
)
def test_tampering_with_an_export_is_reported(
    exported: tuple[Path, str], tmp_path: Path, tamper: Callable[[Path], None], where: str
) -> None:
    audit = shutil.copytree(exported[0], tmp_path / "audit")
    tamper(audit)
    with pytest.raises(VerificationError) as caught:
        ledger_commands.verify(None, audit, io.StringIO())
    assert caught.value.exit_code == 3
    assert where in str(caught.value)


def test_an_untouched_export_verifies_when_workers_hash_it(
    exported: tuple[Path, str], tmp_path: Path
) -> None:
    report = verify_export(shutil.copytree(exported[0], tmp_path / "audit"), fanout=WORKERS)
    assert report.findings.lines() == []
    assert (report.entries, report.processes) == (11, 2)


@pytest.mark.parametrize(
    ("tamper", "where"), EXPORT_CASES, ids=[c[0].__name__ for c in EXPORT_CASES]
)
def test_tampering_with_an_export_is_reported_when_workers_hash_it(
    exported: tuple[Path, str], tmp_path: Path, tamper: Callable[[Path], None], where: str
) -> None:
    audit = shutil.copytree(exported[0], tmp_path / "audit")
    tamper(audit)
    report = verify_export(audit, fanout=WORKERS)
    assert not report.ok
    assert where in "\n".join(report.findings.lines())


def test_an_export_rolled_back_to_an_older_checkpoint_is_reported(
    exported: tuple[Path, str], tmp_path: Path
) -> None:
    audit = shutil.copytree(exported[0], tmp_path / "audit")
    (audit / "checkpoint").write_text(exported[1])
    with pytest.raises(VerificationError, match="seq 7-10: not covered by the signed checkpoint"):
        ledger_commands.verify(None, audit, io.StringIO())


def test_the_command_line_exits_3_on_tampering_and_0_otherwise(
    exported: tuple[Path, str], tmp_path: Path
) -> None:
    # Another machine: only the export, no config, an empty working directory.
    audit = shutil.copytree(exported[0], tmp_path / "elsewhere" / "audit")
    empty = tmp_path / "empty"
    empty.mkdir()
    ok = run_cli("ledger", "verify", "--export", str(audit), cwd=empty)
    assert ok.returncode == 0, ok.stderr
    assert "OK: 11 entries" in ok.stdout
    swap_two_lines(audit)
    bad = run_cli("ledger", "verify", "--export", str(audit), cwd=empty)
    assert bad.returncode == 3
    assert "seq 5: its seq field is not its position" in bad.stderr
