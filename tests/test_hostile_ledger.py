"""Tampered ledger exports and proof files, and malformed age files given to `unseal`.

Random byte flips in an export or a proof: verification exits 3 with a report, never a traceback.
A malformed sealed file: a clear error (exit 1 or 2), and no plaintext written anywhere.
"""

from __future__ import annotations

import io
import os
import random
import shutil
from pathlib import Path

import pyrage
import pytest

from retentiond.commands import ledger as ledger_commands
from retentiond.errors import RetentiondError
from tests.fault_support import SEED, check, no_traceback, record
from tests.ledger_support import build_workspace
from tests.seal_support import make_workspace

FLIPS = int(os.environ.get("RETENTIOND_TEST_FLIPS", "60"))


def _verify_export(directory: Path) -> int:
    try:
        return ledger_commands.verify(None, directory, io.StringIO())
    except RetentiondError as exc:
        return exc.exit_code


def _flip(path: Path, rng: random.Random) -> bool:
    """Change 1 to 3 random bytes of `path`; False when the bytes did not change."""
    data = bytearray(path.read_bytes())
    before = bytes(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data))
        data[at] ^= rng.randint(1, 255)
    path.write_bytes(bytes(data))
    return bytes(data) != before


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """A real ledger, exported for an auditor."""
    workspace = build_workspace(tmp_path / "ws")
    directory = tmp_path / "export"
    workspace.export(directory)
    workspace.engine.dispose()
    return directory


def test_random_byte_flips_in_an_export_are_reported(exported: Path, tmp_path: Path) -> None:
    assert _verify_export(exported) == 0
    rng = random.Random(SEED)
    files = sorted(p.name for p in exported.iterdir() if p.is_file())
    for trial in range(FLIPS):
        copy = tmp_path / f"t{trial}"
        shutil.copytree(exported, copy)
        victim = copy / files[trial % len(files)]
        if not _flip(victim, rng):
            continue
        record("tampered ledger", bad_inputs=1)
        # Anything but a clean verdict of tampering (an exception, exit 0) is a violation.
        check("tampered ledger", _verify_export(copy) == 3, (victim.name, trial))
        shutil.rmtree(copy)
    # The command line too, on a few: exit 3, a report, no traceback.
    for trial in range(3):
        copy = tmp_path / f"cli{trial}"
        shutil.copytree(exported, copy)
        _flip(copy / files[trial % len(files)], rng)
        done = _cli("ledger", "verify", "--export", str(copy))
        check("tampered ledger", done.returncode == 3 and no_traceback(done), done.stderr)


def _cli(*args: str, config: Path | None = None) -> object:
    from tests.seal_support import cli

    return cli(*(("-c", str(config)) if config else ()), *args)


def test_random_byte_flips_in_a_proof_are_reported(tmp_path: Path) -> None:
    workspace = build_workspace(tmp_path / "ws")
    proof = tmp_path / "entry.proof"
    made = _cli("ledger", "proof", "4", "-o", str(proof), config=workspace.config)
    assert made.returncode == 0, made.stderr  # type: ignore[attr-defined]
    good = proof.read_bytes()
    assert ledger_commands.check_proof(proof, None, io.StringIO()) == 0
    public = next(workspace.directory.glob("*.pub"), None)
    rng = random.Random(SEED + 1)
    for trial in range(FLIPS):
        proof.write_bytes(good)
        if not _flip(proof, rng):
            continue
        record("tampered proof", bad_inputs=1)
        try:
            code = ledger_commands.check_proof(proof, public, io.StringIO())
        except RetentiondError as exc:
            code = exc.exit_code
        check("tampered proof", code == 3, (trial, code))
    workspace.engine.dispose()


# -- malformed age files -------------------------------------------------------------------------


def _malformed(good: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    header_end = good.index(b"\n---") + 1
    other = pyrage.encrypt(b"lab export", [pyrage.x25519.Identity.generate().to_public()])
    cases = [
        ("empty", b""),
        ("header only", good[:header_end]),
        ("truncated body", good[:-7]),
        ("truncated header", good[: header_end // 2]),
        ("random bytes", rng.randbytes(400)),
        ("not age", b"age-encryption.org/v2\n-> X25519 abc\n--- x\n" + rng.randbytes(64)),
        ("someone else's copy", other),
        ("extra bytes", good + b"\x00" * 17),
    ]
    for i in range(8):
        data = bytearray(good)
        at = rng.randrange(len(data))
        data[at] ^= rng.randint(1, 255)
        cases.append((f"flip {i} at {at}", bytes(data)))
    return cases


def test_unseal_refuses_malformed_age_files_and_writes_nothing(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    sealed = tmp_path / "lims.age"
    done = workspace.cli(
        "seal", "-", "-o", str(sealed), "--expires", "30d", stdin=b"PATIENT-DUPONT"
    )
    assert done.returncode == 0, done.stderr
    good = sealed.read_bytes()
    rng = random.Random(SEED + 2)
    for name, data in _malformed(good, rng):
        if data == good:
            continue
        bad = tmp_path / "bad.age"
        bad.write_bytes(data)
        out = tmp_path / "out.sql"
        to_file = workspace.cli("unseal", str(bad), "-o", str(out))
        to_stdout = workspace.cli("unseal", str(bad))
        record("malformed age", bad_inputs=2)
        for result in (to_file, to_stdout):
            check("malformed age", result.returncode in (1, 2), (name, result.returncode))
            check("malformed age", no_traceback(result), (name, result.stderr))
            check("malformed age", b"PATIENT" not in result.stdout, (name, "plaintext leaked"))
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("out")]
        check("malformed age", not leftovers, (name, leftovers))
    # The good file still opens: the refusals changed nothing.
    opened = workspace.cli("unseal", str(sealed))
    assert opened.returncode == 0 and opened.stdout == b"PATIENT-DUPONT", opened.stderr
    workspace.engine.dispose()


def test_unseal_of_a_copy_past_its_shred_is_a_clear_error(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    sealed = tmp_path / "old.age"
    done = workspace.cli("seal", "-", "-o", str(sealed), "--expires", "1s", stdin=b"PATIENT-X")
    assert done.returncode == 0, done.stderr
    kept = tmp_path / "kept.age"
    shutil.copy(sealed, kept)  # a copy the daemon does not know of
    import time

    time.sleep(1.2)
    assert workspace.cli("apply").returncode == 0
    opened = workspace.cli("unseal", str(kept), "-o", str(tmp_path / "out.sql"))
    record("malformed age", bad_inputs=1)
    check("malformed age", opened.returncode in (1, 2) and no_traceback(opened), opened.stderr)
    check("malformed age", not (tmp_path / "out.sql").exists(), "partial output")
    workspace.engine.dispose()
