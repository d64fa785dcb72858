"""The ledger in a real state database (SQLite and PostgreSQL): appends, checkpoints, concurrency."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text, update

from retentiond.errors import VerificationError
from retentiond.ledger.entry import parse_entry
from retentiond.ledger.merkle import leaf_hash, root_of
from retentiond.ledger.note import generate_signer_key, open_checkpoint, verifier_key
from retentiond.ledger.signing import key_verifier
from retentiond.ledger.store import (
    LedgerError,
    append_entry,
    ensure_ledger,
    iter_entries,
    list_checkpoints,
    newest_entry_time,
    read_head,
    write_checkpoint,
)
from retentiond.ledger.verify import verify_state
from retentiond.state.db import create_state_engine, upgrade
from retentiond.state.models import ledger_entry

ORIGIN = "lab.example.org/retentiond"


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh state database, migrated to head: SQLite in a temporary folder, or PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
def state(state_url: str) -> Iterator[Engine]:
    engine = create_state_engine(state_url)
    upgrade(engine)
    with engine.begin() as conn:
        ensure_ledger(conn, ORIGIN)
    yield engine
    engine.dispose()


def purge(count: int) -> dict[str, object]:
    return {"kind": "purge", "rule": "lab-results", "count": count, "method": "pk-ranges"}


def test_appends_number_entries_and_keep_the_head(state: Engine) -> None:
    with state.begin() as conn:
        seqs = [append_entry(conn, purge(i)) for i in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    with state.connect() as conn:
        rows = list(iter_entries(conn))
        head = read_head(conn)
    assert [parse_entry(data)["count"] for _, data, _ in rows] == [0, 1, 2, 3, 4]
    assert all(leaf == leaf_hash(data) for _, data, leaf in rows)
    assert head is not None and head.tree_size == 5
    assert head.root_hash == root_of([leaf for _, _, leaf in rows])


def test_an_append_rolls_back_with_the_callers_transaction(state: Engine) -> None:
    with pytest.raises(RuntimeError), state.begin() as conn:
        append_entry(conn, purge(1))
        raise RuntimeError("the deletion failed")
    with state.begin() as conn:
        assert append_entry(conn, purge(2)) == 0  # nothing of the failed transaction remains


def test_newest_entry_time_is_the_newest_append(state: Engine) -> None:
    with state.connect() as conn:
        assert newest_entry_time(conn) is None
    before = datetime.now(UTC)
    with state.begin() as conn:
        append_entry(conn, purge(1))
    with state.connect() as conn:
        newest = newest_entry_time(conn)
    assert newest is not None and before <= newest <= datetime.now(UTC) + timedelta(seconds=1)


def test_the_ledger_keeps_its_origin_and_needs_init(state: Engine, tmp_path: Path) -> None:
    with state.begin() as conn:
        ensure_ledger(conn, ORIGIN)  # again: nothing changes
        with pytest.raises(LedgerError, match="keeps the name"):
            ensure_ledger(conn, "other.example.org/retentiond")
    bare = create_state_engine(f"sqlite:///{tmp_path / 'bare.db'}")
    upgrade(bare)
    with pytest.raises(LedgerError, match="retentiond init"), bare.begin() as conn:
        append_entry(conn, purge(1))
    bare.dispose()


def test_checkpoints_sign_the_tree_and_build_on_each_other(state: Engine) -> None:
    key = generate_signer_key(ORIGIN)
    with state.begin() as conn:
        append_entry(conn, purge(1))
        first = write_checkpoint(conn, key)
        append_entry(conn, purge(2))
        append_entry(conn, purge(3))
        second = write_checkpoint(conn, key)
    assert open_checkpoint(first, verifier_key(key)).tree_size == 1
    checkpoint = open_checkpoint(second, verifier_key(key))
    with state.connect() as conn:
        leaves = [leaf for _, _, leaf in iter_entries(conn)]
        assert [c.tree_size for c in list_checkpoints(conn)] == [1, 3]
    assert (checkpoint.tree_size, checkpoint.root_hash) == (3, root_of(leaves))


def test_a_checkpoint_is_never_signed_over_an_altered_entry(state: Engine) -> None:
    key = generate_signer_key(ORIGIN)
    with state.begin() as conn:
        append_entry(conn, purge(1))
        write_checkpoint(conn, key)
        append_entry(conn, purge(2))
    with state.begin() as conn:
        row = list(iter_entries(conn))[1]
        forged = row[1].replace(b'"count":2', b'"count":0')
        conn.execute(
            update(ledger_entry).where(ledger_entry.c.seq == 1).values(entry=forged.decode())
        )
    with pytest.raises(VerificationError, match="seq 1"), state.begin() as conn:
        write_checkpoint(conn, key)
    with state.connect() as conn:
        assert len(list_checkpoints(conn)) == 1  # nothing was signed


def test_a_key_for_another_log_does_not_sign(state: Engine) -> None:
    with pytest.raises(LedgerError, match="signing key is named"), state.begin() as conn:
        write_checkpoint(conn, generate_signer_key("other.example.org/retentiond"))


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from retentiond.ledger.store import append_entry
    from retentiond.state.db import create_state_engine

    url, label, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    engine = create_state_engine(url)
    while not go.exists():
        time.sleep(0.005)
    for i in range(count):
        with engine.begin() as conn:
            append_entry(conn, {"kind": "purge", "rule": label, "count": i})
    """
)


def test_two_processes_appending_at_once_write_one_linear_log(
    state: Engine, state_url: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    count = 60
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, state_url, label, str(count), str(go)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for label in ("daemon-a", "daemon-b")
    ]
    go.touch()
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    key = generate_signer_key(ORIGIN)
    with state.begin() as conn:
        write_checkpoint(conn, key)  # re-checks every entry and the head before signing
    with state.connect() as conn:
        entries = [parse_entry(data) for _, data, _ in iter_entries(conn)]
        report = verify_state(conn, key_verifier(key))
    assert [e["seq"] for e in entries] == list(range(2 * count))
    for label in ("daemon-a", "daemon-b"):
        assert [e["count"] for e in entries if e["rule"] == label] == list(range(count))
    labels = [e["rule"] for e in entries]
    assert labels.count("daemon-a") == labels.count("daemon-b") == count
    assert report.ok, report.findings.lines()
    assert report.entries == 2 * count


def test_entries_are_stored_as_their_canonical_text(state: Engine) -> None:
    with state.begin() as conn:
        append_entry(conn, {"kind": "hold", "event": "added", "reason": "court case 2026-117"})
        stored = conn.execute(text("SELECT entry FROM ledger_entry")).scalar_one()
    assert json.loads(stored)["reason"] == "court case 2026-117"
    assert (
        stored.encode()
        == json.dumps(
            json.loads(stored), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )
