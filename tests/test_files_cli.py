"""Files rules through the command line: ledger entries, guards, holds, the clock, and no file names
anywhere a user or an auditor can read (logs, output, ledger, export)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, update

from retentiond import keystore
from retentiond.ledger.digest import KeyDigest
from retentiond.state.models import ledger_head
from tests.configs import write_config
from tests.conftest import run_cli
from tests.files_support import seed, tree

# Names as they appear in real exports: a patient's name, a record number, accents, a newline.
SECRET_NAMES = [
    "DUPONT_Jean_1957-03-02.csv",
    "results/patient-40211-Müller.csv",
    "results/line\nbreak-GARCIA.csv",
]
FRAGMENTS = ["DUPONT", "Jean_1957", "40211", "Müller", "M\\u00fcller", "GARCIA", "line\nbreak"]


def _setup(tmp_path: Path, rule_extra: str = "", holds: str = "") -> tuple[Path, Path]:
    root = tmp_path / "transfer"
    for name in SECRET_NAMES:
        seed(root, name, 40, b"row;" * 25)
    for i in range(4):
        seed(root, f"results/young-{i}.csv", 1)
    config = write_config(
        tmp_path / "etc",
        f"""[stores.transfer]
kind = "files"
root = "{root}"

[[rules]]
name = "transfer-exports"
store = "transfer"
glob = "**/*.csv"
retain = "30d"
action = "delete"
{rule_extra}
{holds}""",
    )
    init = run_cli("--config", str(config), "init")
    assert init.returncode == 0, init.stderr
    return root, config


def _ledger(config: Path) -> list[dict[str, object]]:
    shown = run_cli("--config", str(config), "ledger", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    return [json.loads(line) for line in shown.stdout.splitlines() if line.strip()]


def test_apply_records_exact_counts_bytes_and_digest_and_never_a_file_name(tmp_path: Path) -> None:
    root, config = _setup(tmp_path)
    outputs = []
    for args in (("plan", "--json"), ("plan",), ("-v", "apply", "--json"), ("status", "--json")):
        done = run_cli("--config", str(config), *args)
        assert done.returncode == 0, done.stderr
        outputs += [done.stdout, done.stderr]
    assert tree(root) == {b"results"} | {f"results/young-{i}.csv".encode() for i in range(4)}

    (entry,) = [e for e in _ledger(config) if e["kind"] == "purge"]
    assert (entry["count"], entry["bytes"], entry["rule"]) == (3, 300, "transfer-exports")
    engine = create_engine(f"sqlite:///{tmp_path / 'etc' / 'state.db'}")
    with engine.connect() as conn:
        key = keystore.commitment_key(conn, tmp_path / "etc" / "kek")
    engine.dispose()
    expected = KeyDigest(key)
    expected.update(os.fsencode(name) for name in SECRET_NAMES)
    assert entry["digest"] == expected.hexdigest(), "the digest proves exactly these paths went"

    export = tmp_path / "export"
    exported = run_cli("--config", str(config), "ledger", "export", str(export))
    assert exported.returncode == 0, exported.stderr
    outputs += [p.read_text(errors="replace") for p in export.iterdir()]
    outputs.append(json.dumps(_ledger(config), ensure_ascii=False))
    readable = "\n".join(outputs)
    assert "transfer-exports" in readable  # the scan itself can find things
    for fragment in FRAGMENTS:
        assert fragment not in readable, (
            f"a file name reached logs, output or the ledger: {fragment}"
        )


def test_the_max_fraction_guard_refuses_the_whole_run(tmp_path: Path) -> None:
    root, config = _setup(tmp_path, "max_fraction = 0.25")
    before = tree(root)
    done = run_cli("--config", str(config), "apply")
    assert done.returncode == 4
    assert tree(root) == before
    (entry,) = [e for e in _ledger(config) if e["kind"] == "refused"]
    assert "max_fraction" in str(entry["reason"])


def test_the_max_items_guard_refuses_the_whole_run(tmp_path: Path) -> None:
    root, config = _setup(tmp_path, "max_items = 2")
    before = tree(root)
    assert run_cli("--config", str(config), "apply").returncode == 4
    assert tree(root) == before


def test_holds_from_the_config_and_from_hold_add_keep_their_files(tmp_path: Path) -> None:
    root, config = _setup(
        tmp_path,
        holds='[[holds]]\nrule = "transfer-exports"\npath = "DUPONT"\nreason = "court case 17"\n',
    )
    added = run_cli(
        "--config",
        str(config),
        "hold",
        "add",
        "--rule",
        "transfer-exports",
        "--path",
        "results/patient-",
        "--reason",
        "inspection 2026",
    )
    assert added.returncode == 0, added.stderr
    plan = run_cli("--config", str(config), "plan", "--json")
    (planned,) = json.loads(plan.stdout)["plans"]
    assert (planned["expired_items"], planned["held_items"]) == (1, 2)
    assert run_cli("--config", str(config), "apply").returncode == 0
    assert os.fsencode(SECRET_NAMES[0]) in tree(root)
    assert os.fsencode(SECRET_NAMES[1]) in tree(root)
    assert os.fsencode(SECRET_NAMES[2]) not in tree(root)


def test_a_clock_earlier_than_the_newest_ledger_entry_refuses_file_rules(tmp_path: Path) -> None:
    root, config = _setup(tmp_path)
    engine = create_engine(f"sqlite:///{tmp_path / 'etc' / 'state.db'}")
    with engine.begin() as conn:
        # As if an earlier run had written its entry when the clock read one day later than now.
        conn.execute(update(ledger_head).values(last_time=datetime.now(UTC) + timedelta(days=1)))
    engine.dispose()
    before = tree(root)
    done = run_cli("--config", str(config), "apply")
    assert done.returncode == 1
    assert "clock" in done.stdout + done.stderr
    assert tree(root) == before
