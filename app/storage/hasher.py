"""The integrity worker: the background hasher that gives every file the index lists a digest.

It needs a handful of the index's methods (`DigestQueue`), and to know whether file bytes are
moving (`Busy`, which the transfer layer's `Activity` provides); it imports neither the index nor
the transfer layer, so either can change behind those protocols.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from typing import Protocol

from app import metrics
from app.storage.digests import MIN_PIECE, SETTLE_SECONDS, hash_open_file, settled
from app.storage.errors import StorageError
from app.storage.paths import PathPolicy, open_beneath, resolve
from app.storage.values import Entry, FileDigest, Identity, identity

logger = logging.getLogger("ferry.digests")


class DigestQueue(Protocol):
    """What the worker needs of the index (app/storage/index.py's `Index` has it)."""

    @property
    def policy(self) -> PathPolicy: ...

    def pending_digests(self, limit: int, after: int = 0) -> list[tuple[int, Entry]]: ...

    def digest(self, ident: Identity) -> FileDigest | None: ...

    def put_digest(self, ident: Identity, digest: FileDigest, *, done: int | None = None) -> None: ...

    def done_digest(self, entry_id: int) -> None: ...


class Busy(Protocol):
    """Whether file bytes are moving now (app/transfer/activity.py's `Activity`)."""

    def busy(self) -> bool: ...


class DigestWorker:
    """The background hasher: a thread that hashes the files the index lists without a digest.

    One file at a time, `READ_SIZE` per read, at most `rate` bytes per second (0: as fast as the
    disk and one core allow), and nothing while `activity` says a transfer is in flight.
    """

    def __init__(self, index: DigestQueue, activity: Busy, *, rate: int, idle_poll: float = 1.0) -> None:
        self.index = index
        self.activity = activity
        self.rate = rate
        self.idle_poll = idle_poll
        self.hashed_files = 0
        self.hashed_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ferry-digests", daemon=True)
        self._later: dict[int, float] = {}  # entry id → when to try again (a file still changing)
        self._window_start = time.monotonic()
        self._window_bytes = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        cursor, worked = 0, False
        while not self._stop.is_set():
            try:
                cursor, hashed = self._round(cursor)
                worked = worked or hashed
            except Exception:
                logger.exception("hashing failed; trying again shortly")
                cursor = 0
            if cursor == 0:  # a pass over the queue is done
                if not worked:
                    self._stop.wait(self.idle_poll)
                worked = False

    def _round(self, cursor: int) -> tuple[int, bool]:
        """One batch of the queue after `cursor` (files still changing are passed over, so they
        never hold up the rest); returns the next cursor (0: the pass is over) and whether any
        file was hashed."""
        batch = self.index.pending_digests(64, after=cursor)
        if not batch:
            return 0, False
        now, hashed = time.monotonic(), False
        for entry_id, entry in batch:
            if self._stop.is_set():
                break
            if self._later.get(entry_id, 0.0) <= now:
                hashed = self._hash_entry(entry_id, entry) or hashed
        return batch[-1][0], hashed

    def _hash_entry(self, entry_id: int, entry: Entry) -> bool:
        known = self.index.digest((entry.dev, entry.ino, entry.size, entry.mtime_ns))
        if known is not None and known.crc32 is not None and (known.pieces or entry.size <= MIN_PIECE):
            self.index.done_digest(entry_id)  # a hard link, or an upload of at most one piece
            return False
        # Unknown, an upload's whole-file digest still without the .meta4's piece hashes, or a
        # digest stored without its CRC-32 (a ZIP entry needs it).
        try:
            fd, st = open_beneath(resolve(entry.path, self.index.policy), self.index.policy)
        except (OSError, ValueError, StorageError):
            self.index.done_digest(entry_id)  # gone or refused: a scan brings it back if it returns
            return False
        try:
            # Read once and not again: these pages must not push out what downloads keep hot.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_NOREUSE)
            if not stat.S_ISREG(st.st_mode):
                self.index.done_digest(entry_id)
                return False
            if not settled(st):
                if len(self._later) > 100_000:
                    self._later.clear()  # entries deleted while waiting leave theirs behind
                self._later[entry_id] = time.monotonic() + SETTLE_SECONDS
                return False
            built = hash_open_file(fd, st, before_read=self._before_read, after_read=metrics.HASHED_BYTES.inc)
        finally:
            os.close(fd)
        if built is None:
            self._later[entry_id] = time.monotonic() + SETTLE_SECONDS  # changed, or stopping
            return False
        self._later.pop(entry_id, None)
        self.index.put_digest(identity(st), built.result(), done=entry_id)
        self.hashed_files += 1
        self.hashed_bytes += st.st_size
        metrics.HASHED_FILES.inc()
        return True

    def _before_read(self, size: int) -> bool:
        """Wait while transfers are in flight and while over the rate; False when stopping."""
        while self.activity.busy():
            if self._stop.wait(0.25):
                return False
            self._window_start, self._window_bytes = time.monotonic(), 0
        if self.rate:
            self._window_bytes += size
            ahead = self._window_start + self._window_bytes / self.rate - time.monotonic()
            if ahead > 0 and self._stop.wait(ahead):
                return False
            if ahead < -1:  # idle for a while: do not burst to catch up
                self._window_start, self._window_bytes = time.monotonic(), size
        return not self._stop.is_set()
