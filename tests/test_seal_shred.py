"""The shred rule: plan, crypto-erase, ledger entry, holds, stale database copies, kill -9."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from retentiond import keystore
from retentiond.engine import HoldSpec
from retentiond.journal import StateJournal
from retentiond.keystore import KeystoreError
from retentiond.ledger.digest import KeyDigest
from retentiond.seal.copy import CopyShredded, SealedCopy, seal_copy, unseal_copy
from retentiond.state.db import create_state_engine
from retentiond.state.models import keystore_meta, ledger_entry, sealed_copy
from retentiond.stores.sealed import ShredTarget
from tests.seal_support import ROOT, Workspace, make_workspace

RULE = "sealed-copies"
PAYLOAD = b"a dump of the lims database"


@pytest.fixture(params=["sqlite", "postgres"])
def ws(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    """An initialised workspace whose state database is SQLite or PostgreSQL."""
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_database")
    workspace = make_workspace(tmp_path / "ws", state_url=url)
    yield workspace
    workspace.engine.dispose()


def seal(ws: Workspace, path: Path, data: bytes, expires_in: timedelta) -> SealedCopy:
    path.parent.mkdir(parents=True, exist_ok=True)
    return seal_copy(
        ws.engine,
        ws.kek_file,
        io.BytesIO(data).readinto,
        path,
        datetime.now(UTC) + expires_in,
        None,
    )


def target(ws: Workspace, holds: tuple[HoldSpec, ...] = ()) -> ShredTarget:
    return ShredTarget(ws.engine, ws.kek_file, RULE, "sha256:test", holds)


def shred(ws: Workspace, holds: tuple[HoldSpec, ...] = ()) -> tuple[object, object]:
    shredder = target(ws, holds)
    plan = shredder.plan()
    with ws.engine.connect() as conn:
        key = keystore.commitment_key(conn, ws.kek_file)
    journal = StateJournal(ws.engine, "run-1", key, colocated=False)
    outcome = shredder.execute(plan, journal, threading.Event())
    shredder.wait_for_files()
    return plan, outcome


def unseal(ws: Workspace, path: Path) -> bytes:
    out = io.BytesIO()
    with open(path, "rb") as stream:
        unseal_copy(ws.engine, ws.kek_file, stream, out.write)
    return out.getvalue()


def entries(engine: sa.Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ledger_entry.c.entry).order_by(ledger_entry.c.seq))
        return [json.loads(text) for text in rows.scalars()]


def test_plan_lists_due_copies_and_changes_nothing(ws: Workspace, tmp_path: Path) -> None:
    due = seal(ws, tmp_path / "a.age", os.urandom(5000), timedelta(seconds=-5))
    seal(ws, tmp_path / "b.age", os.urandom(7000), timedelta(days=3))
    before = (tmp_path / "a.age").read_bytes(), ws.kek_file.read_bytes()
    plan = target(ws).plan()
    assert (plan.action, plan.method, plan.target) == ("shred", "crypto-erase", "sealed copies")
    assert (plan.total_items, plan.expired_items, plan.held_items) == (2, 1, 0)
    assert plan.bytes == due.size
    [listed] = plan.details["copies"]
    assert (listed["id"], listed["bytes"]) == (due.id, due.size)
    assert listed["expires_at"].startswith(str(due.expires_at.year))
    assert plan.oldest_age_seconds is not None and plan.oldest_age_seconds >= 0
    assert ((tmp_path / "a.age").read_bytes(), ws.kek_file.read_bytes()) == before
    assert unseal(ws, tmp_path / "a.age")  # still opens


def test_shred_destroys_key_file_and_records_it(ws: Workspace, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    gone = seal(ws, tmp_path / "out" / "gone.age", data, timedelta(seconds=-1))
    kept = seal(ws, tmp_path / "out" / "kept.age", data, timedelta(days=1))
    stale = tmp_path / "copy-elsewhere.age"
    stale.write_bytes((tmp_path / "out" / "gone.age").read_bytes())  # copied before the shred
    generation_before = max(keystore.read_kek_file(ws.kek_file))

    _plan, outcome = shred(ws)

    assert outcome.items == 1 and outcome.bytes == gone.size  # type: ignore[attr-defined]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["kept.age"]
    with pytest.raises(CopyShredded) as shredded:
        unseal(ws, stale)
    [entry] = [e for e in entries(ws.engine) if e["kind"] == "shred"]
    message = str(shredded.value)
    assert f"by rule {RULE}" in message and f"ledger entry {entry['seq']}" in message
    assert "shredded at 20" in message
    assert entry["count"] == 1 and entry["bytes"] == gone.size
    assert entry["method"] == "crypto-erase" and entry["target"] == "sealed copies"
    assert entry["store"] is None and entry["key_exported"] is False
    assert entry["kek_generation"] == generation_before + 1
    assert list(keystore.read_kek_file(ws.kek_file)) == [generation_before + 1]
    with ws.engine.connect() as conn:
        expected = KeyDigest(keystore.commitment_key(conn, ws.kek_file))
        generation = conn.execute(sa.select(keystore_meta.c.kek_generation)).scalar_one()
    expected.add(gone.id.encode())
    assert entry["digest"] == expected.hexdigest()
    assert generation == entry["kek_generation"]
    assert str(tmp_path) not in json.dumps(entry)
    assert unseal(ws, tmp_path / "out" / "kept.age") == data  # the survivor was re-wrapped
    assert kept.id not in json.dumps(entries(ws.engine))


@contextlib.contextmanager
def state_backup(ws: Workspace, tmp_path: Path) -> Iterator[Callable[[], sa.Engine]]:
    """Take a copy of the state database now; the yielded function opens that copy."""
    url = ws.engine.url
    if url.get_backend_name() == "sqlite":
        backup = tmp_path / "backup.db"
        with sqlite3.connect(url.database or "") as live, sqlite3.connect(backup) as copy:
            live.backup(copy)
        copy_url = f"sqlite:///{backup}"
        yield lambda: create_state_engine(copy_url)
        return
    # PostgreSQL: pg_dump into a new database, as a backup restored elsewhere would be.
    name = f"rt_backup_{secrets.token_hex(4)}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    target = url.set(database=name)
    subprocess.run(
        f"pg_dump '{libpq}' | psql -q -v ON_ERROR_STOP=1 "
        f"'{target.set(drivername='postgresql').render_as_string(hide_password=False)}'",
        shell=True,
        check=True,
        capture_output=True,
    )
    try:
        yield lambda: create_state_engine(target)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_old_copy_of_the_state_database_cannot_yield_the_identity(
    ws: Workspace, tmp_path: Path
) -> None:
    seal(ws, tmp_path / "c.age", b"dump", timedelta(seconds=-1))
    shutil.copy(tmp_path / "c.age", tmp_path / "stale.age")
    with state_backup(ws, tmp_path) as open_backup:
        shred(ws)
        old = open_backup()
        try:
            with old.connect() as conn:
                row = conn.execute(sa.select(sealed_copy)).one()
                assert row.wrapped_identity is not None  # the stale wrapped identity is there...
                name = keystore.copy_secret_name(row.id)
                for generation, key in keystore.read_kek_file(ws.kek_file).items():
                    with pytest.raises(KeystoreError):  # ...and no remaining key opens it
                        keystore.unwrap(keystore.Kek(generation, key), name, row.wrapped_identity)
            with old.connect() as conn, pytest.raises(KeystoreError, match="newer generation"):
                keystore.current_kek(conn, ws.kek_file)
            # Opening the carried-off ciphertext through the old database fails the same way.
            with pytest.raises(KeystoreError), open(tmp_path / "stale.age", "rb") as stream:
                unseal_copy(old, ws.kek_file, stream, io.BytesIO().write)
        finally:
            old.dispose()


def test_holds_keep_copies_alive(ws: Workspace, tmp_path: Path) -> None:
    held_dir, free_dir = tmp_path / "srv" / "case-117", tmp_path / "srv" / "other"
    held = seal(ws, held_dir / "h.age", b"held", timedelta(seconds=-1))
    seal(ws, free_dir / "f.age", b"free", timedelta(seconds=-1))
    rule_hold = HoldSpec(reason="court case", rule=RULE)
    plan, outcome = shred(ws, (rule_hold,))
    assert (plan.expired_items, plan.held_items) == (0, 2)  # type: ignore[attr-defined]
    assert outcome.items == 0  # type: ignore[attr-defined]
    assert unseal(ws, held_dir / "h.age") == b"held" and unseal(ws, free_dir / "f.age") == b"free"
    path_hold = HoldSpec(reason="inspection", path_prefix=str(held_dir).lstrip("/") + "/")
    plan, outcome = shred(ws, (path_hold,))
    assert (plan.expired_items, plan.held_items) == (1, 1)  # type: ignore[attr-defined]
    assert outcome.items == 1  # type: ignore[attr-defined]
    assert unseal(ws, held_dir / "h.age") == b"held"
    assert not (free_dir / "f.age").exists()
    assert [c["id"] for c in plan.details["copies"]] != [held.id]  # type: ignore[attr-defined]


def test_missing_replaced_and_symlinked_files(ws: Workspace, tmp_path: Path) -> None:
    missing = seal(ws, tmp_path / "m" / "missing.age", b"1", timedelta(seconds=-1))
    seal(ws, tmp_path / "r" / "replaced.age", b"2", timedelta(seconds=-1))
    seal(ws, tmp_path / "s" / "linked.age", b"3", timedelta(seconds=-1))
    (tmp_path / "m" / "missing.age").unlink()
    (tmp_path / "r" / "replaced.age").write_bytes(b"a new file with the same name")
    # The copy's directory is swapped for a symlink to somewhere else: never followed.
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "s").rename(elsewhere)
    (tmp_path / "s").symlink_to(elsewhere)
    _plan, outcome = shred(ws)
    assert outcome.items == 3  # type: ignore[attr-defined]
    details = outcome.details  # type: ignore[attr-defined]
    assert (details["files_found"], details["files_missing"], details["files_kept"]) == (0, 1, 2)
    assert (tmp_path / "r" / "replaced.age").read_bytes() == b"a new file with the same name"
    assert (elsewhere / "linked.age").exists()
    with ws.engine.connect() as conn:
        row = conn.execute(sa.select(sealed_copy).where(sealed_copy.c.id == missing.id)).one()
    assert row.wrapped_identity is None and row.shred_seq is not None


def test_apply_from_the_command_line_with_a_config_hold(tmp_path: Path) -> None:
    body = f"""
[[rules]]
name = "{RULE}"
action = "shred"

[[holds]]
rule = "{RULE}"
reason = "inspection in progress"
"""
    ws = make_workspace(tmp_path / "ws", body)
    try:
        seal(ws, tmp_path / "c.age", b"kept by the hold", timedelta(seconds=-1))
        done = ws.cli("apply")
        assert done.returncode == 0, done.stderr
        assert unseal(ws, tmp_path / "c.age") == b"kept by the hold"
        plan = ws.cli("plan", "--json")
        assert plan.returncode == 0, plan.stderr
        assert b'"held_items": 1' in plan.stdout or b'"held": 1' in plan.stdout
    finally:
        ws.engine.dispose()


_KILLABLE = r"""
import sys, threading
from pathlib import Path
from retentiond.state.db import create_state_engine
from retentiond.stores import sealed
from retentiond.stores.sealed import ShredTarget
from retentiond.journal import StateJournal
sealed.BATCH = 7  # several transactions per run, so that a kill can fall between two
engine = create_state_engine(sys.argv[1])
target = ShredTarget(engine, Path(sys.argv[2]), "sealed-copies", "sha256:test", ())
plan = target.plan()
print("ready", flush=True)
sys.stdin.readline()
target.execute(plan, StateJournal(engine, "run-k", b"k" * 32, False), threading.Event())
print("done", flush=True)
"""


def _start_shred(ws: Workspace) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLABLE,
            ws.engine.url.render_as_string(hide_password=False),
            str(ws.kek_file),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def _check_consistent(ws: Workspace, files: dict[str, Path]) -> tuple[int, int]:
    """Every copy is either alive (key and file) or shredded with its entry; returns the counts."""
    keystore.settle(ws.engine, ws.kek_file)  # what the next start does
    shred_entries = {e["seq"]: e for e in entries(ws.engine) if e["kind"] == "shred"}
    alive = shredded = 0
    with ws.engine.connect() as conn:
        rows = conn.execute(sa.select(sealed_copy).where(sealed_copy.c.id.in_(files))).all()
    for row in rows:
        if row.wrapped_identity is not None:
            assert row.shredded_at is None and row.shred_seq is None
            assert files[row.id].exists()
            assert unseal(ws, files[row.id]) == PAYLOAD
            alive += 1
        else:
            assert row.shredded_at is not None
            assert row.shred_seq in shred_entries  # never a key gone without its entry
            assert shred_entries[row.shred_seq]["count"] >= 1
            shredded += 1
    return alive, shredded


def test_kill_9_during_a_shred_never_loses_an_entry(ws: Workspace, tmp_path: Path) -> None:
    rng = random.Random(6)
    count = 60

    def seal_round(round_: int) -> dict[str, Path]:
        files = {}
        for i in range(count):
            path = tmp_path / f"r{round_}" / f"{i}.age"
            files[seal(ws, path, PAYLOAD, timedelta(seconds=-1)).id] = path
        return files

    def shredded_so_far(files: dict[str, Path]) -> int:
        with ws.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(
                        sealed_copy.c.id.in_(files), sealed_copy.c.shred_seq.is_not(None)
                    )
                ).scalar_one()
            )

    def run(files: dict[str, Path], kill_after: float | None, first_batch: bool = False) -> float:
        process = _start_shred(ws)
        assert process.stdin is not None and process.stdout is not None
        started = time.monotonic()
        process.stdin.write("go\n")
        process.stdin.flush()
        if first_batch:  # kill as soon as one batch has committed
            while shredded_so_far(files) == 0 and process.poll() is None:
                time.sleep(0.001)
            process.send_signal(signal.SIGKILL)
        elif kill_after is None:
            assert process.stdout.readline() == "done\n"
        else:
            time.sleep(kill_after)
            process.send_signal(signal.SIGKILL)
        process.wait()
        return time.monotonic() - started

    # Measure a whole shred, then kill others at points spread over that time.
    files = seal_round(0)
    duration = run(files, None)
    assert _check_consistent(ws, files) == (0, count)
    for round_ in range(1, 7):
        files = seal_round(round_)
        run(files, rng.uniform(0, duration))
        alive, shredded = _check_consistent(ws, files)
        assert alive + shredded == count
    # A kill right after the first batch: some copies shredded and recorded, none half-done.
    files = seal_round(7)
    run(files, None, first_batch=True)
    alive, shredded = _check_consistent(ws, files)
    assert alive + shredded == count and shredded >= 1
    # The copies that outlived a kill are shredded by the next run, and recorded.
    _plan, outcome = shred(ws)
    assert outcome.remaining_expired == 0  # type: ignore[attr-defined]
    with ws.engine.connect() as conn:
        live = conn.execute(
            sa.select(sa.func.count()).where(sealed_copy.c.wrapped_identity.is_not(None))
        ).scalar_one()
    assert live == 0


def test_guard_refuses_a_shred_of_too_many_copies(tmp_path: Path) -> None:
    body = f"""
[[rules]]
name = "{RULE}"
action = "shred"
max_items = 1
"""
    ws = make_workspace(tmp_path / "ws", body)
    try:
        for name in ("a", "b"):
            seal(ws, tmp_path / f"{name}.age", PAYLOAD, timedelta(seconds=-1))
        generation = list(keystore.read_kek_file(ws.kek_file))
        done = ws.cli("apply")
        assert done.returncode == 4, done.stderr
        assert unseal(ws, tmp_path / "a.age") == PAYLOAD == unseal(ws, tmp_path / "b.age")
        assert list(keystore.read_kek_file(ws.kek_file)) == generation  # no rotation either
        [refusal] = [e for e in entries(ws.engine) if e["kind"] == "refused"]
        assert refusal["rule"] == RULE and refusal["count"] == 2
        assert not [e for e in entries(ws.engine) if e["kind"] == "shred"]
    finally:
        ws.engine.dispose()
