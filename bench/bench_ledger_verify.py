"""Benchmark: verifying and appending to the deletion ledger, against raw SHA-256 on this machine.

Builds a ledger of N realistic entries (default 1,000,000) in a temporary SQLite state database (or
an empty database given with --state-url), signs a checkpoint, then measures side by side, in the
same run:

- raw: hashlib SHA-256 over the bytes of every entry (the export's entries.jsonl, read in 1 MiB
  blocks): the machine's physical limit for anything that reads every entry; and hashlib SHA-256
  of each entry on its own, which any verifier of separate entries pays at least;
- verify: `verify_state` on the state database (entries/s), and `verify_export` on an export, as
  the command runs them (worker processes share the hashing, one per core up to two) and in one
  process;
- deep verify: the same with every entry also re-parsed and re-canonicalised;
- append: `append_entry` inside a transaction (ms per entry), and one transaction per entry.

Rounds are interleaved and the best of each is kept; wall-clock and CPU time are both shown (the
machine's cores are shared). CPU time counts this process and its workers: it shows what the
hashing costs in all, wall-clock what a user waits. Targets: verify at least 25% of the raw rate;
append under 1 ms per entry.
Usage: python bench/bench_ledger_verify.py [--entries N | --quick] [--state-url URL] [--rounds R]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from resource import RUSAGE_CHILDREN, RUSAGE_SELF, getrusage

from sqlalchemy import Engine, insert, update

from retentiond.ledger.entry import build_entry
from retentiond.ledger.export import write_export
from retentiond.ledger.fanout import Fanout, machine_fanout
from retentiond.ledger.merkle import CompactRange, leaf_hash
from retentiond.ledger.note import generate_signer_key, verifier_key
from retentiond.ledger.signing import key_verifier
from retentiond.ledger.store import append_entry, ensure_ledger, write_checkpoint
from retentiond.ledger.verify import ENTRIES_FILE, Report, verify_export, verify_state
from retentiond.state.db import create_state_engine
from retentiond.state.models import ledger_entry, ledger_head, metadata

ORIGIN = "lab.example.org/retentiond"
RULES = ["lab-results", "transfer-exports", "migration-staging", "sealed-copies"]
KINDS = ["purge", "purge", "purge", "drop", "shred", "refused", "hold", "error"]


def fields_for(i: int) -> dict[str, object]:
    """A realistic entry: what the runner writes for a purge, with a digest and a rule hash."""
    kind = KINDS[i % len(KINDS)]
    fields: dict[str, object] = {
        "kind": kind,
        "rule": RULES[i % len(RULES)],
        "rule_hash": "sha256:" + hashlib.sha256(b"rule%d" % (i % 4)).hexdigest(),
        "store": "lims",
        "target": "public.results",
        "cutoff": "2016-11-28T03:00:00.000000Z",
        "count": (i * 7919) % 100_000,
        "bytes": (i * 104_729) % 10_000_000_000,
        "method": "ctid-ranges",
        "run_id": str(uuid.UUID(int=i * 0x9E3779B97F4A7C15 % (1 << 128))),
        "digest": "hmac-sha256-sum:" + hashlib.sha256(b"%d" % i).hexdigest(),
        "clock": "database",
        "action": "delete",
    }
    if kind == "refused":
        fields["reason"] = "would delete 62% of public.results, more than max_fraction 50%"
    if kind == "error":
        fields["error"] = "OperationalError"
        fields["message"] = "see the daemon's log"
    return fields


def build(engine: Engine, count: int, signer_key: str) -> float:
    """Bulk-load `count` entries as append_entry would write them; returns the checkpoint time."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    edge = CompactRange()
    with engine.begin() as conn:
        ensure_ledger(conn, ORIGIN)
        batch: list[dict[str, object]] = []
        for i in range(count):
            moment = start + timedelta(milliseconds=i)
            data = build_entry(fields_for(i), seq=i, time=moment, origin=ORIGIN)
            leaf = leaf_hash(data)
            edge.append(leaf)
            batch.append(
                {"seq": i, "entry": data.decode(), "leaf_hash": leaf, "recorded_at": moment}
            )
            if len(batch) == 20_000:
                conn.execute(insert(ledger_entry), batch)
                batch = []
        if batch:
            conn.execute(insert(ledger_entry), batch)
        conn.execute(
            update(ledger_head).values(
                tree_size=count,
                root_hash=edge.root(),
                frontier=edge.to_bytes(),
                last_time=start + timedelta(milliseconds=count),
            )
        )
    began = time.perf_counter()
    with engine.begin() as conn:
        write_checkpoint(conn, signer_key)
    return time.perf_counter() - began


def raw_hash(path: Path) -> None:
    """hashlib SHA-256 over the entries' bytes, read in 1 MiB blocks: the physical limit."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)


def per_entry_hash(path: Path) -> None:
    """hashlib SHA-256 of each entry on its own: what any verifier of separate entries pays."""
    sha256 = hashlib.sha256
    with open(path, "rb") as handle:
        while lines := handle.readlines(1 << 22):
            for line in lines:
                sha256(line[:-1]).digest()


def load_average() -> str:
    """The machine's load over 1, 5 and 15 minutes (its cores are shared)."""
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (verify's workers)."""
    own, children = getrusage(RUSAGE_SELF), getrusage(RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Timings:
    """Best wall-clock and best CPU time of each measurement over interleaved rounds.

    CPU time is the fairer figure on a machine whose cores are shared: it does not count the time
    other processes hold the CPU. It counts verify's worker processes; PostgreSQL's own work is in
    wall time only.
    """

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.processes: dict[str, int] = {}

    def measure(self, label: str, func: Callable[[], object]) -> None:
        """Run `func` once, keep the best times; a verification that fails stops the benchmark."""
        wall, cpu = time.perf_counter(), cpu_seconds()
        result = func()
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        if isinstance(result, Report):
            if not result.ok:
                sys.exit(f"{label}: verification failed: {result.findings.lines()[:3]}")
            self.processes[label] = result.processes
        self.wall[label] = min(self.wall.get(label, float("inf")), wall)
        self.cpu[label] = min(self.cpu.get(label, float("inf")), cpu)


def append_cost(engine: Engine) -> tuple[float, float]:
    """(ms per append inside a transaction, commit excluded; ms per append with its own commit).

    Transactions of 10 appends, as a run writes a few entries: one transaction of thousands would
    measure PostgreSQL walking the head row's thousands of versions, which no run produces.
    """
    spent = 0.0
    for _ in range(200):
        with engine.begin() as conn:
            began = time.perf_counter()
            for i in range(10):
                append_entry(conn, fields_for(i))
            spent += time.perf_counter() - began
    in_tx = spent / 2000 * 1e3
    m = 200
    began = time.perf_counter()
    for i in range(m):
        with engine.begin() as conn:
            append_entry(conn, fields_for(i))
    per_tx = (time.perf_counter() - began) / m * 1e3
    return in_tx, per_tx


def main() -> int:
    """Build, measure, print the ratios against the targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 entries")
    parser.add_argument("--state-url", help="an EMPTY state database (default: temporary SQLite)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best is kept)")
    args = parser.parse_args()
    count = 20_000 if args.quick else args.entries
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        directory = Path(tmp)
        engine = create_state_engine(args.state_url or f"sqlite:///{directory / 'state.db'}")
        metadata.create_all(engine)
        signer_key = generate_signer_key(ORIGIN)
        verifier = key_verifier(signer_key)
        print(f"building a ledger of {count:,} entries ({engine.dialect.name}) ...")
        checkpoint_s = build(engine, count, signer_key)
        print(f"  first checkpoint (checks all {count:,} entries) {checkpoint_s:.2f} s")
        export_dir = directory / "export"
        with engine.connect() as conn:
            from retentiond.ledger.store import latest_checkpoint

            latest = latest_checkpoint(conn)
            assert latest is not None
            write_export(conn, export_dir, latest.note, verifier, verifier_key(signer_key))
        entries_path = export_dir / ENTRIES_FILE
        entries_path_size = entries_path.stat().st_size
        print(f"  average entry {(entries_path_size - count) / count:.0f} bytes")

        def state(deep: bool, fanout: Fanout) -> Report:
            with engine.connect() as conn:
                return verify_state(conn, verifier, deep=deep, fanout=fanout)

        workers, alone = machine_fanout(), Fanout(workers=1)
        print(f"  load average before measuring: {load_average()}")
        timings = Timings()
        for _ in range(args.rounds):  # interleaved, so that a busy moment hurts every figure alike
            timings.measure("raw SHA-256, one stream", lambda: raw_hash(entries_path))
            timings.measure("SHA-256 of each entry", lambda: per_entry_hash(entries_path))
            timings.measure("verify (state database)", lambda: state(False, workers))
            timings.measure("verify --export", lambda: verify_export(export_dir, fanout=workers))
            timings.measure("verify, one process", lambda: state(False, alone))
            timings.measure(
                "verify --export, one process", lambda: verify_export(export_dir, fanout=alone)
            )
        timings.measure("deep verify (state database)", lambda: state(True, workers))
        in_tx, per_tx = append_cost(engine)
        engine.dispose()

    print(f"measured (best of {args.rounds} interleaved rounds, same bytes):")
    print(
        f"  {'':<30} {'wall s':>7} {'cpu s':>7} {'entries/s wall':>15} {'cpu':>11} {'processes':>9}"
    )
    for label in timings.wall:
        wall, cpu = timings.wall[label], timings.cpu[label]
        rates = f"{count / wall:15,.0f} {count / cpu:11,.0f}"
        print(f"  {label:<30} {wall:7.2f} {cpu:7.2f} {rates} {timings.processes.get(label, 1):9}")
    megabytes = entries_path_size / timings.cpu["raw SHA-256, one stream"] / 1e6
    print(f"  raw SHA-256 runs at {megabytes:,.0f} MB/s here")
    print(f"  {'append, in a transaction':<30} {in_tx:8.3f} ms per entry")
    print(f"  {'append, one commit each':<30} {per_tx:8.3f} ms per entry")
    print("ratios to raw SHA-256 over the same bytes (target: verify >= 0.25; append < 1 ms):")
    verifies = (
        "verify (state database)",
        "verify --export",
        "verify, one process",
        "verify --export, one process",
        "deep verify (state database)",
    )
    for label in verifies:
        for base in ("raw SHA-256, one stream", "SHA-256 of each entry"):
            by_cpu = timings.cpu[base] / timings.cpu[label]
            by_wall = timings.wall[base] / timings.wall[label]
            print(f"  {label:<30} / {base:<24} cpu {by_cpu:5.3f}  wall {by_wall:5.3f}")
    print(f"  append in a transaction: {in_tx:.3f} ms ({'ok' if in_tx < 1 else 'ABOVE 1 ms'})")
    print(f"  load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
