"""SHA-256 digests of stored files: computed once, keyed by the file's identity, never stale.

A digest belongs to a file's identity, (device, inode, size, mtime_ns), the same facts its ETag is
made from: a file replaced, appended or rewritten has a new identity, so an old digest can never
be paired with new bytes. Digests come from three places, all through `DigestBuilder`:
- an upload hashes its body while it streams to disk (no extra read; the piece hashes of a file of
  more than one piece are added later by the background hasher, which would otherwise double the
  hashing the upload waits for);
- the background `DigestWorker` hashes files the index lists without one, one file at a time, at
  FERRY_HASH_RATE, pausing while any worker is sending or receiving a file (`Activity`);
- a request that insists (`Want-Repr-Digest`, a `.meta4`, SHA256SUMS) has a small enough file
  hashed on demand by `OnDemandHasher`, once per file version, on its own thread.

A file is hashed only if its identity is the same before and after the read, and only once its
mtime is a little in the past: a write within the same timestamp tick as the read would leave the
mtime unchanged (as git's "racy" index entries), so a file still being written waits.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app import metrics
from app.errors import FerryError
from app.storage.paths import open_beneath, resolve

if TYPE_CHECKING:
    from app.storage.index import Entry, Index

logger = logging.getLogger("ferry.digests")

Identity = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns)
MIN_PIECE = 4 * 1024**2
MAX_PIECES = 1024
READ_SIZE = 1024**2
SETTLE_SECONDS = 2.0  # a file modified more recently than this is hashed later


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def stored_ns(ns: int) -> int:
    """A timestamp in ns as SQLite can hold it (a signed 64-bit integer): past year 2262 (which
    ext4 and tmpfs mtimes reach) it is clamped, rather than fail the directory's whole scan."""
    return min(max(ns, _INT64_MIN), _INT64_MAX)


def stored_u64(value: int) -> int:
    """An unsigned 64-bit number (st_dev, st_ino: NFS file ids use all 64 bits) as the signed
    64-bit integer with the same bits, so every value stays distinct in SQLite."""
    return value - 2**64 if value > _INT64_MAX else value


def identity(st: os.stat_result) -> Identity:
    return (stored_u64(st.st_dev), stored_u64(st.st_ino), st.st_size, stored_ns(st.st_mtime_ns))


def piece_length(size: int) -> int:
    """4 MiB, doubled until the file has at most 1,024 pieces."""
    length = MIN_PIECE
    while length * MAX_PIECES < size:
        length *= 2
    return length


@dataclass(frozen=True, slots=True)
class FileDigest:
    """The SHA-256 of a whole file and, for a file of more than one piece, of each piece."""

    sha256: bytes
    piece_length: int = 0
    pieces: bytes = b""  # the 32-byte SHA-256 of each piece, concatenated

    @property
    def hex(self) -> str:
        return self.sha256.hex()

    def piece_hexes(self) -> tuple[str, ...]:
        return tuple(self.pieces[i : i + 32].hex() for i in range(0, len(self.pieces), 32))


EMPTY_SHA256 = hashlib.sha256(b"").digest()
EMPTY_DIGEST = FileDigest(EMPTY_SHA256)


class DigestBuilder:
    """Hashes bytes as they pass: the whole-file SHA-256, piece SHA-256s, and any extra algorithms
    a client asked to verify (sha-512)."""

    def __init__(self, expected_size: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.whole = hashlib.sha256()
        self.extra = {name: hashlib.new(name) for name in extra if name != "sha256"}
        self.piece_length = piece_length(expected_size) if expected_size is not None else 0
        self._piece = hashlib.sha256() if self.piece_length else None
        self._in_piece = 0
        self._pieces: list[bytes] = []
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.whole.update(view)
        for h in self.extra.values():
            h.update(view)
        self.size += len(view)
        if self._piece is None:
            return
        while view:
            take = min(len(view), self.piece_length - self._in_piece)
            self._piece.update(view[:take])
            self._in_piece += take
            view = view[take:]
            if self._in_piece == self.piece_length:
                self._pieces.append(self._piece.digest())
                self._piece, self._in_piece = hashlib.sha256(), 0

    def hexdigest(self, name: str) -> str:
        return self.whole.hexdigest() if name == "sha256" else self.extra[name].hexdigest()

    def digest(self, name: str = "sha256") -> bytes:
        return self.whole.digest() if name == "sha256" else self.extra[name].digest()

    def result(self) -> FileDigest:
        pieces = list(self._pieces)
        if self._piece is not None and self._in_piece:
            pieces.append(self._piece.digest())
        if len(pieces) <= 1:
            return FileDigest(self.whole.digest())
        return FileDigest(self.whole.digest(), self.piece_length, b"".join(pieces))


def hash_open_file(
    fd: int,
    st: os.stat_result,
    *,
    extra: tuple[str, ...] = (),
    before_read: Callable[[int], bool] | None = None,
    after_read: Callable[[int], None] | None = None,
) -> DigestBuilder | None:
    """Hash an opened regular file from offset 0; None if it changed while being read (or if
    `before_read`, told the next read's size, returns False: stop). `after_read` is told each
    read's size."""
    builder = DigestBuilder(st.st_size, extra)
    offset = 0
    while offset < st.st_size:
        size = min(READ_SIZE, st.st_size - offset)
        if before_read is not None and not before_read(size):
            return None
        data = os.pread(fd, size, offset)
        if len(data) != size:
            return None
        builder.update(data)
        offset += size
        if after_read is not None:
            after_read(size)
    if identity(os.fstat(fd)) != identity(st):
        return None
    return builder


def settled(st: os.stat_result, now: float | None = None) -> bool:
    """Whether the file's mtime is far enough in the past for its identity to be trusted."""
    return st.st_mtime_ns / 1e9 <= (time.time() if now is None else now) - SETTLE_SECONDS


class Activity:
    """Whether any Ferry process sharing this index has been moving file bytes lately.

    Every process holds a shared flock on `<index>.busy` while it has a transfer in flight and for
    `linger` seconds after its last one ended (small downloads end between requests, so without
    it a stream of them would look idle most of the time); the digest worker probes with a
    non-blocking exclusive lock on its own descriptor. `begin` and `end` run on the event loop;
    only taking the lock after an idle spell and releasing it cost a system call.
    """

    def __init__(self, path: Path, *, linger: float = 1.0) -> None:
        self.path = path
        self.linger = linger
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._probe_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._active = 0
        self._held = False
        self._last_end = 0.0
        self._release: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        self._active += 1
        if not self._held:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                self._held = True
            except BlockingIOError:
                pass  # a probe holds it this instant: the hasher does one more read, no harm

    def end(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._last_end = time.monotonic()
            if self._release is None:
                self._release = asyncio.get_running_loop().call_later(self.linger, self._maybe_release)

    def _maybe_release(self) -> None:
        self._release = None
        if self._active:
            return  # a transfer is in flight: `end` schedules the release again
        quiet = time.monotonic() - self._last_end
        if quiet < self.linger:
            self._release = asyncio.get_running_loop().call_later(self.linger - quiet, self._maybe_release)
        elif self._held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._held = False

    def busy(self) -> bool:
        try:
            fcntl.flock(self._probe_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._probe_fd, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        for fd in (self._fd, self._probe_fd):
            os.close(fd)


class DigestWorker:
    """The background hasher: a thread that hashes the files the index lists without a digest.

    One file at a time, `READ_SIZE` per read, at most `rate` bytes per second (0: as fast as the
    disk and one core allow), and nothing while `activity` says a transfer is in flight.
    """

    def __init__(self, index: Index, activity: Activity, *, rate: int, idle_poll: float = 1.0) -> None:
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
        if known is not None and (known.pieces or entry.size <= MIN_PIECE):
            self.index.done_digest(entry_id)  # a hard link, or an upload of at most one piece
            return False
        # Unknown, or an upload's whole-file digest still without the .meta4's piece hashes.
        try:
            fd, st = open_beneath(resolve(entry.path, self.index.policy), self.index.policy)
        except (OSError, ValueError, FerryError):
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


class DigestCache:
    """A worker's memory of digests by identity, in front of the index.

    A known digest never goes stale (its identity says which bytes it describes), so hits are kept
    (up to `size`); a miss is remembered for `miss_ttl` seconds, so a file not hashed yet costs
    one index read per second, not one per request. The index is read through `read` (off the
    event loop), once for all the requests that want the same identity meanwhile, and a request
    waits at most `patience` seconds for it: a download then goes on without its digest fields
    rather than wait on a busy index (the read goes on, and the next request finds its answer).
    """

    def __init__(
        self,
        read: Callable[[Identity], Awaitable[FileDigest | None]],
        *,
        size: int = 8192,
        miss_ttl: float = 1.0,
        patience: float = 1.0,
    ) -> None:
        self.read = read
        self.size = size
        self.miss_ttl = miss_ttl
        self.patience = patience
        self._known: dict[Identity, FileDigest] = {}
        self._missing: dict[Identity, float] = {}
        self._lookups: dict[Identity, asyncio.Task[FileDigest | None]] = {}

    async def get(self, ident: Identity, *, wait: bool = False) -> FileDigest | None:
        """The digest if known; None if not, or (unless `wait`) if the index did not answer
        within `patience`."""
        found = self._known.get(ident)
        if found is not None:
            return found
        if self._missing.get(ident, 0.0) > time.monotonic():
            return None
        lookup = self._lookups.get(ident)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(ident))
            self._lookups[ident] = lookup
            lookup.add_done_callback(lambda done: self._looked_up(ident, done))
        try:
            return await asyncio.wait_for(asyncio.shield(lookup), None if wait else self.patience)
        except TimeoutError:
            metrics.DIGEST_LOOKUPS_ABANDONED.inc()
            return None

    async def _lookup(self, ident: Identity) -> FileDigest | None:
        found = await self.read(ident)
        if found is None:
            if len(self._missing) >= self.size:
                self._missing.clear()
            self._missing[ident] = time.monotonic() + self.miss_ttl
            return None
        self.remember(ident, found)
        return found

    def _looked_up(self, ident: Identity, done: asyncio.Task[FileDigest | None]) -> None:
        self._lookups.pop(ident, None)
        if not done.cancelled():
            done.exception()  # a failure nobody waited for is not logged as "never retrieved"

    def remember(self, ident: Identity, digest: FileDigest) -> None:
        if len(self._known) >= self.size:
            self._known.pop(next(iter(self._known)))  # the oldest
        self._known[ident] = digest
        self._missing.pop(ident, None)


@dataclass(frozen=True, slots=True)
class Hashed:
    """What an on-demand hash found: the file's digest, the extra algorithm's digest if one was
    asked for (by hashlib name), and whether the file had settled (then the result is kept)."""

    digest: FileDigest
    extra: dict[str, bytes]
    settled: bool


class HashBusy(Exception):
    """An on-demand hash refused: the hashing already waiting plus this file is over the bound."""


class OnDemandHasher:
    """Hashing that a request waits for (`Want-Repr-Digest`, a `.meta4`, SHA256SUMS), bounded per
    file version and overall, and apart from the threads that move file bytes.

    - Once per file version: a settled result is remembered under its identity (SHA-256 in the
      index, another algorithm in a small LRU), and requests for a file version being hashed share
      that one computation (single-flight).
    - Overall: jobs run on `threads` dedicated threads, never on the thread pool that uploads and
      downloads use, and a new job is admitted only while the bytes of the jobs queued or running
      plus its own stay within `max_backlog` (FERRY_HASH_ON_DEMAND_MAX), so a request never waits
      behind more hashing than that. Each worker process has its own.

    `hash` runs on the event loop. A job reads through a duplicate of the request's descriptor: a
    request that ends early does not close the file under a job other requests wait for.
    """

    def __init__(self, index: Index, *, max_backlog: int, threads: int = 1, memo_size: int = 1024) -> None:
        self.index = index
        self.max_backlog = max_backlog
        self.memo_size = memo_size
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ferry-hash-on-demand")
        self._jobs: dict[tuple[Identity, str], asyncio.Future[Hashed | None]] = {}
        self._memo: OrderedDict[tuple[Identity, str], bytes] = OrderedDict()
        self._backlog = 0
        self._closed = False

    def known(self, ident: Identity, name: str) -> bytes | None:
        """A remembered digest by hashlib name, other than SHA-256 (the index keeps those)."""
        found = self._memo.get((ident, name))
        if found is not None:
            self._memo.move_to_end((ident, name))
        return found

    async def hash(self, fd: int, st: os.stat_result, name: str = "sha256") -> Hashed | None:
        """The file's digests (SHA-256, and `name` if another), computed once for all concurrent
        requests; None if the file changed while being read. HashBusy: over the backlog bound."""
        key = (identity(st), name)
        job = self._jobs.get(key)
        if job is None:
            size = st.st_size
            if self._closed or self._backlog + size > self.max_backlog:
                raise HashBusy()
            own = os.dup(fd)
            try:
                job = asyncio.wrap_future(self._pool.submit(self._run, own, st, name))
            except BaseException:
                os.close(own)
                raise
            self._backlog += size
            self._jobs[key] = job
            job.add_done_callback(lambda _: self._finished(key, size))
        return await asyncio.shield(job)  # one request going away never cancels the others' job

    def _finished(self, key: tuple[Identity, str], size: int) -> None:
        self._backlog -= size
        job = self._jobs.pop(key)
        if job.cancelled() or job.exception() is not None:
            return
        hashed = job.result()
        if hashed is not None and hashed.settled and key[1] in hashed.extra:
            self._memo[key] = hashed.extra[key[1]]
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)  # the least recently used

    def _run(self, fd: int, st: os.stat_result, name: str) -> Hashed | None:
        """In a pool thread: hash the file, and store a settled SHA-256 in the index."""
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_NOREUSE)
            built = hash_open_file(
                fd,
                st,
                extra=(name,),
                before_read=lambda _: not self._closed,
                after_read=metrics.ON_DEMAND_HASH_BYTES.inc,
            )
        finally:
            os.close(fd)
        if built is None:
            return None
        digest, ok = built.result(), settled(st)
        if ok:  # else a write within the same mtime tick could follow: used now, not kept
            self.index.put_digest(identity(st), digest)
        return Hashed(digest, {name: built.digest(name)} if name != "sha256" else {}, ok)

    def close(self) -> None:
        """Stop hashing (a job in progress stops at its next read); the threads then end."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
