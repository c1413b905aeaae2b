"""The index of a bucket (app/storage/bucket_index.py) against the real engine: what a listing round
writes and drops, and the background hasher — the SHA-256 Ferry stored with an object is taken
without a read, any other object is read once, and an object changed since it was listed is
passed over."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import obstore
import pytest

from app.storage.async_index import AsyncIndex
from app.storage.bucket_index import BucketHasher, BucketKeeper, entry_of
from app.storage.index import Index
from app.storage.paths import PathPolicy
from app.storage.s3 import S3Storage
from tests.support.seaweed import Seaweed
from tests.support.storage import body, config, credentials

pytestmark = [pytest.mark.anyio, pytest.mark.engine]

DEADLINE = 60.0  # generous: the engine and the machine are shared


class Idle:
    def busy(self) -> bool:
        return False


class Parts:
    def __init__(self, engine: Seaweed, tmp: Path) -> None:
        self.engine = engine
        self.prefix = f"bucket-index-{os.urandom(4).hex()}/"
        root = tmp / "root"
        root.mkdir()
        self.index = Index(tmp / "index.sqlite3", PathPolicy(root=root))
        self.index.on_disk = False
        self.async_index = AsyncIndex(self.index)
        self.bucket = S3Storage(config(engine, self.prefix, chunk_size=256 * 1024), credentials(engine))

    async def plant(self, name: str, data: bytes) -> None:
        await obstore.put_async(self.engine.store(), self.prefix + name, data)


@pytest.fixture
async def parts(seaweed: Seaweed, tmp_path: Path) -> AsyncIterator[Parts]:
    made = Parts(seaweed, tmp_path)
    yield made
    await made.bucket.aclose()
    await asyncio.to_thread(made.async_index.close)


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    end = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_listing_round_writes_the_bucket_and_drops_what_is_gone(parts: Parts) -> None:
    await parts.plant("a/one.txt", b"one")
    await parts.plant("a/b/two.txt", b"two")
    await parts.plant("three.txt", b"three")
    keeper = BucketKeeper(parts.index, parts.async_index, parts.bucket, rescan_interval=0)
    assert await keeper.sync()
    assert {e.path for e in parts.index.list_dir("", limit=10).entries} == {"a", "three.txt"}
    assert {e.path for e in parts.index.list_dir("a", limit=10).entries} == {"a/b", "a/one.txt"}
    found = parts.index.get("a/b/two.txt")
    assert found is not None and found.size == 3 and not found.is_dir
    assert found == entry_of(await parts.bucket.stat("a/b/two.txt"))  # listing and HEAD agree

    await obstore.delete_async(parts.engine.store(), parts.prefix + "a/b/two.txt")
    assert await keeper.sync()
    assert parts.index.get("a/b/two.txt") is None
    assert parts.index.get("a/b") is None  # the prefix has no key left: no folder either
    assert parts.index.get("a/one.txt") is not None


async def test_the_hasher_takes_stored_digests_and_reads_the_rest_once(parts: Parts) -> None:
    stored = os.urandom(700 * 1024)
    plain = os.urandom(600 * 1024)
    await parts.bucket.write("stored.bin", body(stored), sha256=hashlib.sha256(stored).digest())
    await parts.plant("plain.bin", plain)
    keeper = BucketKeeper(parts.index, parts.async_index, parts.bucket, rescan_interval=0)
    assert await keeper.sync()
    hasher = BucketHasher(parts.index, parts.async_index, parts.bucket, Idle(), rate=0)
    stop = asyncio.Event()
    hasher.idle_poll = 0.05
    task = asyncio.create_task(hasher.run(stop))
    try:

        async def both_known() -> bool:
            return all(parts.index.get(p).sha256 is not None for p in ("stored.bin", "plain.bin"))  # type: ignore[union-attr]

        await until(both_known)
    finally:
        stop.set()
        await task
    assert parts.index.get("stored.bin").sha256 == hashlib.sha256(stored).digest()  # type: ignore[union-attr]
    assert parts.index.get("plain.bin").sha256 == hashlib.sha256(plain).digest()  # type: ignore[union-attr]
    assert hasher.read_files == 1  # the stored digest came from the object's attribute
    assert parts.index.pending_count() == 0


async def test_an_object_replaced_after_its_listing_is_not_given_the_new_bytes_digest(parts: Parts) -> None:
    await parts.plant("moving.bin", b"first version")
    keeper = BucketKeeper(parts.index, parts.async_index, parts.bucket, rescan_interval=0)
    assert await keeper.sync()
    listed = parts.index.get("moving.bin")
    assert listed is not None
    await parts.plant("moving.bin", b"second version, longer")
    hasher = BucketHasher(parts.index, parts.async_index, parts.bucket, Idle(), rate=0)
    [(entry_id, entry)] = parts.index.pending_digests(10)
    await hasher._settle(entry_id, entry)
    assert parts.index.digest((listed.dev, listed.ino, listed.size, listed.mtime_ns)) is None
    assert parts.index.pending_count() == 0  # passed over; the next round lists the new version
    assert await keeper.sync()
    [(entry_id, entry)] = parts.index.pending_digests(10)
    await hasher._settle(entry_id, entry)
    now = parts.index.get("moving.bin")
    assert now is not None and now.sha256 == hashlib.sha256(b"second version, longer").digest()


async def test_an_index_replaced_after_damage_is_filled_again_at_once(parts: Parts) -> None:
    """A damaged index is replaced by an empty one and its `refill` is called (database.py):
    with a bucket, that is a listing round now, not at the next interval five minutes away."""
    await parts.plant("kept/file.txt", b"kept")
    keeper = BucketKeeper(parts.index, parts.async_index, parts.bucket, rescan_interval=300)
    await keeper.start()
    try:
        await asyncio.wait_for(keeper.ready.wait(), DEADLINE)
        assert parts.index.get("kept/file.txt") is not None
        parts.index.keep_only(set())  # what the replacement database holds: nothing
        await asyncio.to_thread(parts.index.refill)  # as the rebuild calls it, from a thread

        async def back() -> bool:
            return parts.index.get("kept/file.txt") is not None

        await until(back)
    finally:
        await keeper.stop()


async def test_a_failed_first_listing_is_tried_again_soon_not_an_interval_later(parts: Parts) -> None:
    """Replicas may start before their storage answers: the first round fails, and the next
    comes within seconds (backing off), not FERRY_RESCAN_INTERVAL later."""
    await parts.plant("late.txt", b"late")

    class Flaky(BucketKeeper):
        rounds = 0

        async def sync(self) -> bool:
            self.rounds += 1
            if self.rounds == 1:
                return False  # as when the store is unreachable
            return await super().sync()

    keeper = Flaky(parts.index, parts.async_index, parts.bucket, rescan_interval=300)
    await keeper.start()
    try:

        async def listed() -> bool:
            return parts.index.get("late.txt") is not None

        await until(listed)
        assert keeper.rounds == 2
    finally:
        await keeper.stop()
