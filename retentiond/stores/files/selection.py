"""Which files of a directory a files rule selects: its glob, its excludes and the path holds.

Everything here is decided once per directory (`Selection.in_dir`), so that the walk pays only a
string test per file. Holds are plain prefixes of the path relative to the store root, compared as
strings: `audit` holds `audit/...` and also `audit-2026.csv`. A hold must never keep less than its
author meant, so the broader reading wins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from retentiond.engine import HoldSpec
from retentiond.stores.files.globs import Glob, compile_glob

NameTest = Callable[[str], bool]


def hold_prefixes(holds: Iterable[HoldSpec], root: PurePosixPath) -> tuple[str, ...]:
    """The path prefixes (relative to `root`) that the holds keep; "" keeps everything.

    A hold that applies to the rule without naming a path keeps the whole rule. An absolute prefix
    under the root is made relative; one elsewhere concerns another store and keeps nothing here.
    """
    prefixes: list[str] = []
    for spec in holds:
        prefix = spec.path_prefix
        if prefix is None:
            prefixes.append("")
            continue
        if prefix.startswith("/"):
            root_text = str(root).rstrip("/") + "/"
            if not prefix.startswith(root_text):
                continue
            prefix = prefix[len(root_text) :]
        while prefix.startswith("./"):
            prefix = prefix[2:]
        prefixes.append(prefix)
    return tuple(dict.fromkeys(prefixes))


def holds_touch_dir(holds: Sequence[str], dir_rel: str) -> bool:
    """Whether a hold keeps anything at or under the directory `dir_rel`."""
    inside = dir_rel.rstrip("/") + "/"
    return any(inside.startswith(h) or h.startswith(inside) for h in holds)


def _any_of(tests: Sequence[NameTest]) -> NameTest:
    if len(tests) == 1:
        return tests[0]
    return lambda name: any(test(name) for test in tests)


@dataclass(frozen=True)
class DirView:
    """The rule as it applies to the files directly in one directory."""

    matches: NameTest | None  # the glob's name part; None when it is `*` (no test to make)
    excluded: NameTest | None  # None: no exclude applies here
    all_held: bool  # a hold covers the whole directory
    held_names: tuple[str, ...]  # name prefixes held here (str.startswith takes a tuple)

    def held(self, name: str) -> bool:
        """Whether a hold keeps the file `name` of this directory."""
        return self.all_held or (bool(self.held_names) and name.startswith(self.held_names))


@dataclass(frozen=True)
class Selection:
    """A files rule's glob, excludes and hold prefixes."""

    glob: Glob
    excludes: tuple[Glob, ...]
    holds: tuple[str, ...]

    def in_dir(self, dir_rel: str) -> DirView | None:
        """How the rule applies in `dir_rel` ("" for the root); None when no file there matches."""
        if not self.glob.dir_matches(dir_rel):
            return None
        excludes = [g.name_matches for g in self.excludes if g.dir_matches(dir_rel)]
        prefix = dir_rel + "/" if dir_rel else ""
        all_held = False
        names: list[str] = []
        for hold in self.holds:
            if prefix.startswith(hold):
                all_held = True
                break
            if hold.startswith(prefix) and "/" not in hold[len(prefix) :]:
                names.append(hold[len(prefix) :])
        return DirView(
            matches=None if self.glob.any_name else self.glob.name_matches,
            excluded=_any_of(excludes) if excludes else None,
            all_held=all_held,
            held_names=tuple(names),
        )


def make_selection(
    glob: str, excludes: Sequence[str], holds: Iterable[HoldSpec], root: PurePosixPath
) -> Selection:
    """Compile a rule's glob and excludes, and collect the hold prefixes that apply under `root`."""
    return Selection(
        glob=compile_glob(glob),
        excludes=tuple(compile_glob(e) for e in excludes),
        holds=hold_prefixes(holds, root),
    )
