"""Output files that appear under their name only when complete, and never replace a file."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from retentiond.errors import RetentiondError, UsageError


def output_path(path: Path) -> Path:
    """Where `path` will be written (its directory resolved); refuses an existing file."""
    directory = path.parent.resolve(strict=False)
    if not directory.is_dir():
        raise UsageError(f"{path.parent} is not a directory")
    target = directory / path.name
    if os.path.lexists(target):
        raise UsageError(f"{target} already exists; remove it or choose another name")
    return target


class PendingFile:
    """A private (0600) file written in its final directory, linked to its name by `publish`.

    It is created with O_TMPFILE where the file system allows: until published it has no name at
    all, so a crash or kill -9 leaves nothing behind. Elsewhere a hidden temporary name (O_EXCL)
    is used and removed on failure (a kill -9 there leaves it behind, mode 0600; for a seal it only
    ever holds ciphertext). Like `age` and `cp`, it leaves flushing the data to the kernel
    (an fsync of a 1 GB copy doubles the time of a seal here); the name is made durable, and a copy
    cut short by a power failure is reported as truncated when it is opened.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self._dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._temp: str | None = None
        try:
            self.fd = os.open(
                ".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=self._dir_fd
            )
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                os.close(self._dir_fd)
                raise RetentiondError(f"cannot write in {target.parent}: {exc.strerror}") from None
            self._temp = f".{target.name}.{secrets.token_hex(6)}.tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self.fd = os.open(self._temp, flags, 0o600, dir_fd=self._dir_fd)
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append `data` (all of it)."""
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
            self.size += written

    def publish(self) -> None:
        """Give the file its name; fails if the name was taken meanwhile."""
        try:
            if self._temp is None:
                os.link(f"/proc/self/fd/{self.fd}", self.target.name, dst_dir_fd=self._dir_fd)
            else:
                os.link(
                    self._temp, self.target.name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd
                )
        except FileExistsError:
            raise UsageError(
                f"{self.target} appeared while it was being written; not replaced"
            ) from None
        os.fsync(self._dir_fd)
        self.close()

    def close(self) -> None:
        """Close the file; an unpublished file disappears."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp, dir_fd=self._dir_fd)
            self._temp = None
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
