"""A walk of a store root through open directory descriptors: no symlink followed, no mount crossed.

Every directory is opened relative to its parent's descriptor with O_NOFOLLOW, so that the walk can
never leave the tree it started in: a directory swapped for a symlink fails to open (ELOOP) instead of
leading elsewhere, and the descriptors the walk holds keep naming the directories it checked even if
their paths change while it runs. Each opened directory is checked to be on the root's device and,
where statx can tell, in the root's mount (a bind mount of another directory of the same file system
has the same device number but another mount id).

The walk streams: it holds one descriptor per level of depth and, per level, the names of the
subdirectories still to visit; never the list of files.

The paths a journal recorded are looked up the same way (`present_keys`), so that a file target and
a copy target confirm what is gone with the same checks.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from retentiond.errors import RuleError
from retentiond.stores.files.stats import mount_id

# os.open makes descriptors non-inheritable already; O_CLOEXEC says so at the call.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SWAPPED = (errno.ELOOP, errno.ENOTDIR)  # what opening a symlink or file as a directory gives


class RootError(Exception):
    """The store root cannot be walked safely (missing, a symlink, not a directory)."""


class DirHandle:
    """An open directory of the walk, closed when the walk and every batch holding it let go."""

    __slots__ = ("depth", "fd", "ino", "name", "parent", "refs", "rel", "removed")

    def __init__(
        self, fd: int, rel: str, name: str, parent: DirHandle | None, depth: int, ino: int
    ) -> None:
        self.fd = fd
        self.rel = rel  # path relative to the root, "" for the root itself
        self.name = name  # name in the parent directory
        self.parent = parent
        self.depth = depth
        self.ino = ino
        self.refs = 1
        self.removed = 0  # entries a purge removed from it (for pruning emptied directories)

    @property
    def prefix(self) -> str:
        """The prefix of the relative paths of its entries: "a/b/" (or "" for the root)."""
        return self.rel + "/" if self.rel else ""

    def retain(self) -> None:
        """Keep the descriptor open for one more holder."""
        self.refs += 1

    def release(self) -> None:
        """Let go of the descriptor; the last holder closes it."""
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)


@dataclass
class Tally:
    """What the walk met besides regular files; counts only, never names."""

    dirs: int = 0
    symlinks: int = 0  # never followed, never removed
    special: int = 0  # fifos, sockets, devices: never touched
    other_fs: int = 0  # mount points not crossed
    unreadable_dirs: int = 0
    vanished: int = 0  # entries gone between listing and use
    changed: int = 0  # entries replaced (a directory swapped for a symlink, a file for a new one)
    errors: int = 0  # permission denied and other per-entry failures


@dataclass(frozen=True)
class Root:
    """The opened store root and the file system it is on."""

    handle: DirHandle
    dev: int
    mount: int | None


def open_root(path: Path) -> Root:
    """Open the store root itself, refusing a symlink (its parents are the admin's choice)."""
    try:
        fd = os.open(path, DIR_FLAGS)
    except FileNotFoundError:
        raise RootError("the store root does not exist") from None
    except OSError as exc:
        if exc.errno in _SWAPPED:
            raise RootError("the store root is a symlink or not a directory") from None
        raise RootError(
            f"the store root cannot be opened ({errno.errorcode.get(exc.errno or 0)})"
        ) from None
    st = os.fstat(fd)
    return Root(DirHandle(fd, "", "", None, 0, st.st_ino), st.st_dev, mount_id(fd))


def open_subdir(root: Root, parent: DirHandle, name: str, tally: Tally) -> DirHandle | None:
    """Open `name` in `parent` as a directory of the root's file system, or count why not."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
    except FileNotFoundError:
        tally.vanished += 1
        return None
    except OSError as exc:
        if exc.errno in _SWAPPED:
            tally.changed += 1
        else:
            tally.unreadable_dirs += 1
            tally.errors += 1
        return None
    st = os.fstat(fd)
    if st.st_dev != root.dev or (root.mount is not None and mount_id(fd) not in (root.mount, None)):
        os.close(fd)
        tally.other_fs += 1
        return None
    return DirHandle(fd, parent.prefix + name, name, parent, parent.depth + 1, st.st_ino)


_CHUNK = 512  # entries handed over at a time: per-file generator steps cost more than the stat


class Visit:
    """One directory of the walk: its regular files, listed once, and its subdirectories."""

    __slots__ = ("_all", "_chunks", "_descend", "_fixed", "_tally", "handle", "leaving", "subdirs")

    def __init__(
        self,
        handle: DirHandle,
        leaving: bool,
        descend: bool,
        fixed: str | None,
        tally: Tally,
        every_entry: bool = False,
    ) -> None:
        self.handle = handle
        self.leaving = leaving  # True: the walk is done with this directory and all below it
        self.subdirs: list[str] = []
        self._descend = descend
        self._fixed = fixed
        self._tally = tally
        self._all = every_entry
        self._chunks: Iterator[list[os.DirEntry[str]]] | None = None

    def chunks(self) -> Iterator[list[os.DirEntry[str]]]:
        """The regular files directly in this directory (by their entry type), a few at a time.

        With `every_entry`, symlinks and special files too (to remove a whole copy: unlinking a
        symlink removes the link, never what it points to). Consume it fully: the subdirectories
        to visit are collected while it runs.
        """
        if self._chunks is None:
            self._chunks = self._scan()
        return self._chunks

    def finish(self) -> list[str]:
        """Run the listing to its end if the consumer did not, and give the subdirectories."""
        for _ in self.chunks():
            pass
        return self.subdirs

    def _scan(self) -> Iterator[list[os.DirEntry[str]]]:
        tally = self._tally
        if self._fixed is not None:
            # A directory the glob names literally: only that child matters, and no file here can
            # match; opening it directly spares listing a root that may hold millions of entries.
            self.subdirs.append(self._fixed)
            return
        try:
            listing = os.scandir(self.handle.fd)
        except OSError:
            tally.unreadable_dirs += 1
            tally.errors += 1
            return
        descend, every_entry, subdirs = self._descend, self._all, self.subdirs
        chunk: list[os.DirEntry[str]] = []
        with listing:
            for entry in listing:
                try:
                    # Regular files first: they are most entries, and each test is a call.
                    if entry.is_file(follow_symlinks=False):
                        pass
                    elif entry.is_dir(follow_symlinks=False):
                        if descend:
                            subdirs.append(entry.name)
                        continue
                    elif not every_entry:
                        if entry.is_symlink():
                            tally.symlinks += 1
                        else:
                            tally.special += 1
                        continue
                except OSError:
                    tally.errors += 1
                    continue
                chunk.append(entry)
                if len(chunk) >= _CHUNK:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk


@dataclass(frozen=True)
class Split:
    """One process's part of a walk that several processes make together.

    Each directory at `depth` goes, with everything under it, to the one process that `owns` its
    relative path: the others never open it. The levels above are walked by every process, which
    count what they meet there in `above` (the walk's own tally in one process, a scratch one in
    the others).
    """

    depth: int
    owns: Callable[[str], bool]
    above: Tally


def walk(
    root: Root,
    fixed: Sequence[str],
    max_depth: int | None,
    tally: Tally,
    every_entry: bool = False,
    split: Split | None = None,
) -> Iterator[Visit]:
    """Visit every directory under the root, depth first: entering, then leaving each one.

    `fixed` names the first directories literally (the walk goes straight down them); `max_depth`
    is the deepest level whose files are wanted (None: no limit); `split` limits the walk to this
    process's subtrees. The root's handle stays the caller's; every other handle is released when
    the walk leaves its directory.
    """

    def tally_at(depth: int) -> Tally:
        return tally if split is None or depth >= split.depth else split.above

    def visit(handle: DirHandle) -> Visit:
        depth = handle.depth
        descend = max_depth is None or depth < max_depth
        fixed_name = fixed[depth] if depth < len(fixed) else None
        return Visit(handle, False, descend, fixed_name, tally_at(depth), every_entry)

    first = visit(root.handle)
    yield first
    stack: list[tuple[DirHandle, Iterator[str]]] = [(root.handle, iter(first.finish()))]
    try:
        while stack:
            handle, pending = stack[-1]
            name = next(pending, None)
            if name is None:
                stack.pop()
                if handle is not root.handle:
                    handle.release()
                yield Visit(handle, True, False, None, tally)
                continue
            depth = handle.depth + 1
            if split is not None and depth == split.depth and not split.owns(handle.prefix + name):
                continue  # another process's subtree
            counts = tally_at(depth)
            child = open_subdir(root, handle, name, counts)
            if child is None:
                continue
            counts.dirs += 1
            entering = visit(child)
            # On the stack before it is yielded, so that a walk closed early still releases it.
            stack.append((child, iter(())))
            yield entering
            stack[-1] = (child, iter(entering.finish()))
    finally:
        for handle, _ in stack:
            if handle is not root.handle:
                handle.release()


def subdir_names(handle: DirHandle, tally: Tally) -> list[str]:
    """The names of the subdirectories of `handle`'s directory, listed as the walk lists them."""
    return Visit(handle, False, True, None, tally).finish()


def open_path(root: Root, parts: Sequence[str], tally: Tally) -> DirHandle | None:
    """Open the directory `parts` under the root component by component, never following a link.

    Returns None when a component is missing, swapped or on another file system (counted). The
    returned handle is the caller's to release; the ones above it are closed on the way down.
    """
    handle = root.handle
    for name in parts:
        child = open_subdir(root, handle, name, tally)
        if handle is not root.handle:
            handle.release()
        if child is None:
            return None
        handle = child
    if handle is root.handle:
        handle.retain()
    return handle


def present_keys(root: Root, keys: Sequence[bytes]) -> set[bytes]:
    """The keys (paths relative to `root`) that still exist; closes `root`.

    When a path cannot be checked (a directory unreadable or swapped for a symlink), it counts as
    present: the ledger must not claim a deletion nobody can confirm.
    """
    present: set[bytes] = set()
    dirs: dict[bytes, DirHandle | None] = {}
    tally = Tally()
    try:
        for key in keys:
            dir_part, _, name = key.rpartition(b"/")
            if dir_part not in dirs:
                vanished = tally.vanished
                parts = [os.fsdecode(p) for p in dir_part.split(b"/")] if dir_part else []
                handle = open_path(root, parts, tally)
                if handle is None and tally.vanished == vanished:
                    present.add(key)  # cannot look: do not claim it gone
                    continue
                dirs[dir_part] = handle
            handle = dirs[dir_part]
            if handle is None:
                continue
            try:
                os.stat(os.fsdecode(name), dir_fd=handle.fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError:
                pass
            present.add(key)
    finally:
        for handle in dirs.values():
            if handle is not None:
                handle.release()
        root.handle.release()
    return present


def open_rule_root(root: Path, rule: str, store: str | None) -> Root:
    """Open a rule's store root, or fail the rule with a message naming it and the store."""
    try:
        return open_root(root)
    except RootError as exc:
        raise RuleError(f"rule {rule}: store {store}: {exc}") from None
