"""Globs over paths relative to a store root: `**` spans directories, `*` and `?` never cross `/`.

A glob is split into its directory part and its name part, so that a walk matches the directory part
once per directory and only the name part once per file: that keeps the per-file cost to a string
test (`endswith` for the usual `*.csv`) instead of a regular expression over the whole path.

Unlike a shell, `*` also matches names that begin with a dot: a retention rule that silently skipped
hidden files would leave exactly the exports someone tried to tuck away.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_SPECIAL = frozenset("*?[")


class GlobError(ValueError):
    """A glob that cannot be compiled (the message never quotes a file name, only the pattern)."""


def _is_literal(component: str) -> bool:
    return not _SPECIAL.intersection(component)


def _translate_component(component: str) -> str:
    """Regex for one path component; nothing in it can match `/`."""
    out: list[str] = []
    i, n = 0, len(component)
    while i < n:
        char = component[i]
        i += 1
        if char == "*":
            # Several stars in a row inside a component mean the same as one.
            while i < n and component[i] == "*":
                i += 1
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            j = i
            if j < n and component[j] in "!^":
                j += 1
            if j < n and component[j] == "]":
                j += 1
            while j < n and component[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
                continue
            body = component[i:j].replace("\\", "\\\\")
            i = j + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            # The lookahead keeps any class, even a negated one, from matching a separator.
            out.append(f"(?!/)[{'^' if negate else ''}{body}]")
        else:
            out.append(re.escape(char))
    return "".join(out)


def _compile(regex: str, glob: str) -> re.Pattern[str]:
    try:
        return re.compile(regex, re.DOTALL)
    except re.error as exc:
        raise GlobError(f'"{glob}" is not a valid glob ({exc.msg})') from None


def _name_test(component: str, glob: str) -> Callable[[str], bool]:
    """The cheapest test that decides whether a file name matches `component`."""
    if component == "*":
        return lambda name: True
    if _is_literal(component):
        return component.__eq__
    stars = component.count("*")
    if stars == 1 and not {"?", "["} & set(component):
        head, _, tail = component.partition("*")
        if not head:
            return lambda name: name.endswith(tail)
        if not tail:
            return lambda name: name.startswith(head)
        size = len(head) + len(tail)
        return lambda name: len(name) >= size and name.startswith(head) and name.endswith(tail)
    pattern = _compile(_translate_component(component), glob)
    return lambda name: pattern.fullmatch(name) is not None


@dataclass(frozen=True)
class Glob:
    """A compiled glob: a directory part matched per directory, a name part matched per file."""

    text: str
    dir_pattern: re.Pattern[str]  # matched against "a/b/" (a directory with its slash, "" for root)
    name_matches: Callable[[str], bool]
    any_name: bool  # the name part is `*`: every file of a matching directory matches
    fixed_dirs: tuple[str, ...]  # leading directories named literally: the walk starts there
    max_depth: int | None  # deepest directory that can hold a match (root = 0); None with **

    def dir_matches(self, dir_rel: str) -> bool:
        """Whether files directly in `dir_rel` ("" for the root, no trailing slash) can match."""
        return self.dir_pattern.fullmatch(dir_rel + "/" if dir_rel else "") is not None

    def matches(self, rel: str) -> bool:
        """Whether the file at `rel` (relative to the root, `/`-separated) matches."""
        dir_rel, _, name = rel.rpartition("/")
        return self.dir_matches(dir_rel) and self.name_matches(name)


def compile_glob(text: str) -> Glob:
    """Compile a glob such as `**/*.csv`, `exports/2024-*/*.dump` or `tmp/**`."""
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        raise GlobError(f'"{text}" selects no file')
    if ".." in parts:
        raise GlobError(f'"{text}" leaves the store root (..)')
    if parts[-1] == "**":
        # `dir/**` is everything under dir, at any depth: the same as `dir/**/*`.
        parts.append("*")
    *dirs, name = parts
    if "**" in name:
        name = name.replace("**", "*")
    pieces: list[str] = []
    for component in dirs:
        if component == "**":
            pieces.append("(?:.*/)?")
        else:
            pieces.append(_translate_component(component.replace("**", "*")) + "/")
    fixed: list[str] = []
    for component in dirs:
        if not _is_literal(component):
            break
        fixed.append(component)
    return Glob(
        text=text,
        dir_pattern=_compile("".join(pieces), text),
        name_matches=_name_test(name, text),
        any_name=name == "*",
        fixed_dirs=tuple(fixed),
        max_depth=None if "**" in dirs else len(dirs),
    )
