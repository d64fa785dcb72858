"""`ledger show`, `export`, `proof` and `check-proof`, as a user and an auditor run them."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from retentiond.commands import ledger as ledger_commands
from retentiond.errors import UsageError, VerificationError
from retentiond.ledger.entry import parse_entry
from retentiond.ledger.note import generate_signer_key, verifier_key
from retentiond.ledger.signing import load_signer_key, local_copy_path
from retentiond.ledger.store import append_entry
from tests.conftest import run_cli
from tests.ledger_support import Workspace, build_workspace


@pytest.fixture
def space(tmp_path: Path) -> Iterator[Workspace]:
    workspace = build_workspace(tmp_path / "ws")
    yield workspace
    workspace.engine.dispose()


def run(command: object, *args: object) -> str:
    out = io.StringIO()
    assert command(*args, out) == 0  # type: ignore[operator]
    return out.getvalue()


def test_show_lists_entries_as_a_table_or_canonical_json(space: Workspace) -> None:
    table = run(ledger_commands.show, space.config, None, False).splitlines()
    assert table[0].split()[:3] == ["seq", "time", "(UTC)"]
    assert [line.split()[0] for line in table[1:]] == [str(i) for i in range(10)]
    assert "refused" in table[4] and "would delete 62% of the table" in table[4]
    lines = run(ledger_commands.show, space.config, None, True).splitlines()
    assert [parse_entry(line.encode())["seq"] for line in lines] == list(range(10))


def test_show_since_filters_by_time(space: Workspace) -> None:
    assert run(ledger_commands.show, space.config, "2999-01-01", False).strip() == "no entries"
    assert (
        len(run(ledger_commands.show, space.config, "2000-01-01T00:00:00Z", True).splitlines())
        == 10
    )
    with pytest.raises(UsageError, match="--since"):
        run(ledger_commands.show, space.config, "last tuesday", False)


def test_export_writes_what_an_auditor_needs(space: Workspace, tmp_path: Path) -> None:
    with space.engine.begin() as conn:
        append_entry(conn, {"kind": "config", "reason": "config reloaded"})  # not signed yet
    output = run(ledger_commands.export, space.config, tmp_path / "audit")
    assert "exported 11 entries" in output
    audit = tmp_path / "audit"
    assert sorted(p.name for p in audit.iterdir()) == ["checkpoint", "entries.jsonl", "ledger.pub"]
    assert len((audit / "entries.jsonl").read_bytes().splitlines()) == 11
    assert (audit / "ledger.pub").read_text().strip() == verifier_key(
        load_signer_key(space.key_file)
    )
    assert (audit / "checkpoint").read_text().split("\n")[1] == "11"  # signed on demand
    # The export's checkpoint is now the newest one kept beside the key.
    assert local_copy_path(space.key_file).read_text() == (audit / "checkpoint").read_text()
    assert "OK: 11 entries" in run(ledger_commands.verify, None, audit)


def test_a_proof_checks_alone_and_names_its_entry(space: Workspace, tmp_path: Path) -> None:
    proof_file = tmp_path / "entry5.tlog-proof"
    assert "proof of entry 5" in run(ledger_commands.proof, space.config, 5, proof_file)
    assert proof_file.read_text().startswith("c2sp.org/tlog-proof@v1\nextra ")
    checked = run(ledger_commands.check_proof, proof_file, None)
    assert "OK: entry 5 is in the signed checkpoint" in checked
    assert "carried by the proof itself" in checked
    assert '"seq": 5' in checked
    key = tmp_path / "ledger.pub"
    key.write_text(verifier_key(load_signer_key(space.key_file)) + "\n")
    assert "from " + str(key) in run(ledger_commands.check_proof, proof_file, key)


def test_a_proof_of_an_entry_not_yet_signed_signs_a_checkpoint_first(
    space: Workspace, tmp_path: Path
) -> None:
    with space.engine.begin() as conn:
        seq = append_entry(conn, {"kind": "config", "reason": "config reloaded"})
    run(ledger_commands.proof, space.config, seq, tmp_path / "p")
    assert "10 is in the signed checkpoint" in run(
        ledger_commands.check_proof, tmp_path / "p", None
    )
    with pytest.raises(UsageError, match="no ledger entry 11"):
        run(ledger_commands.proof, space.config, 11, tmp_path / "q")


def _edit_extra(text: str, change: object) -> str:
    lines = text.split("\n")
    extra = json.loads(base64.b64decode(lines[1].removeprefix("extra ")))
    change(extra)  # type: ignore[operator]
    lines[1] = "extra " + base64.b64encode(json.dumps(extra).encode()).decode()
    return "\n".join(lines)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: _edit_extra(
            t, lambda x: x.update(entry=x["entry"].replace('"count":105', '"count":1'))
        ),
        lambda t: t.replace("\nindex 5\n", "\nindex 6\n"),
        lambda t: t.replace(t.split("\n")[3], base64.b64encode(b"\x00" * 32).decode(), 1),
        lambda t: _edit_extra(
            t,
            lambda x: x.update(
                verifier_key=verifier_key(generate_signer_key("test.example.org/retentiond"))
            ),
        ),
    ],
    ids=["entry-edited", "index-changed", "path-hash-changed", "key-replaced"],
)
def test_a_tampered_proof_fails(space: Workspace, tmp_path: Path, tamper: object) -> None:
    proof_file = tmp_path / "p"
    run(ledger_commands.proof, space.config, 5, proof_file)
    proof_file.write_text(tamper(proof_file.read_text()))  # type: ignore[operator]
    with pytest.raises(VerificationError) as caught:
        run(ledger_commands.check_proof, proof_file, None)
    assert caught.value.exit_code == 3


def test_check_proof_exits_3_from_the_command_line(space: Workspace, tmp_path: Path) -> None:
    proof_file = tmp_path / "p"
    run(ledger_commands.proof, space.config, 2, proof_file)
    assert run_cli("ledger", "check-proof", str(proof_file), cwd=tmp_path).returncode == 0
    other = tmp_path / "other.pub"
    other.write_text(verifier_key(generate_signer_key("test.example.org/retentiond")))
    bad = run_cli(
        "ledger", "check-proof", str(proof_file), "--public-key", str(other), cwd=tmp_path
    )
    assert bad.returncode == 3
    assert "not signed by" in bad.stderr
