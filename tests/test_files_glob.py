"""Globs and selections of files rules: pure logic, no file system."""

from __future__ import annotations

import fnmatch
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retentiond.engine import HoldSpec
from retentiond.stores.files.globs import GlobError, compile_glob
from retentiond.stores.files.selection import hold_prefixes, holds_touch_dir, make_selection


@pytest.mark.parametrize(
    ("glob", "path", "expected"),
    [
        ("**/*.csv", "a.csv", True),
        ("**/*.csv", "x/y/z/a.csv", True),
        ("**/*.csv", "x/a.csv.gz", False),
        ("**/*.csv", ".hidden.csv", True),
        ("*.csv", "a.csv", True),
        ("*.csv", "x/a.csv", False),
        ("exports/*.csv", "exports/a.csv", True),
        ("exports/*.csv", "exports/2024/a.csv", False),
        ("exports/*.csv", "other/a.csv", False),
        ("exports/**/*.csv", "exports/a.csv", True),
        ("exports/**/*.csv", "exports/1/2/a.csv", True),
        ("exports/**/*.csv", "exportsx/a.csv", False),
        ("tmp/**", "tmp/a", True),
        ("tmp/**", "tmp/a/b/c", True),
        ("tmp/**", "tmpx/a", False),
        ("a/**/b/*.dump", "a/b/x.dump", True),
        ("a/**/b/*.dump", "a/1/2/b/x.dump", True),
        ("a/**/b/*.dump", "a/1/2/c/x.dump", False),
        ("lab-??.csv", "lab-01.csv", True),
        ("lab-??.csv", "lab-1.csv", False),
        ("lab-[0-9]*.csv", "lab-7x.csv", True),
        ("lab-[!0-9]*.csv", "lab-7x.csv", False),
        ("lab-[!0-9]*.csv", "lab-x.csv", True),
        ("dump-*", "dump-2024.sql", True),
        ("dump-*.sql", "dump-2024.sql", True),
        ("dump-*.sql", "dump-.sq", False),
        ("report.csv", "report.csv", True),
        ("report.csv", "xreport.csv", False),
        ("*", "a\nb", True),
        ("*.csv", "bad\udcff.csv", True),
        ("x/*/y.csv", "x/a/b/y.csv", False),
        ("x/*/y.csv", "x/a/y.csv", True),
        ("[/]*", "/x", False),
        ("a[!x]b/*", "a/b/c", False),
        ("[abc", "[abc", True),
    ],
)
def test_glob_matches_paths_relative_to_the_root(glob: str, path: str, expected: bool) -> None:
    assert compile_glob(glob).matches(path) is expected


def test_literal_leading_directories_and_depth_limit_the_walk() -> None:
    assert compile_glob("exports/2024/*.csv").fixed_dirs == ("exports", "2024")
    assert compile_glob("exports/2024/*.csv").max_depth == 2
    assert compile_glob("exports/*/x/*.csv").fixed_dirs == ("exports",)
    assert compile_glob("*.csv").max_depth == 0
    assert compile_glob("**/*.csv").max_depth is None
    assert compile_glob("a/**").max_depth is None


@pytest.mark.parametrize("bad", ["", "/", "a/../b", "[z-a].csv"])
def test_bad_globs_are_refused(bad: str) -> None:
    with pytest.raises(GlobError):
        compile_glob(bad)


def _not_dots(text: str) -> bool:
    return text not in (".", "..")  # never the name of a file, and refused as globs


names = st.text(alphabet=st.sampled_from("ab.-_*?x\n"), min_size=1, max_size=8).filter(_not_dots)
patterns = st.text(alphabet=st.sampled_from("ab.*?x"), min_size=1, max_size=6).filter(_not_dots)


@given(pattern=patterns, name=names)
def test_one_component_matches_like_fnmatch(pattern: str, name: str) -> None:
    assert compile_glob(pattern).matches(name) == fnmatch.fnmatchcase(name, pattern)


@given(
    dirs=st.lists(st.text(alphabet="abc", min_size=1, max_size=3), max_size=4),
    name=st.text(alphabet="abc.", min_size=1, max_size=5).filter(_not_dots),
)
def test_double_star_spans_any_number_of_directories(dirs: list[str], name: str) -> None:
    path = "/".join([*dirs, name])
    assert compile_glob("**/" + name).matches(path)
    assert compile_glob("**").matches(path)
    assert compile_glob("*").matches(path) == (not dirs)


def _holds(*prefixes: str | None) -> tuple[HoldSpec, ...]:
    return tuple(HoldSpec(reason="case 17", path_prefix=p) for p in prefixes)


def test_hold_prefixes_are_relative_and_a_pathless_hold_keeps_everything() -> None:
    root = PurePosixPath("/srv/transfer")
    assert hold_prefixes(_holds("audit/", "./x", "/srv/transfer/y/", "/elsewhere/z"), root) == (
        "audit/",
        "x",
        "y/",
    )
    assert hold_prefixes(_holds(None), root) == ("",)


def test_selection_per_directory_applies_excludes_and_holds() -> None:
    selection = make_selection(
        "**/*.csv", ["keep/**", "**/*-final.csv"], _holds("audit/", "b/case-"), PurePosixPath("/r")
    )
    root = selection.in_dir("")
    assert root is not None and root.matches is not None
    assert root.matches("a.csv") and not root.matches("a.txt")
    everything = make_selection("**", [], (), PurePosixPath("/r")).in_dir("x/y")
    assert everything is not None and everything.matches is None  # no per-file test at all
    assert root.excluded is not None and root.excluded("x-final.csv")
    assert not root.excluded("x.csv")
    keep = selection.in_dir("keep/sub")
    assert keep is not None and keep.excluded is not None and keep.excluded("a.csv")
    audit = selection.in_dir("audit/2026")
    assert audit is not None and audit.held("anything.csv")
    b = selection.in_dir("b")
    assert b is not None and b.held("case-1.csv") and not b.held("other.csv")
    assert not selection.in_dir("c").held("case-1.csv")  # type: ignore[union-attr]
    assert make_selection("exports/*.csv", [], (), PurePosixPath("/r")).in_dir("other") is None


def test_a_hold_touching_a_copy_keeps_the_whole_copy() -> None:
    assert holds_touch_dir(("copies/2026/",), "copies/2026")
    assert holds_touch_dir(("copies/2026/one.csv",), "copies/2026")
    assert holds_touch_dir(("copies/",), "copies/2026")
    assert holds_touch_dir(("",), "copies/2026")
    assert not holds_touch_dir(("copies/2027",), "copies/2026")
    assert not holds_touch_dir(("copies/20260",), "copies/2026")
