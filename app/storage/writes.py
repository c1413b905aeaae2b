"""Atomic writes and deletes under ROOT. Knows nothing about HTTP.

A write goes to a temporary file beside its target (a name the path gate never serves), is
fsynced when asked, and is renamed over the target while the directory is locked, so readers see
the old file or the new one, never a partial one, and a racing writer's If-Match sees a settled
state. Anything that goes wrong removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from app.storage.appending import start_writeback
from app.storage.digests import DigestBuilder
from app.storage.errors import InTheWay, NotServable
from app.storage.paths import TEMP_PREFIX, WriteTarget

# Called with the target's current stat (None if absent) under the directory lock; raises to refuse.
Check = Callable[[os.stat_result | None], None]

# Writes running beside the hashing of the same chunk (`write_hashed`).
_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ferry-write")
NAME_MAX = 255  # bytes in one name (ext4, XFS, Btrfs, tmpfs)
PATH_MAX = 4096  # bytes in a path the kernel takes, its final NUL included


def too_long(root: Path, path: str) -> str | None:
    """Why a file at `path` ('/'-separated below ROOT) cannot be stored, or None.

    A name over NAME_MAX cannot be created at all; a path over PATH_MAX can (Ferry writes relative
    to directory descriptors), but could then never be opened, listed or searched by its path.
    Checked before a body is read, rather than failing after it arrived.
    """
    relative = os.fsencode(path.strip("/"))
    if any(len(name) > NAME_MAX for name in relative.split(b"/")):
        return f"a name is longer than {NAME_MAX} bytes"
    if len(os.fsencode(root)) + 1 + len(relative) >= PATH_MAX:
        return f"the path is longer than {PATH_MAX - 1} bytes"
    return None


def current(target: WriteTarget) -> os.stat_result | None:
    """The target's stat as it is now, without following a symlink; None if absent."""
    try:
        return os.stat(target.name, dir_fd=target.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _DirectoryLock:
    """An exclusive flock on the target directory: Ferry's writers to one directory take turns."""

    def __init__(self, dir_fd: int) -> None:
        self.dir_fd = dir_fd

    def __enter__(self) -> None:
        fcntl.flock(self.dir_fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.dir_fd, fcntl.LOCK_UN)


@dataclass
class AtomicWrite:
    """One file being written: `write` chunks, then `commit` or `abort` (every method blocks).

    The methods take turns under a lock: an `abort` (say, at shutdown) waits for a `write` or
    `commit` still running in a worker thread instead of closing the descriptor under it.
    """

    target: WriteTarget
    fsync: bool
    temp_name: str = ""
    temp_path: str = ""  # '/'-separated below ROOT, kept after commit or abort for bookkeeping
    fd: int = -1
    size: int = 0
    # The digest of the bytes written, fed by `hash` with the same chunks as `write` (upload.py
    # runs the two side by side): the stored file's digest costs no extra read.
    builder: DigestBuilder = field(default_factory=DigestBuilder)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> None:
        self.temp_name = f"{TEMP_PREFIX}{secrets.token_hex(8)}.part"
        parent = self.target.path.rpartition("/")[0]
        self.temp_path = f"{parent}/{self.temp_name}" if parent else self.temp_name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        self.fd = os.open(self.temp_name, flags, 0o644, dir_fd=self.target.dir_fd)
        # Held until the descriptor closes: the stale-upload sweep (of this process, another
        # worker or another replica on a shared volume) never removes a file someone still writes.
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            self._write(data)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        if self.fd < 0:
            raise OSError(errno.ECANCELED, "the upload was aborted")
        view = memoryview(data)
        start = self.size
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
            self.size += written
        if self.fsync:
            # The fsync before the rename then has little left to wait for (as an append's).
            start_writeback(self.fd, start, self.size - start)

    def write_hashed(self, data: bytes | bytearray | memoryview) -> None:
        """`write` and `hash` a chunk side by side: the write on a helper thread, the hash on
        this one (both let go of the GIL), one hand-off from the event loop for the two."""
        writing = _WRITERS.submit(self.write, data)
        try:
            self.hash(data)
        finally:
            writing.result()

    def hash(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the digest a chunk (in order: a chunk is hashed before the next is written)."""
        self.builder.update(data)

    def commit(self, check: Check) -> tuple[bool, os.stat_result]:
        """Rename into place; returns (created, stat of the new file)."""
        with self._lock:
            return self._commit(check)

    def _commit(self, check: Check) -> tuple[bool, os.stat_result]:
        st = self._seal()
        with _DirectoryLock(self.target.dir_fd):
            self._check(check)
            created = self._place()
        if self.fsync:
            os.fsync(self.target.dir_fd)  # the rename itself survives a crash
        return created, st

    def _seal(self) -> os.stat_result:
        """Flush (when asked) and close the temporary file; its stat."""
        if self.fd < 0:
            raise OSError(errno.ECANCELED, "the upload was aborted")
        try:
            if self.fsync:
                os.fsync(self.fd)
            st = os.fstat(self.fd)
            os.close(self.fd)
        finally:
            self.fd = -1
        return st

    def _check(self, check: Check) -> None:
        """Refuse (under the directory lock) what may not be replaced."""
        before = current(self.target)
        if before is not None and stat.S_ISDIR(before.st_mode):
            raise InTheWay(f"a directory is in the way of {self.target.name!r}")
        if before is not None and stat.S_ISLNK(before.st_mode):
            # Reads may refuse it: so do writes.
            raise InTheWay(f"a symbolic link is in the way of {self.target.name!r}")
        check(before)

    def _place(self) -> bool:
        """Rename into place (under the directory lock); whether the target is new."""
        created = current(self.target) is None
        os.replace(
            self.temp_name, self.target.name, src_dir_fd=self.target.dir_fd, dst_dir_fd=self.target.dir_fd
        )
        self.temp_name = ""
        return created

    def abort(self) -> None:
        with self._lock:
            self._abort()

    def _abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.temp_name:
            try:
                os.unlink(self.temp_name, dir_fd=self.target.dir_fd)
            except FileNotFoundError:
                pass
            self.temp_name = ""


def commit_all(writes: list[AtomicWrite], check: Check) -> list[tuple[bool, os.stat_result]]:
    """Rename the files of one form (one directory) into place all or none: every one is checked
    under the directory lock before the first is renamed, so a conflict on a later file keeps
    the earlier ones from being stored too."""
    dir_fd = writes[0].target.dir_fd
    if any(w.target.dir_fd != dir_fd for w in writes):
        raise ValueError("commit_all takes the files of one directory")
    with ExitStack() as held:
        for write in writes:
            held.enter_context(write._lock)
        stats = [write._seal() for write in writes]
        with _DirectoryLock(dir_fd):
            for write in writes:
                write._check(check)
            created = [write._place() for write in writes]
    if writes[0].fsync:
        os.fsync(dir_fd)
    return list(zip(created, stats, strict=True))


def delete(target: WriteTarget, check: Check, *, directory: bool = False) -> bool:
    """Remove a file (or an empty directory); returns whether it was a directory.

    With `directory` (a URL ending in '/'), only a directory is removed, as only one is served.
    """
    with _DirectoryLock(target.dir_fd):
        before = current(target)
        if before is None or (directory and not stat.S_ISDIR(before.st_mode)):
            raise NotServable()
        check(before)
        if not stat.S_ISDIR(before.st_mode):
            os.unlink(target.name, dir_fd=target.dir_fd)
            return False
        try:
            os.rmdir(target.name, dir_fd=target.dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise InTheWay("the directory is not empty") from exc
            raise
        return True


def remove_stale(dir_fd: int, name: str, *, min_age: float | None = None) -> bool:
    """Remove a temporary upload left behind by a process that died mid-upload; returns whether
    it is gone. With `min_age`, only a regular file untouched for that many seconds that no writer
    holds locked (whoever wrote it is unknown: another replica's upload may be in progress)."""
    if not name.startswith(TEMP_PREFIX):
        return False
    if min_age is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        return True
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime < min_age:
            return False
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    try:
        if os.fstat(fd).st_ino != st.st_ino:
            return False  # replaced since the stat
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a writer holds it: a live upload that is only slow
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        return True
    finally:
        os.close(fd)
