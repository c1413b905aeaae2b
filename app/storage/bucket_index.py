"""Keeping the index of a bucket (FERRY_STORAGE=s3://…): a full listing at start-up and every
FERRY_RESCAN_INTERVAL, and Ferry's own writes at once.

A bucket has no inotify: another replica's upload, or one made with any other S3 client, appears
in this replica's listings and search at its next listing round; downloads do not wait for it
(they ask the bucket, not the index). A round reads the bucket in pages of 1000 keys (no whole
listing in memory but the set of paths seen, to drop what is gone), writes entries in batches on
the index's writer thread and then drops the entries no longer listed. Only one process per index
runs the rounds (the one holding ``<index>.lock``, as for a local root); an unreachable store
skips a round with one warning, and the index keeps what it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from app import metrics
from app.storage.async_index import AsyncIndex
from app.storage.backend import Stat
from app.storage.digests import DigestBuilder
from app.storage.errors import Changed, NotServable, Unreachable
from app.storage.hasher import Busy
from app.storage.index import Index
from app.storage.s3 import S3Storage
from app.storage.values import Entry, FileDigest, entry_from_object
from app.storage.watch import owner_lock

logger = logging.getLogger("ferry.index")
_BATCH = 500  # entries per index write
_RETRY = (2.0, 60.0)  # first and longest wait before a failed listing round is tried again


def entry_of(stat: Stat) -> Entry:
    return entry_from_object(stat.path, stat.is_dir, stat.size, stat.mtime_ns, stat.version)


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
    """The background hasher of a bucket: gives every object the index lists a digest.

    An object Ferry stored carries its SHA-256 (an attribute of the object): one HEAD, no read.
    Any other is read once, in the storage's windows pinned to its version, at most `rate` bytes
    a second (FERRY_HASH_RATE; 0: unpaced), and not while this process sends or receives file
    bytes (`activity`), as the local hasher does. An object that changed or went meanwhile is
    passed over: the next listing round brings its new version.
    """

    def __init__(
        self, index: Index, async_index: AsyncIndex, bucket: S3Storage, activity: Busy, *, rate: int
    ) -> None:
        self.index = index
        self.async_index = async_index
        self.bucket = bucket
        self.activity = activity
        self.rate = rate
        self.hashed_files = 0
        self.read_files = 0

    async def run(self, stop: asyncio.Event, idle_poll: float = 1.0) -> None:
        """Hash until `stop` is set: passes over the queue, waiting `idle_poll` when it is empty."""
        cursor = 0
        while not stop.is_set():
            batch = await self.async_index.read(self.index.pending_digests, 64, cursor)
            for entry_id, entry in batch:
                if stop.is_set():
                    return
                try:
                    await self.hash_entry(entry_id, entry)
                except Unreachable as exc:
                    logger.warning("hashing %r: %s; trying again later", entry.path, exc)
                    await _wait(stop, 10.0)
                    break
            cursor = batch[-1][0] if batch else 0
            if not batch:
                await _wait(stop, idle_poll)

    async def hash_entry(self, entry_id: int, entry: Entry) -> None:
        ident = (entry.dev, entry.ino, entry.size, entry.mtime_ns)
        if await self.async_index.read(self.index.digest, ident) is not None:
            await self.async_index.write(self.index.done_digest, entry_id)
            return
        try:
            stat = await self.bucket.stat(entry.path)
        except NotServable:
            stat = None
        if stat is None or stat.is_dir or entry_of(stat) != entry:
            await self.async_index.write(self.index.done_digest, entry_id)  # changed or gone
            return
        if stat.sha256 is None:
            built = await self._read(stat)
            if built is None:
                await self.async_index.write(self.index.done_digest, entry_id)
                return
            digest = built.result()
            self.read_files += 1
        else:
            digest = FileDigest(stat.sha256)
        await self.async_index.write(self.index.put_digest, ident, digest, done=entry_id)
        self.hashed_files += 1
        metrics.HASHED_FILES.inc()

    async def _read(self, stat: Stat) -> DigestBuilder | None:
        builder = DigestBuilder(stat.size)
        began, sent = time.monotonic(), 0
        stream = await self.bucket.open_range(stat.path, 0, stat.size, if_match=stat.etag)
        try:
            async for data in stream:
                while self.activity.busy():
                    await asyncio.sleep(0.25)
                    began, sent = time.monotonic(), 0
                builder.update(data)
                metrics.HASHED_BYTES.inc(len(data))
                sent += len(data)
                if self.rate:
                    ahead = began + sent / self.rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        except Changed:
            return None
        finally:
            await stream.aclose()
        return builder


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def remember_digest(index: Index, stat: Stat) -> None:
    """Keep the SHA-256 stored with an object (Ferry's own upload) by the object's identity."""
    if stat.sha256 is not None:
        entry = entry_of(stat)
        index.put_digest((entry.dev, entry.ino, entry.size, entry.mtime_ns), FileDigest(stat.sha256))
