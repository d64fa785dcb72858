"""`retentiond seal` and `unseal` as a user runs them: streams, registration, failures, export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from retentiond.errors import UsageError
from retentiond.seal.agefile import Identity, encrypt_stream
from retentiond.seal.copy import seal_copy
from retentiond.state.models import ledger_entry, sealed_copy
from tests.seal_support import ROOT, Workspace, make_workspace

needs_age = pytest.mark.skipif(
    shutil.which("age") is None and os.environ.get("CI") != "true",
    reason="the age command is not installed",
)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    workspace = make_workspace(tmp_path / "ws")
    yield workspace
    workspace.engine.dispose()


def _copies(ws: Workspace) -> list[sa.Row[object]]:
    with ws.engine.connect() as conn:
        return list(conn.execute(sa.select(sealed_copy)).all())


def _entries(ws: Workspace) -> list[dict[str, object]]:
    with ws.engine.connect() as conn:
        return [json.loads(e) for e in conn.execute(sa.select(ledger_entry.c.entry)).scalars()]


def test_seal_from_a_pipe_and_unseal_to_stdout(ws: Workspace, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    out = tmp_path / "out"
    out.mkdir()
    sealed = ws.cli(
        "seal",
        "-",
        "-o",
        str(out / "dump.age"),
        "--expires",
        "30d",
        "--label",
        "Dupont export",
        stdin=data,
        check=True,
    )
    assert b"sealed copy" in sealed.stdout
    assert sorted(p.name for p in out.iterdir()) == ["dump.age"]  # nothing else, no temp file
    assert stat.S_IMODE((out / "dump.age").stat().st_mode) == 0o600
    assert data not in (out / "dump.age").read_bytes()
    [row] = _copies(ws)
    assert row.path == str(out / "dump.age")
    assert row.size == (out / "dump.age").stat().st_size
    assert row.shredded_at is None and row.key_exported is False
    assert row.recipient.startswith("age1")
    assert row.label_digest.startswith("hmac-sha256:") and "Dupont" not in row.label_digest
    days = (row.expires_at - row.created_at).total_seconds() / 86400
    assert 29.99 < days < 30.01
    opened = ws.cli("unseal", str(out / "dump.age"), "-o", "-", check=True)
    assert opened.stdout == data


def test_unseal_to_a_file_is_private(ws: Workspace, tmp_path: Path) -> None:
    source = tmp_path / "plain.bin"
    source.write_bytes(b"lab results\n" * 1000)
    ws.cli("seal", str(source), "-o", str(tmp_path / "c.age"), "--expires", "1d", check=True)
    done = ws.cli("unseal", str(tmp_path / "c.age"), "-o", str(tmp_path / "back.bin"), check=True)
    assert b"unsealed copy" in done.stdout
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    assert stat.S_IMODE((tmp_path / "back.bin").stat().st_mode) == 0o600
    again = ws.cli("unseal", str(tmp_path / "c.age"), "-o", str(tmp_path / "back.bin"))
    assert again.returncode == 2 and b"already exists" in again.stderr


def test_usage_errors_do_nothing(ws: Workspace, tmp_path: Path) -> None:
    (tmp_path / "taken.age").write_bytes(b"keep me")
    taken = ws.cli("seal", "-", "-o", str(tmp_path / "taken.age"), "--expires", "1d", stdin=b"x")
    assert taken.returncode == 2 and b"already exists" in taken.stderr
    assert (tmp_path / "taken.age").read_bytes() == b"keep me"
    bad = ws.cli("seal", "-", "-o", str(tmp_path / "new.age"), "--expires", "soon", stdin=b"x")
    assert bad.returncode == 2 and b"is not a duration" in bad.stderr
    missing = ws.cli(
        "seal", str(tmp_path / "nope"), "-o", str(tmp_path / "new.age"), "--expires", "1d"
    )
    assert missing.returncode == 2
    assert not (tmp_path / "new.age").exists()
    assert _copies(ws) == []


def test_failed_read_leaves_no_output_and_no_registration(ws: Workspace, tmp_path: Path) -> None:
    served = 0

    def failing(buffer: memoryview) -> int:
        nonlocal served
        if served > 200_000:
            raise OSError("the dump broke")
        size = min(1000, len(buffer))
        buffer[:size] = b"p" * size
        served += size
        return size

    target = tmp_path / "broken.age"
    with pytest.raises(OSError, match="the dump broke"):
        seal_copy(ws.engine, ws.kek_file, failing, target, _soon(), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"]
    assert _copies(ws) == []


def test_seal_killed_mid_stream_leaves_nothing(ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    seal = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "retentiond",
            "-c",
            str(ws.config),
            "seal",
            "-",
            "-o",
            str(out / "c.age"),
            "--expires",
            "1d",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert seal.stdin is not None
    seal.stdin.write(os.urandom(5_000_000))  # a pipe of 64 KiB: this returns once it is consumed
    seal.stdin.flush()
    time.sleep(0.2)
    seal.send_signal(signal.SIGKILL)
    seal.wait()
    seal.stdin.close()
    assert list(out.iterdir()) == []
    assert _copies(ws) == []


def test_a_failing_input_fails_the_seal_cleanly(ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # Reading /proc/self/mem from offset 0 fails with EIO: an input that breaks while sealing.
    done = ws.cli("seal", "/proc/self/mem", "-o", str(out / "c.age"), "--expires", "1d")
    assert done.returncode == 1, done.stderr
    assert b"the encryption failed" in done.stderr and b"nothing was sealed" in done.stderr
    assert list(out.iterdir()) == []
    assert _copies(ws) == []


def test_registration_happens_before_the_name_appears(ws: Workspace, tmp_path: Path) -> None:
    # A copy whose name is taken between the check and the publish is not registered.
    target = tmp_path / "race.age"

    def racing(buffer: memoryview) -> int:
        if not target.exists():
            target.write_bytes(b"someone else")
            buffer[:3] = b"abc"
            return 3
        return 0

    with pytest.raises(UsageError, match="appeared while it was being written"):
        seal_copy(ws.engine, ws.kek_file, racing, target, _soon(), None)
    assert target.read_bytes() == b"someone else"
    assert _copies(ws) == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-10], b"truncated or damaged"),
        (lambda b: b[: len(b) // 2], b"truncated or damaged"),
        (lambda b: b[:-100] + bytes([b[-100] ^ 0x40]) + b[-99:], b"failed authentication"),
        (lambda b: b"not an age file\n", b"not an age file"),
    ],
)
def test_damaged_copies_are_rejected(
    ws: Workspace, tmp_path: Path, damage: object, message: bytes
) -> None:
    data = os.urandom(200_000)
    ws.cli("seal", "-", "-o", str(tmp_path / "c.age"), "--expires", "1d", stdin=data, check=True)
    (tmp_path / "bad.age").write_bytes(damage((tmp_path / "c.age").read_bytes()))  # type: ignore[operator]
    done = ws.cli("unseal", str(tmp_path / "bad.age"), "-o", str(tmp_path / "plain"))
    assert done.returncode == 1
    assert message in done.stderr
    assert not (tmp_path / "plain").exists()  # no partial plaintext


def test_a_foreign_age_file_is_not_ours(ws: Workspace, tmp_path: Path) -> None:
    import io

    stranger = io.BytesIO()
    encrypt_stream(io.BytesIO(b"x").readinto, stranger.write, Identity.generate().public_bytes())
    (tmp_path / "other.age").write_bytes(stranger.getvalue())
    done = ws.cli("unseal", str(tmp_path / "other.age"))
    assert done.returncode == 1
    assert b"not a copy sealed with this keystore" in done.stderr


@needs_age
def test_exported_identity_opens_with_the_age_command(ws: Workspace, tmp_path: Path) -> None:
    data = os.urandom(150_000)
    ws.cli("seal", "-", "-o", str(tmp_path / "c.age"), "--expires", "7d", stdin=data, check=True)
    done = ws.cli(
        "unseal", str(tmp_path / "c.age"), "--export-identity", "-o", str(tmp_path / "id")
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "id").stat().st_mode) == 0o600
    opened = subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "id"), str(tmp_path / "c.age")],
        capture_output=True,
        check=True,
    )
    assert opened.stdout == data
    [row] = _copies(ws)
    assert row.key_exported is True
    [entry] = [e for e in _entries(ws) if e["kind"] == "config"]
    assert entry["method"] == "export-identity" and entry["count"] == 1
    assert str(entry["digest"]).startswith("hmac-sha256-sum:")
    assert str(tmp_path) not in json.dumps(entry)
    assert f"ledger entry {entry['seq']}".encode() in done.stdout


def _soon() -> object:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(days=1)
