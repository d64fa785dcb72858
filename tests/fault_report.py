"""Run the fault, hostile-input and leak suites and write their figures into README.md.

    python -m tests.fault_report            # run the suites, then rewrite the README table
    python -m tests.fault_report --from DIR # only render a tally already collected in DIR

The table sits between `<!-- reliability:start -->` and `<!-- reliability:end -->`; every figure in
it comes from the tally the tests write (tests/fault_support.py), never from a hand-written number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tests.fault_support import ROOT, TALLY_ENV

START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
SUITES = [
    "tests/test_fault_kill.py",
    "tests/test_fault_sql.py",
    "tests/test_fault_restart.py",
    "tests/test_fault_state.py",
    "tests/test_hostile_config.py",
    "tests/test_hostile_sql.py",
    "tests/test_hostile_files.py",
    "tests/test_hostile_ledger.py",
    "tests/test_hostile_http.py",
    "tests/test_leak_scan.py",
]
FIELDS = ("faults", "trials", "checks", "violations", "bad_inputs", "scanned", "leaks")


def collect(directory: Path) -> dict[str, dict[str, int]]:
    """Add up every tally line in `directory`, per area."""
    areas: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for path in sorted(directory.glob("tally-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            area = areas[item.pop("area")]
            for key in FIELDS:
                area[key] += int(item.get(key, 0))
    return dict(sorted(areas.items()))


def render(areas: dict[str, dict[str, int]], summary: str) -> str:
    """The Markdown table with a total row, and the summary line under it."""
    head = (
        "area",
        "faults injected",
        "trials",
        "invariant checks",
        "invariant violations",
        "bad inputs tried",
        "outputs scanned",
        "leaks found",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total = dict.fromkeys(FIELDS, 0)
    for name, counts in areas.items():
        for key in FIELDS:
            total[key] += counts[key]
        lines.append("| " + " | ".join([name, *(str(counts[k]) for k in FIELDS)]) + " |")
    lines.append("| **total** | " + " | ".join(f"**{total[k]}**" for k in FIELDS) + " |")
    return "\n".join(lines) + "\n\n" + summary + "\n"


def write_readme(table: str, readme: Path = ROOT / "README.md") -> None:
    """Replace what lies between the markers (they must already be in the README)."""
    text = readme.read_text(encoding="utf-8")
    before, start, rest = text.partition(START)
    _middle, end, after = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{readme}: the markers {START} and {END} are missing")
    readme.write_text(before + START + "\n" + table + END + after, encoding="utf-8")


def main() -> int:
    """Run the suites (or read a tally), render the table and write it into README.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="render an existing tally only")
    args = parser.parse_args()
    if args.source is not None:
        areas = collect(args.source)
        summary = f"_Rendered from a collected tally ({args.source.name})._"
    else:
        with tempfile.TemporaryDirectory(prefix="reliability-") as directory:
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
                cwd=ROOT,
                env={**os.environ, TALLY_ENV: directory},
                check=False,
            )
            seconds = time.monotonic() - started
            areas = collect(Path(directory))
        verdict = "every test passed" if done.returncode == 0 else "SOME TESTS FAILED"
        summary = (
            f"_Produced by `python -m tests.fault_report` ({verdict}; {seconds:.0f} s on this "
            f"machine, seed {os.environ.get('RETENTIOND_TEST_SEED', '9')})._"
        )
    write_readme(render(areas, summary))
    print(render(areas, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
