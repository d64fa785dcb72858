"""Sealed copies against the `age` command, side by side in one run; prints ratios, not absolutes.

    python bench/bench_seal.py            # 1 GiB, 3 rounds (about a minute on 2 cores)
    python bench/bench_seal.py --quick    # 64 MiB, 2 rounds

Figures (each the ratio of medians over the rounds, the baseline measured in the same round):

- seal throughput / `age -r RECIPIENT` throughput, the command line end to end (target >= 0.9);
  also the in-process seal (`seal_copy`, no interpreter start) for reference;
- unseal throughput / `age -d` throughput, the command line end to end (target >= 0.9);
- time to shred a SIZE copy / time to shred a 1 KiB copy (target <= 2): until the key is gone and
  the ledger entry committed; the ciphertext file is then removed in the background (its time is
  printed apart: on ext4 mounted with `discard` an unlink costs in proportion to the size);
- peak RSS of `retentiond seal -` reading SIZE from a pipe (target < 100 MB).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from retentiond.commands.init import init  # noqa: E402
from retentiond.journal import StateJournal  # noqa: E402
from retentiond.seal.agefile import Identity  # noqa: E402
from retentiond.seal.copy import seal_copy  # noqa: E402
from retentiond.state.db import create_state_engine  # noqa: E402
from retentiond.stores.sealed import ShredTarget  # noqa: E402

MIB = 1024 * 1024


def write_config(directory: Path) -> Path:
    config = directory / "config.toml"
    config.write_text(
        f'[daemon]\nstate_url = "sqlite:///{directory / "state.db"}"\n\n'
        f'[ledger]\nsigning_key_file = "{directory / "ledger.key"}"\n\n'
        f'[keys]\nkek_file = "{directory / "kek"}"\n\n'
        '[[rules]]\nname = "sealed-copies"\naction = "shred"\n'
    )
    os.chmod(config, 0o600)
    return config


def make_input(path: Path, size: int) -> None:
    block = os.urandom(4 * MIB)
    with open(path, "wb") as handle:
        for offset in range(0, size, len(block)):
            handle.write(block[: min(len(block), size - offset)])


def timed(action: Callable[[], object]) -> float:
    # Every measurement starts with no dirty pages, so that one does not pay for another's writes.
    os.sync()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def timed_run(action: Callable[[], float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a command run by `action`, from a clean page cache state."""
    os.sync()
    started = time.perf_counter()
    used = action()
    return time.perf_counter() - started, used


def run(*args: str) -> float:
    """Run a command to its end; returns the CPU seconds it and its children used."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, cwd=ROOT)
    _pid, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{args[0]} {args[1]}... failed")
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the sealed file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64 MiB, 2 rounds")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: /tmp)")
    args = parser.parse_args()
    size = (64 if args.quick else args.size_mb) * MIB
    rounds = 2 if args.quick else args.rounds
    if shutil.which("age") is None:
        print("the age command is not installed (apt-get install age)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-seal-", dir=args.dir))
    try:
        return bench(work, size, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, size: int, rounds: int) -> int:
    config = write_config(work)
    init(config, io.StringIO())
    engine = create_state_engine(f"sqlite:///{work / 'state.db'}")
    kek_file = work / "kek"
    source = work / "plain.bin"
    make_input(source, size)
    identity = Identity.generate()
    (work / "age.key").write_text(identity.encode() + "\n")
    cli = [sys.executable, "-m", "retentiond", "-c", str(config)]
    times: dict[str, list[float]] = {
        k: []
        for k in (
            "age_enc",
            "seal",
            "seal_inproc",
            "age_dec",
            "unseal",
            "big",
            "small",
            "file_removal",
        )
    }
    cpu: dict[str, list[float]] = {k: [] for k in ("age_enc", "seal", "age_dec", "unseal")}
    expired = datetime.now(UTC) - timedelta(seconds=1)

    def inproc(path: Path, data_path: Path) -> None:
        with open(data_path, "rb", buffering=0) as stream:
            seal_copy(engine, kek_file, stream.readinto, path, expired, None)

    def shred_one() -> tuple[float, float]:
        shredder = ShredTarget(engine, kek_file, "sealed-copies", "sha256:bench", ())
        plan = shredder.plan()
        journal = StateJournal(engine, "bench", b"k" * 32, False)
        took = timed(lambda: shredder.execute(plan, journal, threading.Event()))
        # The ciphertext file goes in the background once the key is gone; timed apart.
        return took, timed(shredder.wait_for_files)

    small = work / "small.bin"
    small.write_bytes(os.urandom(1024))

    def one_round(i: int) -> None:
        by_age, ours = work / f"age-{i}.age", work / f"seal-{i}.age"
        recipient = identity.recipient()
        key = str(work / "age.key")
        pairs = [
            ("age_enc", lambda: run("age", "-r", recipient, "-o", str(by_age), str(source))),
            ("seal", lambda: run(*cli, "seal", str(source), "-o", str(ours), "--expires", "30d")),
            ("age_dec", lambda: run("age", "-d", "-i", key, "-o", "/dev/null", str(by_age))),
            ("unseal", lambda: run(*cli, "unseal", str(ours), "-o", "-")),
        ]
        # Alternate who goes first, so that neither always meets a warmer cache.
        order = [0, 1, 2, 3] if i % 2 == 0 else [1, 0, 3, 2]
        for index in order:
            name, action = pairs[index]
            wall, used = timed_run(action)
            times[name].append(wall)
            cpu[name].append(used)
        by_age.unlink()
        ours.unlink()
        # Shredding: a SIZE copy, then a 1 KiB copy, each alone in its run.
        times["seal_inproc"].append(timed(lambda: inproc(work / f"big-{i}.age", source)))
        took, removal = shred_one()
        times["big"].append(took)
        times["file_removal"].append(removal)
        inproc(work / f"small-{i}.age", small)
        times["small"].append(shred_one()[0])

    for i in range(rounds):
        one_round(i)

    rss_kib = peak_rss_from_pipe(cli, source, work / "piped.age")
    engine.dispose()
    med = {k: statistics.median(v) for k, v in times.items()}

    def cpu_ratio(baseline: str, ours: str) -> float:
        # Throughput per CPU second: what a busy, shared machine is limited by.
        return statistics.median(cpu[baseline]) / statistics.median(cpu[ours])

    mib = size / MIB
    results = [
        ("seal / age -r (command line)", med["age_enc"] / med["seal"], ">= 0.9", 0.9, 1),
        ("seal / age -r (in process)", med["age_enc"] / med["seal_inproc"], "info", None, 1),
        ("unseal / age -d (command line)", med["age_dec"] / med["unseal"], ">= 0.9", 0.9, 1),
        (
            "seal / age -r, CPU seconds (command line)",
            cpu_ratio("age_enc", "seal"),
            "info",
            None,
            1,
        ),
        ("unseal / age -d, CPU seconds", cpu_ratio("age_dec", "unseal"), "info", None, 1),
        (f"shred {mib:.0f} MiB / shred 1 KiB", med["big"] / med["small"], "<= 2", 2.0, -1),
        (f"peak RSS sealing {mib:.0f} MiB from a pipe (MB)", rss_kib / 1024, "< 100", 100.0, -1),
        (f"background removal of the {mib:.0f} MiB file (s)", med["file_removal"], "info", None, 1),
    ]
    print(f"sealed copies, {mib:.0f} MiB, {rounds} rounds (medians; ratios of throughput)")
    print(f"  load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("  medians (s): " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    print("  CPU (s): " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in cpu.items()))
    failed = False
    for name, value, target, limit, sense in results:
        ok = limit is None or (value >= limit if sense > 0 else value < limit or value == limit)
        failed |= not ok
        verdict = "" if limit is None else ("ok" if ok else "MISSED")
        print(f"  {name:<42} {value:8.2f}   target {target:<7} {verdict}")
    return 1 if failed else 0


def peak_rss_from_pipe(cli: list[str], source: Path, output: Path) -> int:
    """Peak RSS (KiB) of `retentiond seal -` fed by `cat` through a pipe."""
    with open(source, "rb") as data:
        cat = subprocess.Popen(["cat"], stdin=data, stdout=subprocess.PIPE)
        seal = subprocess.Popen(
            [*cli, "seal", "-", "-o", str(output), "--expires", "1d"],
            stdin=cat.stdout,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        assert cat.stdout is not None
        cat.stdout.close()
        _pid, status, usage = os.wait4(seal.pid, 0)
        seal.returncode = os.waitstatus_to_exitcode(status)
        cat.wait()
    if seal.returncode != 0:
        raise SystemExit(f"seal from a pipe failed ({seal.returncode})")
    return usage.ru_maxrss


if __name__ == "__main__":
    sys.exit(main())
