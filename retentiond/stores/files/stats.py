"""File status beyond `os.stat`: birth time and mount ids through statx(2), and how files are aged.

Python 3.11 has no `os.statx`, and `os.stat` has no birth time on Linux, so statx is called through
ctypes (glibc 2.28+). Its mount id tells a bind mount of another part of the same file system apart
from an ordinary directory, which the device number alone cannot.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable
from operator import attrgetter
from typing import NamedTuple, Protocol, cast

_AT_SYMLINK_NOFOLLOW = 0x100
_AT_EMPTY_PATH = 0x1000
_STATX_BASIC_STATS = 0x7FF
_STATX_BTIME = 0x800
_STATX_MNT_ID = 0x1000
_BUFFER_SIZE = 256  # sizeof(struct statx), padding included
# struct statx up to stx_mnt_id: mask, blksize, attributes, nlink, uid, gid, mode, (spare), ino, size,
# blocks, attributes_mask, then four timestamps (sec, nsec, reserved), rdev, dev and the mount id.
_LAYOUT = struct.Struct("=IIQIIIH2xQQQQ" + "qIi" * 4 + "IIIIQ")


class StatLike(Protocol):
    """What the walk needs to know about a file (os.stat_result and BirthStat both have it)."""

    @property
    def st_mode(self) -> int: ...
    @property
    def st_ino(self) -> int: ...
    @property
    def st_dev(self) -> int: ...
    @property
    def st_nlink(self) -> int: ...
    @property
    def st_size(self) -> int: ...


class StatCall(Protocol):
    """The signature of `os.stat` as the walk calls it."""

    def __call__(self, path: str, *, dir_fd: int, follow_symlinks: bool) -> StatLike: ...


class BirthStat(NamedTuple):
    """The fields of statx that the files target uses, birth time included."""

    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_birthtime_ns: int | None  # None: the file system does not report it for this file


def _load_statx() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).statx
    except (AttributeError, OSError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
    ]
    function.restype = ctypes.c_int
    return cast(Callable[..., int], function)


_statx = _load_statx()


def statx_available() -> bool:
    """Whether this system's C library has statx(2)."""
    return _statx is not None


def _call(dir_fd: int, path: bytes, flags: int, mask: int) -> tuple[int, ...]:
    if _statx is None:
        raise OSError(38, "statx is not available")  # ENOSYS
    buffer = ctypes.create_string_buffer(_BUFFER_SIZE)
    if _statx(dir_fd, path, flags, mask, buffer) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return _LAYOUT.unpack_from(buffer.raw)


def _ns(seconds: int, nanoseconds: int) -> int:
    return seconds * 1_000_000_000 + nanoseconds


def birth_stat(path: str, *, dir_fd: int, follow_symlinks: bool = False) -> BirthStat:
    """statx of `path` relative to `dir_fd`, never following a symlink, with its birth time."""
    if follow_symlinks:
        raise ValueError("birth_stat never follows symlinks")
    f = _call(dir_fd, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, _STATX_BASIC_STATS | _STATX_BTIME)
    mask, _blksize, _attrs, nlink, _uid, _gid, mode, ino, size = f[:9]
    btime = _ns(f[14], f[15]) if mask & _STATX_BTIME else None
    return BirthStat(
        st_mode=mode,
        st_ino=ino,
        st_dev=os.makedev(f[25], f[26]),
        st_nlink=nlink,
        st_size=size,
        st_mtime_ns=_ns(f[20], f[21]),
        st_ctime_ns=_ns(f[17], f[18]),
        st_birthtime_ns=btime,
    )


def mount_id(fd: int) -> int | None:
    """The mount id of the open file `fd`, None where the kernel or C library cannot tell."""
    if _statx is None:
        return None
    try:
        fields = _call(fd, b"", _AT_EMPTY_PATH | _AT_SYMLINK_NOFOLLOW, _STATX_MNT_ID)
    except OSError:
        return None
    return fields[27] if fields[0] & _STATX_MNT_ID else None


class NoBirthTime(Exception):
    """The file system does not report the birth time of a file."""


def _birth_ns(st: BirthStat) -> int:
    if st.st_birthtime_ns is None:
        raise NoBirthTime()
    return st.st_birthtime_ns


AGE_SOURCES = ("mtime", "ctime", "birth")


def age_reader(source: str) -> tuple[StatCall, Callable[[StatLike], int]]:
    """How to stat a file and read its age in ns since the epoch, for mtime, ctime or birth.

    Never atime: reading a file (a backup, a virus scan) would make it young again.
    """
    if source == "mtime":
        return cast(StatCall, os.stat), cast(Callable[[StatLike], int], attrgetter("st_mtime_ns"))
    if source == "ctime":
        return cast(StatCall, os.stat), cast(Callable[[StatLike], int], attrgetter("st_ctime_ns"))
    if source == "birth":
        return cast(StatCall, birth_stat), cast(Callable[[StatLike], int], _birth_ns)
    raise ValueError(f"unknown age source {source!r}")
