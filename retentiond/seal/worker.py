"""Encrypt in a child process, so that a seal starts streaming at once.

Loading the config and the database libraries takes about half a second; a `seal` from the command
line would otherwise spend it before reading its input. The child gets only what encryption needs
(the input descriptor, the nameless output file, the recipient) and reports the X25519 share and the
size through a pipe; the parent registers the copy once the child is done. A process that already
runs threads (forking it would copy their locks mid-use) encrypts in place instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from retentiond.errors import RetentiondError
from retentiond.seal.agefile import encrypt_stream
from retentiond.seal.output import PendingFile

_SHARE = 32
_SIZE = 8


class EncryptionFailed(RetentiondError):
    """The encryption child failed; nothing was registered and the output is discarded."""


class EncryptionChild:
    """A forked process encrypting `input_fd` into `pending` for `recipient`."""

    def __init__(self, input_fd: int, pending: PendingFile, recipient: bytes) -> None:
        self._done: tuple[bytes, int] | None = None
        if threading.active_count() > 1:
            self.pid = 0
            with open(input_fd, "rb", buffering=0, closefd=False) as source:
                self._done = encrypt_stream(source.readinto, pending.write, recipient)
            return
        result_read, result_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: encrypt, report, and leave without running parent code
            os.close(result_read)
            code = 1
            try:
                with open(input_fd, "rb", buffering=0, closefd=False) as source:
                    share, size = encrypt_stream(source.readinto, pending.write, recipient)
                os.write(result_write, share + size.to_bytes(_SIZE, "big"))
                code = 0
            except BaseException as exc:  # reported to the parent, which raises
                with contextlib.suppress(OSError):
                    os.write(result_write, f"E{type(exc).__name__}: {exc}".encode()[:500])
            finally:
                os._exit(code)
        os.close(result_write)
        self._result = result_read

    def wait(self) -> tuple[bytes, int]:
        """(share, ciphertext size) once the child has finished; raises if it failed."""
        if self._done is not None:
            return self._done
        with open(self._result, "rb", closefd=True) as result:
            data = result.read()
        _pid, status = os.waitpid(self.pid, 0)
        self.pid = 0
        if os.waitstatus_to_exitcode(status) != 0 or len(data) != _SHARE + _SIZE:
            reason = data[1:].decode(errors="replace") if data.startswith(b"E") else "killed"
            raise EncryptionFailed(f"the encryption failed ({reason}); nothing was sealed")
        return data[:_SHARE], int.from_bytes(data[_SHARE:], "big")

    def cancel(self) -> None:
        """Stop the child (after a failure in the parent); its output is discarded by the caller."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0
            os.close(self._result)
