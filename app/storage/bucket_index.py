"""Keeping the index of a bucket (FERRY_STORAGE=s3://…): a full listing at start-up and every
FERRY_RESCAN_INTERVAL, and Ferry's own writes at once.

A bucket has no inotify: another replica's upload, or one made with any other S3 client, appears
in this replica's listings and search at its next listing round; downloads do not wait for it
(they ask the bucket, not the index). A round reads the bucket in pages of 1000 keys (no whole
listing in memory but the set of paths seen, to drop what is gone), writes entries in batches on
the index's writer thread and then drops the entries no longer listed. Only one process per index
runs the rounds (the one holding ``<index>.lock``, as for a local root); an unreachable store
skips a round with one warning, and the index keeps what it had.

The same process hashes what the index lists without a digest (FERRY_CHECKSUMS): an object
stored with Ferry's `sha256` and `crc32` attributes costs one HEAD and is never read; any other
(one stored by an older Ferry with a SHA-256 alone included: a ZIP entry needs the CRC-32) is read once,
in windows pinned to its ETag, at most FERRY_HASH_RATE bytes a second and not while downloads
are in flight, as the local hasher does (app/storage/hasher.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import replace

from app import metrics
from app.storage.async_index import AsyncIndex
from app.storage.backend import Stat
from app.storage.digests import DigestBuilder
from app.storage.errors import Changed, NotServable, Unreachable
from app.storage.hasher import Busy
from app.storage.index import Index
from app.storage.s3 import S3Storage
from app.storage.values import Entry, FileDigest, Identity, entry_from_object
from app.storage.watch import owner_lock

logger = logging.getLogger("ferry.index")
_BATCH = 500  # entries per index write
_RETRY_SECONDS = 30.0  # how long hashing waits after the store stopped answering
_RETRY = (2.0, 60.0)  # first and longest wait before a failed listing round is tried again


def entry_of(stat: Stat) -> Entry:
    """The index entry of an object, with the digest and CRC-32 stored with it, if any."""
    entry = entry_from_object(stat.path, stat.is_dir, stat.size, stat.mtime_ns, stat.version)
    return replace(entry, sha256=stat.sha256, crc32=stat.crc32)


class BucketKeeper:
    """Runs the listing rounds for one index over one bucket, if this process owns the index."""

    def __init__(
        self,
        index: Index,
        async_index: AsyncIndex,
        bucket: S3Storage,
        *,
        rescan_interval: float,
        hasher: BucketHasher | None = None,
    ) -> None:
        self.index = index
        self.async_index = async_index
        self.bucket = bucket
        self.rescan_interval = rescan_interval
        self.hasher = hasher
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._hashing: asyncio.Task[None] | None = None
        self._filling: asyncio.Task[None] | None = None  # a refill by a process not running rounds
        self._lock: int | None = None
        self._stop = asyncio.Event()
        self._again = asyncio.Event()  # a listing round is wanted before the interval is over

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        # A damaged index replaced by an empty one is filled by a listing round at once.
        def wanted() -> None:
            loop.call_soon_threadsafe(self._refill)

        self.index.refill_wanted = wanted
        self._lock = owner_lock(self.index)
        if self._lock is None:
            self.ready.set()  # another worker keeps the index; this one only reads it
            return
        self._task = asyncio.create_task(self._run(), name="ferry-bucket-index")

    async def stop(self) -> None:
        self._stop.set()
        for task in (self._task, self._hashing, self._filling):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _refill(self) -> None:
        if self._task is not None:
            self._again.set()  # this process runs the rounds: one more, now
        elif self._filling is None or self._filling.done():
            self._filling = asyncio.create_task(self._refill_round(), name="ferry-bucket-refill")

    async def _refill_round(self) -> None:
        await self._round()

    async def _run(self) -> None:
        retry = _RETRY[0]
        while True:
            listed = await self._round()
            self.ready.set()
            if self.hasher is not None and self._hashing is None:
                self._hashing = asyncio.create_task(self.hasher.run(self._stop), name="ferry-bucket-hash")
            # A round that failed (the store not up yet) is tried again soon, not an interval later.
            wait = self.rescan_interval if listed else min(retry, self.rescan_interval or retry)
            retry = _RETRY[0] if listed else min(retry * 2, _RETRY[1])
            if await self._wait_round(wait):
                return

    async def _wait_round(self, seconds: float) -> bool:
        """Wait for the next round: True when stopping instead."""
        stop = asyncio.ensure_future(self._stop.wait())
        again = asyncio.ensure_future(self._again.wait())
        timeout = seconds if seconds > 0 else None
        try:
            await asyncio.wait((stop, again), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            again.cancel()
        self._again.clear()
        return self._stop.is_set()

    async def _round(self) -> bool:
        try:
            return await self.sync()
        except Exception:
            logger.exception("index listing of the bucket failed; trying again shortly")
            return False

    async def sync(self) -> bool:
        """One listing round; False when the store could not be listed (the index is kept)."""
        began = time.monotonic()
        # Ferry's own uploads while the bucket is listed are indexed at once; the listing may have
        # passed their names already, so what was added since it began is not dropped at its end.
        known = await self.async_index.read(self.index.last_entry_id)
        seen: set[str] = set()
        batch: list[Entry] = []
        try:
            async for stat in self.bucket.walk():
                seen.add(stat.path)
                batch.append(entry_of(stat))
                if len(batch) >= _BATCH:
                    await self.async_index.write(self.index.put_many, batch)
                    batch = []
        except Unreachable as exc:
            logger.warning("index listing of the bucket failed (%s); keeping the index as it is", exc)
            return False
        if batch:
            await self.async_index.write(self.index.put_many, batch)
        dropped = await self.async_index.write(self.index.keep_only, seen, up_to=known)
        seconds = time.monotonic() - began
        metrics.INDEX_SCAN_SECONDS.set(seconds)
        logger.info(
            "index listing of %s: %d entries, %d dropped, %.2fs",
            self.bucket.config.location,
            len(seen),
            dropped,
            seconds,
        )
        return True


class BucketHasher:
    """The digests of the objects the index lists without one (see the module's docstring)."""

    def __init__(
        self, index: Index, async_index: AsyncIndex, bucket: S3Storage, activity: Busy, *, rate: int
    ) -> None:
        self.index = index
        self.async_index = async_index
        self.bucket = bucket
        self.activity = activity
        self.rate = rate
        self.idle_poll = 1.0
        self.read_files = 0  # objects read to be hashed (a stored SHA-256 costs none)
        self._window_start = time.monotonic()
        self._window_bytes = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            pause = self.idle_poll
            try:
                if await self._pass(stop):
                    continue
            except Unreachable as exc:  # one line per pause, not one per object
                logger.warning("hashing paused: the storage did not answer (%s)", exc)
                pause = _RETRY_SECONDS
            except Exception:
                logger.exception("hashing the bucket's objects failed; trying again shortly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)

    async def _pass(self, stop: asyncio.Event) -> bool:
        """One pass over the index's queue of entries without a digest; whether any was settled."""
        cursor, worked = 0, False
        while not stop.is_set():
            batch = await self.async_index.read(self.index.pending_digests, 64, after=cursor)
            if not batch:
                break
            for entry_id, entry in batch:
                if stop.is_set():
                    break
                worked = await self._settle(entry_id, entry) or worked
            cursor = batch[-1][0]
        return worked

    async def _settle(self, entry_id: int, entry: Entry) -> bool:
        ident: Identity = (entry.dev, entry.ino, entry.size, entry.mtime_ns)
        known = None if entry.is_dir else await self.async_index.read(self.index.digest, ident)
        if entry.is_dir or (known is not None and known.crc32 is not None):
            await self.async_index.write(self.index.done_digest, entry_id)
            return False
        try:
            stat = await self.bucket.stat(entry.path)
            now = entry_of(stat)
            if stat.is_dir or (now.dev, now.ino, now.size, now.mtime_ns) != ident:
                raise Changed()  # replaced or gone: the next listing round queues what is there now
            if stat.sha256 is not None and stat.crc32 is not None:  # by Ferry's upload: not read
                digest, stored = FileDigest(stat.sha256, crc32=stat.crc32), True
            else:
                digest, stored = await self._read(stat), False
        except (Changed, NotServable):
            await self.async_index.write(self.index.done_digest, entry_id)
            return False
        await self.async_index.write(self.index.put_digest, ident, digest, done=entry_id)
        if not stored:
            metrics.HASHED_FILES.inc()
        return True

    async def _read(self, stat: Stat) -> FileDigest:
        builder = DigestBuilder(stat.size)
        stream = await self.bucket.open_range(stat.path, 0, stat.size, if_match=stat.etag)
        try:
            async for data in stream:
                await self._pace(len(data))
                builder.update(memoryview(data))
                metrics.HASHED_BYTES.inc(len(data))
        finally:
            await stream.aclose()
        self.read_files += 1
        return builder.result()

    async def _pace(self, size: int) -> None:
        """Wait while downloads are in flight and while over FERRY_HASH_RATE (0: no limit)."""
        while self.activity.busy():
            await asyncio.sleep(0.25)
            self._window_start, self._window_bytes = time.monotonic(), 0
        if self.rate:
            self._window_bytes += size
            ahead = self._window_start + self._window_bytes / self.rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            if ahead < -1:  # idle for a while: do not burst to catch up
                self._window_start, self._window_bytes = time.monotonic(), size


def remember_digest(index: Index, stat: Stat) -> None:
    """Keep the SHA-256 and CRC-32 of an object's bytes (Ferry's own upload computed them) by the
    object's identity."""
    if stat.sha256 is not None:
        entry = entry_of(stat)
        digest = FileDigest(stat.sha256, crc32=stat.crc32)
        index.put_digest((entry.dev, entry.ino, entry.size, entry.mtime_ns), digest)


def index_written(index: Index, stat: Stat, created: bool) -> Entry:
    """Ferry's own write of an object into the index at once (its writer thread): the object's
    folders, its digest (before the entry: the hasher then skips it), the entry; the metrics move."""
    metrics.UPLOADS.labels("created" if created else "replaced").inc()
    metrics.UPLOAD_BYTES.inc(stat.size)
    parts = stat.path.split("/")[:-1]
    folders = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if folders:
        index.put_many([entry_of(Stat(f, True, 0, 0, None, "")) for f in folders])
    remember_digest(index, stat)
    entry = entry_of(stat)  # with the digest and CRC-32 the upload computed
    index.put(entry)
    return entry
