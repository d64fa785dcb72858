"""`retentiond demo`: build a throwaway lab workspace and run the real engine on it, step by step."""

from __future__ import annotations

import io
import logging
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from retentiond.demo_workspace import HELD_PATIENTS, Workspace, build_workspace
from retentiond.errors import NotAvailable, RetentiondError, UsageError


def _step(
    out: TextIO,
    title: str,
    action: Callable[[TextIO], int],
    *,
    show: bool = True,
    expect_failure: bool = False,
) -> int:
    """Run one step, printing its title, its own output indented, and how long it took."""
    print(f"\n==> {title}", file=out, flush=True)
    started = time.monotonic()
    captured = io.StringIO()
    try:
        code = action(captured)
    except NotAvailable as exc:
        print(f"    (skipped: {exc})", file=out)
        return 0
    except RetentiondError as exc:
        if not expect_failure:
            raise
        captured.write(f"retentiond: {exc}\n")
        code = exc.exit_code
    if show:
        for line in captured.getvalue().rstrip().splitlines():
            print(f"    {line}", file=out)
    print(f"    [{time.monotonic() - started:.1f}s, exit {code}]", file=out, flush=True)
    return code


SHORT_DEADLINE = 3  # seconds: the demo's first sealed dump expires while the demo runs


def _facts(ws: Workspace) -> dict[str, int]:
    """What is really in the workspace now, counted directly (not from the engine's reports)."""
    cutoff = (datetime.now(UTC) - timedelta(days=3652.5)).strftime("%Y-%m-%d %H:%M:%S")
    conn = sqlite3.connect(ws.database)

    def one(sql: str, *args: object) -> int:
        return int(conn.execute(sql, args).fetchone()[0])

    try:
        held = ",".join(str(p) for p in HELD_PATIENTS)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        facts = {
            "results": one("SELECT count(*) FROM results"),
            "expired_results": one("SELECT count(*) FROM results WHERE validated_at < ?", cutoff),
            "held_expired_results": one(
                f"SELECT count(*) FROM results WHERE validated_at < ? AND patient_id IN ({held})",
                cutoff,
            ),
            "masked_patients": one("SELECT count(*) FROM patients WHERE phone IS NULL"),
            "staging_copy_present": int("export_v4" in tables),
        }
    finally:
        conn.close()
    files = [p for p in ws.transfer.rglob("*") if p.is_file()]
    facts["files"] = len(files)
    facts["csv_files"] = sum(p.suffix == ".csv" for p in files)
    facts["held_files"] = sum("audit-2026" in p.parts for p in files)
    facts["migration_folder_present"] = int((ws.transfer / "migration-2026").exists())
    return facts


def demo(directory: Path | None, clean: bool, out: TextIO) -> int:
    """Build a demo workspace, then init, check, plan, apply and verify on it with the real engine."""
    from retentiond.commands import check, daemon, init, purge, seal
    from retentiond.commands import ledger as ledger_commands

    # The steps print their own results; the engine's per-rule log lines would only repeat them.
    logging.getLogger("retentiond").setLevel(logging.WARNING)
    root = directory or Path(tempfile.mkdtemp(prefix="retentiond-demo-"))
    if directory is not None and directory.exists() and any(directory.iterdir()):
        raise UsageError(f"--dir: {directory} is not empty; give a new or empty folder")
    started = time.monotonic()
    print(f"retentiond demo: building a fake laboratory in {root}", file=out, flush=True)
    ws = build_workspace(root)
    before = _facts(ws)
    print(
        f"    {before['results']} lab results over 15 years ({before['expired_results']} older "
        f"than 10 years), 400 patients, {before['files']} files in the transfer folder",
        file=out,
    )
    cfg = ws.config
    short, kept = ws.root / "lab-dump-2026-11.age", ws.root / "lab-dump-archive.age"
    usb = ws.root / "usb-stick-copy.age"  # a copy made behind retentiond's back
    db = str(ws.database)
    codes = [
        _step(out, "retentiond init", lambda o: init.init(cfg, o)),
        _step(
            out,
            f"retentiond seal {ws.database.name} -o {short.name} --expires {SHORT_DEADLINE}s",
            lambda o: seal.seal(cfg, db, short, f"{SHORT_DEADLINE}s", "migration dump", o),
        ),
    ]
    sealed_at = time.monotonic()
    codes += [
        _step(
            out,
            f"retentiond seal {ws.database.name} -o {kept.name} --expires 30d",
            lambda o: seal.seal(cfg, db, kept, "30d", "archive dump", o),
        ),
        _step(out, "retentiond check --connect", lambda o: check.check(cfg, True, o)),
    ]
    shutil.copyfile(short, usb)
    # Let the first sealed dump reach its deadline, so that the shred rule has work to show.
    time.sleep(max(0.0, SHORT_DEADLINE + 0.3 - (time.monotonic() - sealed_at)))
    codes += [
        _step(out, "retentiond plan", lambda o: purge.plan(cfg, None, False, o)),
        _step(out, "retentiond apply", lambda o: purge.apply(cfg, None, False, o)),
        _step(out, "retentiond ledger verify", lambda o: ledger_commands.verify(cfg, None, o)),
        _step(out, "retentiond status", lambda o: daemon.status(cfg, False, o)),
    ]
    unseal_code = _step(
        out,
        f"retentiond unseal {usb.name} -o -   (a copy of the shredded dump: this must fail)",
        lambda o: seal.unseal(cfg, usb, "-", False, o),
        expect_failure=True,
    )
    after = _facts(ws)
    print("\n==> what changed (counted directly in the workspace)", file=out)
    print(
        f"    lab results: {before['results']} -> {after['results']}; expired results left: "
        f"{after['expired_results']} (all held: {after['held_expired_results']} for the court case)",
        file=out,
    )
    print(f"    patients with contact details masked: {after['masked_patients']}", file=out)
    print(
        f"    staging copy export_v4: {'still there' if after['staging_copy_present'] else 'dropped'}",
        file=out,
    )
    print(
        f"    transfer files: {before['files']} -> {after['files']} (held under audit-2026/: "
        f"{after['held_files']}); migration-2026/: "
        f"{'still there' if after['migration_folder_present'] else 'removed'}",
        file=out,
    )
    print(
        f"    sealed dumps: {short.name}: {'still there' if short.exists() else 'key destroyed, file deleted'}; "
        f"its copy {usb.name}: {'cannot be opened' if unseal_code != 0 else 'STILL OPENS'}; "
        f"{kept.name}: {'kept until its deadline' if kept.exists() else 'gone'}",
        file=out,
    )
    print(f"\nfinished in {time.monotonic() - started:.1f}s. Next, try:", file=out)
    for command in ("status", "ledger show", "hold list", "plan --json", "ledger export ./audit"):
        print(f"    retentiond -c {cfg} {command}", file=out)
    if clean:
        shutil.rmtree(root)
        print(f"(workspace {root} removed)", file=out)
    return max(codes) if any(codes) else 0
