"""Removing one file safely: re-checked through its directory's descriptor, unlinked by name there.

Between the scan that chose a file and its removal, the journal commits the batch (safety rule 10),
so the file is checked again just before it goes: still a regular file, still the same inode, still
older than the cutoff. The check and the unlink both use the directory's open descriptor, so a
directory swapped for a symlink meanwhile changes nothing: the descriptor still names the directory
that was checked, inside the root. (A same-directory rename racing the microseconds between the
check and the unlink is the one window no POSIX call closes; it can only touch a file of that same
directory, which the rule selects by name anyway.)
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from retentiond.stores.files.stats import NoBirthTime, StatCall, StatLike, mount_id

_ZEROS = bytes(1 << 20)


class Result(enum.Enum):
    """What became of one file the scan chose."""

    REMOVED = "removed"
    VANISHED = "vanished"  # already gone
    YOUNG = "young"  # changed since the scan and no longer expired: kept
    REPLACED = "replaced"  # another file (or not a regular file) under that name now: kept
    ERROR = "error"  # permission denied, busy, I/O error: kept, counted, the run goes on


@dataclass(frozen=True)
class Removal:
    """How to remove the files of one rule."""

    stat: StatCall  # os.stat, or birth_stat for rules aged by birth time
    age: Callable[[StatLike], int]  # ns since the epoch
    cutoff_ns: int  # older than this is expired
    dev: int  # the root's device
    mount: int | None  # the root's mount id, where statx tells it
    overwrite: bool


@dataclass
class Done:
    """What removing a list of files gave; counts only."""

    removed: list[bytes]
    nbytes: int = 0
    vanished: int = 0
    young: int = 0
    replaced: int = 0
    replaced_expired: int = 0  # replaced by a file that is itself expired: still overdue
    errors: int = 0
    not_overwritten: int = 0  # hard-linked files: unlinked without overwriting their shared data
    error_codes: dict[str, int] | None = None

    def merge(self, other: Done) -> None:
        """Add `other`'s counts to these."""
        self.removed.extend(other.removed)
        self.nbytes += other.nbytes
        self.vanished += other.vanished
        self.young += other.young
        self.replaced += other.replaced
        self.replaced_expired += other.replaced_expired
        self.errors += other.errors
        self.not_overwritten += other.not_overwritten
        for code, count in (other.error_codes or {}).items():
            self.count_error(code, count)

    def count_error(self, code: str, count: int = 1) -> None:
        """Count an error by its errno name (never its message, which names the file)."""
        self.error_codes = self.error_codes or {}
        self.error_codes[code] = self.error_codes.get(code, 0) + count


def _code(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _overwrite(dir_fd: int, name: str, st: StatLike, how: Removal) -> None:
    """One pass of zeros over the file, then fsync; raises OSError when it is not the same file."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(
            opened.st_mode
        ):
            raise FileExistsError(errno.EEXIST, "replaced")
        # A file bind-mounted over a name in the tree is another file's data: never overwritten.
        if how.mount is not None and mount_id(fd) not in (how.mount, None):
            raise OSError(errno.EXDEV, "another mount")
        remaining = opened.st_size
        while remaining > 0:
            written = os.write(fd, _ZEROS[: min(remaining, len(_ZEROS))])
            remaining -= written
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_file(dir_fd: int, name: str, ino: int, how: Removal, done: Done, key: bytes) -> Result:
    """Re-check and remove `name` in `dir_fd`; counts the result in `done`."""
    try:
        st = how.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        done.vanished += 1
        return Result.VANISHED
    except OSError as exc:
        done.errors += 1
        done.count_error(_code(exc))
        return Result.ERROR
    if not stat.S_ISREG(st.st_mode) or st.st_ino != ino or st.st_dev != how.dev:
        done.replaced += 1
        try:
            if stat.S_ISREG(st.st_mode) and how.age(st) < how.cutoff_ns:
                done.replaced_expired += 1
        except NoBirthTime:
            pass
        return Result.REPLACED
    try:
        if how.age(st) >= how.cutoff_ns:
            done.young += 1
            return Result.YOUNG
    except NoBirthTime:
        done.young += 1
        return Result.YOUNG
    try:
        if how.overwrite:
            if st.st_nlink > 1:
                # Its data is also reachable through another name, maybe outside the root or held:
                # zeroing it would destroy that file. Unlinking this name is all a deletion means.
                done.not_overwritten += 1
            else:
                _overwrite(dir_fd, name, st, how)
                again = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if again.st_ino != st.st_ino:
                    done.replaced += 1
                    return Result.REPLACED
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        done.vanished += 1
        return Result.VANISHED
    except FileExistsError:
        done.replaced += 1
        return Result.REPLACED
    except OSError as exc:
        done.errors += 1
        done.count_error(_code(exc))
        return Result.ERROR
    done.removed.append(key)
    done.nbytes += st.st_size
    return Result.REMOVED
