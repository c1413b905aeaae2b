"""Digests a request path uses: the worker's memory of known digests (`DigestCache`) and hashing
a request waits for (`OnDemandHasher`), both on the event loop's side of the index."""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from app import metrics
from app.storage.digests import hash_open_file, settled
from app.storage.values import FileDigest, Identity, identity


class DigestSink(Protocol):
    """Where a settled on-demand SHA-256 is kept (app/storage/index.py's `Index`)."""

    def put_digest(self, ident: Identity, digest: FileDigest, *, done: int | None = None) -> None: ...


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

    def peek(self, ident: Identity) -> tuple[bool, FileDigest | None]:
        """(True, the digest) when this worker knows it, (True, None) while a recent lookup found
        none, else (False, None): what `get` would answer at once, without waiting."""
        found = self._known.get(ident)
        if found is not None:
            return True, found
        return self._missing.get(ident, 0.0) > time.monotonic(), None

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

    def __init__(
        self, index: DigestSink, *, max_backlog: int, threads: int = 1, memo_size: int = 1024
    ) -> None:
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
