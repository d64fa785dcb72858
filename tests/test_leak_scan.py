"""Leak scan: known personal values and secrets, every command, every output an outsider can read.

The test data carries patient names and ids, file names, a database password (password_file), a
metrics basic-auth password, and the key-encryption and signing keys. Every command runs as a user
runs it (init, check, plan, apply, status, hold add/list/release, seal, unseal, ledger
show/export/verify/proof, run with its metrics endpoint, and a run killed with -9 then reconciled);
their stdout, stderr, the daemon's log, the metrics text, the ledger entries, the export and the
proof are scanned for every value in its raw, hex, base64 and JSON-escaped forms. Keyed digests are
allowed (they are what the ledger is for). Expected hits: none. Unsealed plaintext on stdout is the
point of `unseal`, so only its stderr is scanned.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import bcrypt
from sqlalchemy import create_engine, text

from retentiond import keystore
from tests.configs import lab_results_rule, patient_hold
from tests.daemon_support import DaemonProcess, cli, free_port, write_daemon_config
from tests.fault_support import ROOT, check, child_env, entries, record
from tests.files_support import seed

PATIENTS = ["DUPONT-Marie-Zx91", "LEFEBVRE-Jacques-Qv27", "Müller-Zoë-Kp55"]
PATIENT_IDS = [4021177, 4021178, 4021179]
FILE_NAMES = ["PATIENT-LEFEBVRE-88231.csv", "résultats-GARCIA-77102.csv"]
DB_PASSWORD = "S3cr3t-DB-pw-Q7xW"
METRICS_PASSWORD = "Metr1cs-pw-Hh4Lp"
SEALED_CONTENT = "SEALED-DUMP-ROUSSEAU-66120"


def _forms(value: str | bytes) -> set[str]:
    """A value as it could show up in text: raw, JSON-escaped, hex and base64."""
    raw = value.encode() if isinstance(value, str) else value
    forms = {raw.hex(), base64.b64encode(raw).decode().rstrip("=")}
    forms.add(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    if isinstance(value, str):
        forms |= {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    return {f for f in forms if len(f) >= 6}


def _scan(where: str, haystack: str | bytes, needles: dict[str, set[str]]) -> list[str]:
    hay = haystack.decode(errors="replace") if isinstance(haystack, bytes) else haystack
    hits = [f"{where}: {what}" for what, forms in needles.items() if any(f in hay for f in forms)]
    record("leak scan", scanned=1, leaks=len(hits))
    return hits


def _target(pg_database: str) -> None:
    engine = create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE results (id int PRIMARY KEY, patient_id int, name text, "
                "validated_at timestamptz NOT NULL, comment text)"
            )
        )
        for i in range(60):
            conn.execute(
                text("INSERT INTO results VALUES (:i, :p, :n, now() - :d * interval '1 day', :c)"),
                {
                    "i": i,
                    "p": PATIENT_IDS[i % 3],
                    "n": PATIENTS[i % 3],
                    "d": 90 if i % 3 else 2,
                    "c": f"note about {PATIENTS[i % 3]}",
                },
            )
    engine.dispose()


def test_no_personal_value_or_secret_reaches_any_output(tmp_path: Path, pg_database: str) -> None:
    _target(pg_database)
    root = tmp_path / "transfer"
    for name in FILE_NAMES:
        seed(root, f"exports/{name}", 40)
    password_file = tmp_path / "db.password"
    password_file.write_text(DB_PASSWORD + "\n")
    os.chmod(password_file, 0o600)
    hashed = bcrypt.hashpw(METRICS_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    port = free_port()
    config = write_daemon_config(
        tmp_path / "etc",
        f"""
[stores.lims]
kind = "sql"
url = "{pg_database}"
password_file = "{password_file}"

[stores.transfer]
kind = "files"
root = "{root}"

{lab_results_rule(table="public.results", max_fraction=1.0)}
[[rules]]
name = "lab-mask"
store = "lims"
table = "public.results"
age_column = "validated_at"
retain = "1d"
action = "mask"
columns = ["comment"]
max_fraction = 1.0
enabled = false

[[rules]]
name = "transfer-exports"
store = "transfer"
glob = "**/*.csv"
retain = "7d"
action = "delete"
max_fraction = 1.0

[[rules]]
name = "sealed-copies"
action = "shred"
{patient_hold(PATIENT_IDS[0])}""",
        port=port,
        schedule="every 10s",
        metrics_extra=f'basic_auth_users = {{ prometheus = "{hashed}" }}',
    )
    outputs: list[tuple[str, str | bytes]] = []

    def run(*args: str, stdin: bytes | None = None, scan_stdout: bool = True) -> None:
        done = cli(config, *args, stdin=stdin)
        label = " ".join(args)
        assert done.returncode in (0, 4), (label, done.stderr)
        outputs.append((f"{label} (stderr)", done.stderr))
        if scan_stdout:
            outputs.append((f"{label} (stdout)", done.stdout))

    run("init")
    run("check")
    run("check", "--connect")
    run("plan")
    run("plan", "--json")
    run(
        "hold",
        "add",
        "--rule",
        "lab-results",
        "--where",
        f"patient_id={PATIENT_IDS[1]}",
        "--reason",
        "inspection 12",
    )
    run(
        "hold",
        "add",
        "--rule",
        "transfer-exports",
        "--path",
        f"exports/{FILE_NAMES[1]}",
        "--reason",
        "inspection 13",
    )
    run("hold", "list")
    run("hold", "list", "--json")
    sealed = tmp_path / "dump.age"
    run("seal", "-", "-o", str(sealed), "--expires", "1s", stdin=SEALED_CONTENT.encode())
    run("unseal", str(sealed), scan_stdout=False)
    run("-v", "apply")
    run("hold", "release", "2", "--reason", "inspection closed")
    time.sleep(1.1)
    run("-v", "apply")
    run("status")
    run("status", "--json")
    run("ledger", "show")
    run("ledger", "show", "--json")
    run("ledger", "verify")
    export = tmp_path / "export"
    run("ledger", "export", str(export))
    run("ledger", "verify", "--export", str(export))
    proof = tmp_path / "e.proof"
    run("ledger", "proof", "3", "-o", str(proof))
    for path in [*sorted(export.iterdir()), proof]:
        outputs.append((f"file {path.name}", path.read_bytes()))

    # The daemon and its metrics endpoint, with credentials.
    daemon = DaemonProcess(config, port)
    try:
        daemon.wait_http()
        token = base64.b64encode(f"prometheus:{METRICS_PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Basic {token}"}
        )
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = response.read().decode()
            if "retentiond_rule_runs_total" in body:
                break
            time.sleep(0.3)
        outputs.append(("metrics", body))
        check("leak scan", "retentiond_rule_runs_total" in body, "no runs in the metrics")
        code, _ = daemon.stop()
        assert code == 0, daemon.log
    finally:
        daemon.close()
    outputs.append(("daemon log", daemon.log))

    # A run killed with -9 and reconciled by the next apply.
    _target_more(pg_database)
    child = subprocess.Popen(
        [sys.executable, "-m", "retentiond", "-c", str(config), "-v", "apply"],
        cwd=ROOT,
        env=child_env({"RETENTIOND_DAEMON__BATCH_BUDGET_MS": "5"}),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    time.sleep(1.0)
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=60)
    outputs += [("killed apply (stdout)", out), ("killed apply (stderr)", err)]
    run("-v", "apply")

    state = f"sqlite:///{tmp_path / 'etc' / 'state.db'}"
    outputs.append(("ledger entries", json.dumps(entries(state))))

    kek = keystore.read_kek_file(tmp_path / "etc" / "kek")
    signer = (tmp_path / "etc" / "ledger.key").read_text().strip()
    needles: dict[str, set[str]] = {}
    for value in [*PATIENTS, *FILE_NAMES, SEALED_CONTENT]:
        needles[f"personal value {value[:4]}..."] = _forms(value)
    for number in PATIENT_IDS:
        needles[f"patient id {str(number)[:3]}..."] = {str(number)}
    needles["database password"] = _forms(DB_PASSWORD)
    needles["metrics password"] = _forms(METRICS_PASSWORD)
    for gen, key in kek.items():
        needles[f"kek generation {gen}"] = _forms(key)
    needles["signing key"] = _forms(signer) | _forms(signer.rsplit("+", 1)[-1])
    hits = [hit for where, data in outputs for hit in _scan(where, data, needles)]
    check("leak scan", not hits, hits)
    # And the scan itself can see: the values really are in the data that was purged.
    control = f"x {PATIENTS[0]} y"
    check("leak scan", any(f in control for f in needles[f"personal value {PATIENTS[0][:4]}..."]))


def _target_more(pg_database: str) -> None:
    """Enough expired rows for a kill to land inside a run."""
    engine = create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO results SELECT 1000 + i, :p, :n, now() - interval '90 days', :c "
                "FROM generate_series(1, 30000) i"
            ),
            {"p": PATIENT_IDS[2], "n": PATIENTS[2], "c": f"note about {PATIENTS[2]}"},
        )
    engine.dispose()
