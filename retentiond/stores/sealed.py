"""The shred rule: crypto-erase sealed copies whose deadline passed (and that no hold keeps).

Shredding a copy destroys its identity in the keystore and rotates the key-encryption key, so that
every copy of the ciphertext, wherever it was copied to, and every stale copy of the wrapped
identity (a backup of the state database, dead rows, WAL) is unreadable. In one transaction of the
state database: the rule's predicate and the holds are re-checked in the statement that removes the
identities, the survivors are re-wrapped under the new generation, and the `shred` ledger entry is
appended. A kill -9 therefore leaves a batch either untouched (keys alive, no entry) or shredded and
recorded. The ciphertext files the keystore knows of are deleted after the commit, by a
background thread: the copy is already unreadable, and unlinking a large file costs time in
proportion to its size (ext4 mounted with `discard` trims the freed blocks), which would otherwise
make a shred slow in proportion to the copies. A missing file is noted, one that is not this copy
any more (replaced, a symlink) is left alone, and a crash before the deletion leaves a file nobody
can open.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from retentiond import keystore
from retentiond.config import rule_hash
from retentiond.engine import BatchJournal, HoldSpec, Outcome, Plan, Target, TargetContext
from retentiond.errors import RetentiondError
from retentiond.ledger.digest import KeyDigest
from retentiond.ledger.store import append_entry
from retentiond.seal.agefile import AgeError, Identity, copy_id_of, read_header
from retentiond.seal.copy import TARGET, utc
from retentiond.state.db import create_state_engine
from retentiond.state.models import sealed_copy

log = logging.getLogger(__name__)

METHOD = "crypto-erase"
BATCH = 256  # copies per transaction (and per rotation); bounds open descriptors and lock time

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def unheld(holds: Sequence[HoldSpec]) -> sa.ColumnElement[bool]:
    """The SQL predicate of copies that no hold keeps.

    A hold without a path keeps every copy of the rule; a path hold keeps the copies under that
    prefix, read from the root of the file system (`srv/exports/` keeps `/srv/exports/...`). Holds
    on table rows do not concern copies.
    """
    clauses: list[sa.ColumnElement[bool]] = []
    for hold in holds:
        if hold.table is not None or hold.where is not None:
            continue
        if hold.path_prefix is None:
            return sa.false()
        prefix = "/" + hold.path_prefix.lstrip("/")
        clauses.append(sa.not_(sealed_copy.c.path.startswith(prefix, autoescape=True)))
    return sa.and_(sa.true(), *clauses)


def due(now: datetime) -> sa.ColumnElement[bool]:
    """The SQL predicate of live copies whose deadline passed at `now`."""
    return sa.and_(
        sealed_copy.c.shredded_at.is_(None),
        sealed_copy.c.wrapped_identity.is_not(None),
        sealed_copy.c.expires_at <= now,
    )


@dataclass(frozen=True)
class _File:
    """A verified ciphertext file, held by its directory so that the unlink cannot be redirected."""

    dir_fd: int
    name: str
    device: int
    inode: int


def _open_dir(path: Path) -> int:
    """Open `path`'s directory component by component, never through a symlink."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in path.parent.parts[1:]:
            child = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _verify_file(path: str, copy_id: str, identity: Identity) -> _File | str:
    """The ciphertext at `path` if it is this copy (its header opens with the identity).

    Otherwise why not: "missing", or "foreign" for a symlink, a non-file or another file.
    """
    target = Path(path)
    try:
        dir_fd = _open_dir(target)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "foreign"
    try:
        fd = os.open(target.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        os.close(dir_fd)
        return "missing"
    except OSError:
        os.close(dir_fd)
        return "foreign"
    try:
        info = os.fstat(fd)
        with os.fdopen(os.dup(fd), "rb") as handle:
            if not stat.S_ISREG(info.st_mode):
                raise AgeError("not a regular file")
            header = read_header(handle)
            if copy_id_of(header.x25519_share()) != copy_id:
                raise AgeError("another copy")
            header.file_key(identity)
    except (AgeError, OSError):
        os.close(dir_fd)
        return "foreign"
    finally:
        os.close(fd)
    return _File(dir_fd, target.name, info.st_dev, info.st_ino)


def _unlink(file: _File) -> bool:
    """Remove a verified file unless its name now points at something else."""
    try:
        info = os.stat(file.name, dir_fd=file.dir_fd, follow_symlinks=False)
        if (info.st_dev, info.st_ino) != (file.device, file.inode):
            return False
        os.unlink(file.name, dir_fd=file.dir_fd)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(file.dir_fd)


def _remove_files(rule: str, files: Sequence[_File]) -> None:
    removed = failed = 0
    for file in files:
        try:
            removed += _unlink(file)
        except OSError:
            failed += 1
    # Counts only: file names may be personal data.
    log.info("rule %s: removed %d shredded copy file(s), %d failed", rule, removed, failed)


@dataclass(frozen=True)
class _Batch:
    """What one transaction shredded."""

    ids: tuple[str, ...]
    bytes: int
    seq: int
    generation: int
    files: tuple[_File, ...]
    missing: int
    foreign: int


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ShredTarget:
    """The shred rule bound to the keystore of the state database."""

    def __init__(
        self,
        engine: sa.Engine,
        kek_file: Path,
        rule: str,
        rule_hash: str,
        holds: Sequence[HoldSpec],
        clock: Clock = _now,
    ) -> None:
        self.engine = engine
        self.kek_file = kek_file
        self.rule = rule
        self.rule_hash = rule_hash
        self.holds = tuple(holds)
        self.clock = clock
        self._removers: list[threading.Thread] = []

    def plan(self) -> Plan:
        """The copies due now, their count and bytes; reads only."""
        now = self.clock()
        live = sa.and_(
            sealed_copy.c.shredded_at.is_(None), sealed_copy.c.wrapped_identity.is_not(None)
        )
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).where(live)).scalar_one()
            all_due = conn.execute(sa.select(sa.func.count()).where(due(now))).scalar_one()
            rows = conn.execute(
                sa.select(
                    sealed_copy.c.id,
                    sealed_copy.c.size,
                    sealed_copy.c.created_at,
                    sealed_copy.c.expires_at,
                )
                .where(due(now), unheld(self.holds))
                .order_by(sealed_copy.c.expires_at, sealed_copy.c.id)
            ).all()
        oldest = min((utc(r.created_at) for r in rows), default=None)
        return Plan(
            rule=self.rule,
            action="shred",
            target=TARGET,
            method=METHOD,
            cutoff=None,
            clock="local",
            total_items=int(total),
            expired_items=len(rows),
            held_items=int(all_due) - len(rows),
            bytes=sum(int(r.size) for r in rows),
            oldest_age_seconds=None if oldest is None else (now - oldest).total_seconds(),
            # Ids, sizes and deadlines only: a copy's path may name a person.
            details={
                "copies": tuple(
                    {
                        "id": r.id,
                        "bytes": int(r.size),
                        "expires_at": utc(r.expires_at).isoformat(timespec="seconds"),
                    }
                    for r in rows
                )
            },
        )

    def execute(self, plan: Plan, journal: BatchJournal, stop: threading.Event) -> Outcome:
        """Shred the copies of `plan` that are still due and unheld, batch by batch."""
        run_id = getattr(journal, "run_id", None)
        ids = [copy["id"] for copy in plan.details.get("copies", ())]
        batches: list[_Batch] = []
        files: list[_File] = []
        try:
            for chunk in _chunks(ids, BATCH):
                if stop.is_set():
                    break
                try:
                    batch = self._shred(chunk, run_id)
                finally:
                    # Drops the old key generation from the key file (also after a failure).
                    keystore.settle(self.engine, self.kek_file)
                if batch is not None:
                    batches.append(batch)
                    files += batch.files
            with self.engine.connect() as conn:
                remaining = conn.execute(
                    sa.select(sa.func.count()).where(due(self.clock()), unheld(self.holds))
                ).scalar_one()
            digest = self._digest(b for batch in batches for b in batch.ids)
        finally:
            # Started last, so that the unlinks never compete with the shred itself.
            self._remove_later(files)
        return Outcome(
            items=sum(len(b.ids) for b in batches),
            bytes=sum(b.bytes for b in batches),
            digest=digest,
            method=METHOD,
            remaining_expired=int(remaining),
            details={
                "ledger_seqs": tuple(b.seq for b in batches),
                "kek_generation": batches[-1].generation if batches else None,
                "files_found": len(files),
                "files_missing": sum(b.missing for b in batches),
                "files_kept": sum(b.foreign for b in batches),
            },
        )

    def _remove_later(self, files: Sequence[_File]) -> None:
        # Not a daemon thread: a command's process waits for it before it exits.
        remover = threading.Thread(
            target=_remove_files, args=(self.rule, files), name="shred-files"
        )
        remover.start()
        self._removers.append(remover)

    def wait_for_files(self) -> None:
        """Wait until the ciphertext files of the shredded copies have been removed."""
        for remover in self._removers:
            remover.join()
        self._removers.clear()

    def _digest(self, ids: Iterator[str]) -> str:
        with self.engine.connect() as conn:
            digest = KeyDigest(keystore.commitment_key(conn, self.kek_file))
        digest.update(i.encode() for i in ids)
        return digest.hexdigest()

    def _shred(self, ids: Sequence[str], run_id: str | None) -> _Batch | None:
        """Destroy the keys of `ids` still due and unheld, rotate, record: one transaction."""
        files: list[_File] = []
        try:
            with self.engine.begin() as conn:
                kek = keystore.open_for_writing(conn, self.kek_file)
                now = self.clock()
                selected = conn.execute(
                    sa.select(sealed_copy)
                    .where(sealed_copy.c.id.in_(ids), due(now), unheld(self.holds))
                    .with_for_update()
                ).all()
                if not selected:
                    return None
                missing = foreign = 0
                for row in selected:
                    name = keystore.copy_secret_name(row.id)
                    identity = Identity(keystore.unwrap(kek, name, row.wrapped_identity))
                    found = _verify_file(row.path, row.id, identity)
                    if isinstance(found, _File):
                        files.append(found)
                    elif found == "missing":
                        missing += 1
                    else:
                        foreign += 1
                chosen = [row.id for row in selected]
                # The predicate and the holds again, in the statement that destroys the keys.
                destroyed = conn.execute(
                    sa.update(sealed_copy)
                    .where(sealed_copy.c.id.in_(chosen), due(now), unheld(self.holds))
                    .values(wrapped_identity=None, shredded_at=now, shred_rule=self.rule)
                )
                if destroyed.rowcount != len(chosen):
                    raise RetentiondError(
                        f"rule {self.rule}: sealed copies changed meanwhile; nothing was shredded"
                    )
                new = keystore.rotate(conn, self.kek_file, kek)
                digest = KeyDigest(keystore.commitment_key(conn, self.kek_file))
                digest.update(i.encode() for i in chosen)
                nbytes = sum(int(row.size) for row in selected)
                seq = append_entry(
                    conn,
                    {
                        "kind": "shred",
                        "rule": self.rule,
                        "rule_hash": self.rule_hash,
                        "store": None,
                        "target": TARGET,
                        "count": len(chosen),
                        "bytes": nbytes,
                        "method": METHOD,
                        "run_id": run_id,
                        "digest": digest.hexdigest(),
                        "copy_id": chosen[0] if len(chosen) == 1 else None,
                        "kek_generation": new.generation,
                        "key_exported": any(bool(row.key_exported) for row in selected),
                        "clock": "local",
                    },
                )
                conn.execute(
                    sa.update(sealed_copy).where(sealed_copy.c.id.in_(chosen)).values(shred_seq=seq)
                )
        except BaseException:
            for file in files:
                os.close(file.dir_fd)
            raise
        return _Batch(tuple(chosen), nbytes, seq, new.generation, tuple(files), missing, foreign)

    def still_present(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which copy ids (as bytes) still have their key."""
        ids = [k.decode() for k in keys]
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(sealed_copy.c.id).where(
                    sealed_copy.c.id.in_(ids), sealed_copy.c.wrapped_identity.is_not(None)
                )
            ).all()
        return {row.id.encode() for row in rows}


def make_shred_target(context: TargetContext) -> Target:
    """The shred target of a rule, from the runner's context."""
    kek_file: Any = getattr(context, "kek_file", None)
    if kek_file is None:
        raise RetentiondError(f"rule {context.rule.name}: no [keys] kek_file for the shred rule")
    return ShredTarget(
        context.state_engine or create_state_engine(context.state_url),
        Path(kek_file),
        context.rule.name,
        rule_hash(context.rule),
        context.holds,
    )
