"""File names crafted for path tricks: `..`, absolute paths, newlines, invalid UTF-8, symlink loops,
in globs, excludes and path holds. Each is a clear error, or is handled inside the store root only:
nothing outside is touched, no symlink is followed, and the ledger counts exactly what went."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.configs import write_config
from tests.fault_support import check, cli, counted, no_traceback, record
from tests.files_support import seed, tree

BAD_GLOBS = ["../*.csv", "/etc/*", "**/../../*", "a/../../*.csv", "\x00.csv", ""]
BAD_HOLD_PATHS = ["../outside", "/etc", "a/../../b"]


def _config(tmp_path: Path, root: Path, rule: str = "", holds: str = "") -> Path:
    return write_config(
        tmp_path / "etc",
        f"""
[stores.transfer]
kind = "files"
root = "{root}"

[[rules]]
name = "transfer-exports"
store = "transfer"
retain = "7d"
action = "delete"
max_fraction = 1.0
{rule or 'glob = "**/*.csv"'}
{holds}
""",
    )


def _toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", "\\u0000") + '"'


@pytest.mark.parametrize("glob", BAD_GLOBS)
def test_globs_leaving_the_root_are_config_errors(tmp_path: Path, glob: str) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    seed(root, "a/e.csv", 30)
    seed(outside, "victim.csv", 30)
    config = _config(tmp_path, root, f"glob = {_toml(glob)}")
    done = cli(config, "apply")
    record("path tricks", bad_inputs=1)
    check("path tricks", done.returncode == 2 and no_traceback(done), done.stderr)
    check("path tricks", "rules[0].glob" in done.stderr, done.stderr)
    check("path tricks", (outside / "victim.csv").exists() and len(tree(root)) == 2, "touched")


def test_excludes_and_holds_with_path_tricks_are_refused_or_harmless(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    seed(root, "a/e.csv", 30)
    seed(outside, "victim.csv", 30)
    for n, prefix in enumerate(BAD_HOLD_PATHS):
        hold = f'[[holds]]\nrule = "transfer-exports"\npath = {_toml(prefix)}\nreason = "x y z"'
        config = _config(tmp_path / f"h{n}", root, holds=hold)
        done = cli(config, "apply")
        record("path tricks", bad_inputs=1)
        check("path tricks", done.returncode == 2 and no_traceback(done), done.stderr)
        check("path tricks", "holds[0].path" in done.stderr, done.stderr)
    plain = _config(tmp_path / "plain", root)
    assert cli(plain, "init").returncode == 0
    for prefix in BAD_HOLD_PATHS:
        added = cli(
            plain,
            "hold",
            "add",
            "--rule",
            "transfer-exports",
            "--path",
            prefix,
            "--reason",
            "x y z",
        )
        record("path tricks", bad_inputs=1)
        check("path tricks", added.returncode == 2 and no_traceback(added), added.stderr)
    # Excludes that leave the root are refused like globs.
    for n, exclude in enumerate(["../outside/**", "/etc/**", "**/../../**"]):
        config = _config(
            tmp_path / f"x{n}", root, f'glob = "**/*.csv"\nexclude = [{_toml(exclude)}]'
        )
        init = cli(config, "init")
        done = cli(config, "apply") if init.returncode == 0 else init
        record("path tricks", bad_inputs=1)
        check("path tricks", done.returncode == 2 and no_traceback(done), done.stderr)
        check("path tricks", "rules[0].exclude" in done.stderr, done.stderr)
    check("path tricks", (outside / "victim.csv").exists() and len(tree(root)) == 2, "touched")


def test_hostile_names_and_symlinks_inside_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    for i in range(3):
        seed(outside, f"victim{i}.csv", 30)
    names: list[bytes] = [
        b"line\nbreak.csv",
        b"bad-\xff\xfe-utf8.csv",
        b"..csv",
        b"...csv",
        b" leading space.csv",
        b"-rf.csv",
        b"dir\x1b[31m/ansi.csv",
        b"deep/" * 30 + b"far.csv",
    ]
    for name in names:
        seed(root, name, 30)
    seed(root, "young.csv", 1)
    # A symlink loop, a link to the outside (a directory and a file), and a dangling link.
    os.makedirs(root / "loop", exist_ok=True)
    os.symlink("..", root / "loop" / "up")
    os.symlink(root / "loop", root / "loop" / "self")
    os.symlink(outside, root / "outside-dir")
    os.symlink(outside / "victim0.csv", root / "link.csv")
    os.symlink(root / "nowhere", root / "dangling.csv")
    old = os.stat(outside / "victim0.csv").st_mtime
    config = _config(tmp_path, root)
    assert cli(config, "init").returncode == 0
    done = cli(config, "apply")
    record("path tricks", bad_inputs=len(names) + 5)
    check("path tricks", done.returncode == 0 and no_traceback(done), done.stderr)
    left = tree(root)
    check("path tricks", all(n not in left for n in names), sorted(left))
    check("path tricks", b"young.csv" in left, "a young file went")
    check(
        "path tricks",
        sorted(p.name for p in outside.iterdir()) == [f"victim{i}.csv" for i in range(3)],
        "outside touched",
    )
    check("path tricks", os.stat(outside / "victim0.csv").st_mtime == old, "outside rewritten")
    for link in ("loop/up", "loop/self", "outside-dir"):
        check("path tricks", os.path.islink(root / link), f"{link} removed")
    state = f"sqlite:///{tmp_path / 'etc' / 'state.db'}"
    check("path tricks", counted(state, "transfer-exports") == len(names), "ledger count")
    for name in names:
        check("path tricks", name.decode(errors="replace") not in done.stdout + done.stderr, name)
