"""`retentiond seal` and `retentiond unseal`: sealed copies from the command line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from retentiond.duration import DurationError, parse_duration
from retentiond.errors import RetentiondError, UsageError
from retentiond.seal.agefile import Identity
from retentiond.seal.output import PendingFile, output_path
from retentiond.seal.worker import EncryptionChild

if TYPE_CHECKING:
    from retentiond.seal.copy import SealedCopy


@contextlib.contextmanager
def _input(source: str) -> Iterator[BinaryIO]:
    # Unbuffered: the encryption reads whole chunks straight into its own buffers.
    if source == "-":
        with open(sys.stdin.fileno(), "rb", buffering=0, closefd=False) as stdin:
            yield stdin
        return
    try:
        handle = open(source, "rb", buffering=0)  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from None
    with handle:
        yield handle


def seal(
    config_path: Path | None,
    source: str,
    output: Path,
    expires: str,
    label: str | None,
    out: TextIO,
) -> int:
    """Encrypt SOURCE (or standard input) into OUTPUT and register it until the deadline."""
    try:
        duration = parse_duration(expires)
    except DurationError as exc:
        raise UsageError(f"--expires: {exc}") from None
    if duration.is_zero():
        raise UsageError("--expires: the deadline must be in the future")
    target = output_path(output)
    identity = Identity.generate()
    with _input(source) as stream, PendingFile(target) as pending:
        child = EncryptionChild(stream.fileno(), pending, identity.public_bytes())
        try:
            # Imported and opened while the child already encrypts (see seal.worker).
            from retentiond.commands.common import open_state
            from retentiond.seal.copy import register_copy

            loaded, engine = open_state(config_path)
            share, size = child.wait()
        except BaseException:
            child.cancel()
            raise
        try:
            expires_at = duration.add_to(datetime.now(UTC))
            kek_file = loaded.config.keys.kek_file
            copy = register_copy(
                engine, kek_file, pending, identity, share, size, expires_at, label
            )
        finally:
            engine.dispose()
    print(f"sealed copy {copy.id}", file=out)
    print(f"  file:      {copy.path} ({copy.size} bytes)", file=out)
    print(f"  expires:   {copy.expires_at.isoformat(timespec='seconds')}", file=out)
    print(f"  recipient: {copy.recipient}", file=out)
    return 0


def _open_sealed(sealed: Path) -> BinaryIO:
    try:
        return open(sealed, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {sealed}: {exc.strerror}") from None


def _write_stdout(data: memoryview) -> None:
    try:
        sys.stdout.buffer.write(data)
    except BrokenPipeError:
        raise RetentiondError("the output pipe was closed before the end") from None


def unseal(
    config_path: Path | None, sealed: Path, output: str, export_identity: bool, out: TextIO
) -> int:
    """Decrypt SEALED into OUTPUT (- for standard output), or export its identity."""
    from retentiond.commands.common import open_state
    from retentiond.seal import copy as sealing

    target = None if output == "-" else output_path(Path(output))
    loaded, engine = open_state(config_path)
    kek_file = loaded.config.keys.kek_file
    try:
        with _open_sealed(sealed) as stream:
            if export_identity:
                exported = sealing.export_identity(engine, kek_file, stream)
                return _print_identity(*exported, target, out)
            if target is None:
                sealing.unseal_copy(engine, kek_file, stream, _write_stdout)
                sys.stdout.buffer.flush()
                return 0
            with PendingFile(target) as pending:
                copy, size = sealing.unseal_copy(engine, kek_file, stream, pending.write)
                pending.publish()
    finally:
        engine.dispose()
    print(f"unsealed copy {copy.id} into {target} ({size} bytes)", file=out)
    return 0


def _print_identity(
    copy: SealedCopy, identity: Identity, seq: int, target: Path | None, out: TextIO
) -> int:
    text = (
        f"# sealed copy {copy.id}, expires {copy.expires_at.isoformat(timespec='seconds')}\n"
        f"# exported from the keystore: recorded in ledger entry {seq}\n"
        f"# public key: {copy.recipient}\n"
        f"{identity.encode()}\n"
    )
    if target is None:
        out.write(text)
        return 0
    with PendingFile(target) as pending:
        pending.write(text.encode())
        pending.publish()
    print(f"identity of sealed copy {copy.id} written to {target} (ledger entry {seq})", file=out)
    return 0
