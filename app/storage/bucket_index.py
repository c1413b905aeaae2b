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
from app.storage.errors import Unreachable
from app.storage.index import Index
from app.storage.s3 import S3Storage
from app.storage.values import Entry, FileDigest, entry_from_object
from app.storage.watch import owner_lock

logger = logging.getLogger("ferry.index")
_BATCH = 500  # entries per index write


def entry_of(stat: Stat) -> Entry:
    return entry_from_object(stat.path, stat.is_dir, stat.size, stat.mtime_ns, stat.version)


class BucketKeeper:
    """Runs the listing rounds for one index over one bucket, if this process owns the index."""

    def __init__(
        self, index: Index, async_index: AsyncIndex, bucket: S3Storage, *, rescan_interval: float
    ) -> None:
        self.index = index
        self.async_index = async_index
        self.bucket = bucket
        self.rescan_interval = rescan_interval
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock: int | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._lock = owner_lock(self.index)
        if self._lock is None:
            self.ready.set()  # another worker keeps the index; this one only reads it
            return
        self._task = asyncio.create_task(self._run(), name="ferry-bucket-index")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    async def _run(self) -> None:
        while True:
            await self.sync()
            self.ready.set()
            if self.rescan_interval <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.rescan_interval)
                return

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


def remember_digest(index: Index, stat: Stat) -> None:
    """Keep the SHA-256 stored with an object (Ferry's own upload) by the object's identity."""
    if stat.sha256 is not None:
        entry = entry_of(stat)
        index.put_digest((entry.dev, entry.ino, entry.size, entry.mtime_ns), FileDigest(stat.sha256))
