"""The bucket's hasher (app/storage/bucket_index.py `BucketHasher`) against fakes of the index and
the store: a stored SHA-256 and CRC-32 are taken without reading the object, any other object
(a SHA-256 stored without its CRC-32 included) is read once,
a replaced or vanished object leaves the queue, and a store that stops answering pauses hashing
with one line, not one per object. The real engine: tests/clients/test_bucket_downloads.py."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from app.storage.backend import Stat
from app.storage.bucket_index import BucketHasher, entry_of
from app.storage.errors import NotServable, Unreachable
from app.storage.values import Entry, FileDigest, Identity


class FakeIndex:
    def __init__(self, entries: list[Entry]) -> None:
        self.pending = dict(enumerate(entries, start=1))
        self.digests: dict[Identity, FileDigest] = {}

    def pending_digests(self, limit: int, after: int = 0) -> list[tuple[int, Entry]]:
        return [(i, e) for i, e in sorted(self.pending.items()) if i > after][:limit]

    def digest(self, ident: Identity) -> FileDigest | None:
        return self.digests.get(ident)

    def put_digest(self, ident: Identity, digest: FileDigest, *, done: int | None = None) -> None:
        self.digests[ident] = digest
        if done is not None:
            self.pending.pop(done, None)

    def done_digest(self, entry_id: int) -> None:
        self.pending.pop(entry_id, None)


class Direct:
    """AsyncIndex's read/write, run at once."""

    async def read(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    write = read


class Chunks:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 1000):
            yield self.data[start : start + 1000]

    async def aclose(self) -> None:
        pass


class FakeBucket:
    def __init__(self, objects: dict[str, tuple[Stat, bytes]]) -> None:
        self.objects = objects
        self.stats = 0
        self.reads: list[str] = []
        self.down = False

    async def stat(self, path: str) -> Stat:
        self.stats += 1
        if self.down:
            raise Unreachable("the storage did not answer: test")
        if path not in self.objects:
            raise NotServable()
        return self.objects[path][0]

    async def open_range(self, path: str, start: int, end: int, *, if_match: str | None = None) -> Chunks:
        assert if_match == self.objects[path][0].etag  # pinned to the version it was asked about
        self.reads.append(path)
        return Chunks(self.objects[path][1][start:end])


class Idle:
    def busy(self) -> bool:
        return False


def stat(path: str, data: bytes, etag: str, sha256: bytes | None = None, crc32: int | None = None) -> Stat:
    return Stat(path, False, len(data), 1_700_000_000_000_000_000, etag, f"{etag}:", sha256, crc32)


def hasher(index: FakeIndex, bucket: FakeBucket) -> BucketHasher:
    return BucketHasher(cast(Any, index), cast(Any, Direct()), cast(Any, bucket), Idle(), rate=0)


def ident(entry: Entry) -> Identity:
    return (entry.dev, entry.ino, entry.size, entry.mtime_ns)


def test_stored_digests_are_taken_and_other_objects_read_once() -> None:
    stored, bare, gone = b"stored bytes", b"bare bytes" * 500, b"gone"
    replaced_before, replaced_now = stat("replaced.bin", b"v1", '"v1"'), stat("replaced.bin", b"v2", '"v2"')
    objects = {
        "stored.bin": (
            stat("stored.bin", stored, '"s"', hashlib.sha256(stored).digest(), zlib.crc32(stored)),
            stored,
        ),
        "bare.bin": (stat("bare.bin", bare, '"b"'), bare),
        "replaced.bin": (replaced_now, b"v2"),
    }
    entries = [entry_of(objects["stored.bin"][0]), entry_of(objects["bare.bin"][0])]
    entries += [entry_of(replaced_before), entry_of(stat("gone.bin", gone, '"g"'))]
    index, bucket = FakeIndex(entries), FakeBucket(objects)
    stop = asyncio.Event()

    async def main() -> bool:
        return await hasher(index, bucket)._pass(stop)

    assert asyncio.run(main()) is True
    assert index.pending == {}  # every entry settled or dropped
    assert bucket.reads == ["bare.bin"]  # the stored digest cost no read
    assert index.digests[ident(entries[0])] == FileDigest(
        hashlib.sha256(stored).digest(), crc32=zlib.crc32(stored)
    )
    assert index.digests[ident(entries[1])].sha256 == hashlib.sha256(bare).digest()
    assert index.digests[ident(entries[1])].crc32 == zlib.crc32(bare)
    assert set(index.digests) == {ident(entries[0]), ident(entries[1])}  # none for another version


def test_a_sha256_stored_without_its_crc32_is_read_for_it() -> None:
    """An object an older Ferry uploaded (its `sha256` attribute only), or one whose digest the
    index knows without a CRC-32: read once, so a ZIP entry can have its CRC-32."""
    old, known = b"uploaded before CRC-32s", b"known without a CRC-32"
    objects = {
        "old.bin": (stat("old.bin", old, '"o"', hashlib.sha256(old).digest()), old),
        "known.bin": (stat("known.bin", known, '"k"'), known),
    }
    entries = [entry_of(objects["old.bin"][0]), entry_of(objects["known.bin"][0])]
    index, bucket = FakeIndex(entries), FakeBucket(objects)
    index.digests[ident(entries[1])] = FileDigest(hashlib.sha256(known).digest())
    assert asyncio.run(hasher(index, bucket)._pass(asyncio.Event())) is True
    assert bucket.reads == ["old.bin", "known.bin"] and index.pending == {}
    assert index.digests[ident(entries[0])] == FileDigest(hashlib.sha256(old).digest(), crc32=zlib.crc32(old))
    assert index.digests[ident(entries[1])].crc32 == zlib.crc32(known)


def test_a_store_that_stops_answering_pauses_hashing_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    entries = [entry_of(stat(f"f{i}.bin", b"x", f'"{i}"')) for i in range(50)]
    index, bucket = FakeIndex(entries), FakeBucket({})
    bucket.down = True
    worker = hasher(index, bucket)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))

        async def paused() -> None:
            while not any("hashing paused" in r.message for r in caplog.records):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(paused(), timeout=10)
        await asyncio.sleep(0.2)  # a worker retrying per object would ask again meanwhile
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    with caplog.at_level(logging.WARNING, logger="ferry.index"):
        asyncio.run(main())
    assert bucket.stats == 1
    assert [r.message for r in caplog.records if "hashing" in r.message] == [
        "hashing paused: the storage did not answer (the storage did not answer: test)"
    ]
    assert len(index.pending) == 50  # kept for when the store answers again


def test_reads_keep_to_the_hash_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """FERRY_HASH_RATE: the waits the hasher asks for add up to the bytes read over the rate (the
    clock is the test's, so a loaded machine cannot make it pass or fail)."""
    data = b"r" * 50_000
    objects = {"paced.bin": (stat("paced.bin", data, '"p"'), data)}
    index, bucket = FakeIndex([entry_of(objects["paced.bin"][0])]), FakeBucket(objects)
    now = [1000.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    monkeypatch.setattr("app.storage.bucket_index.time.monotonic", lambda: now[0])
    monkeypatch.setattr("app.storage.bucket_index.asyncio.sleep", sleep)
    worker = BucketHasher(cast(Any, index), cast(Any, Direct()), cast(Any, bucket), Idle(), rate=10_000)

    assert asyncio.run(worker._pass(asyncio.Event())) is True
    assert bucket.reads == ["paced.bin"]
    assert sum(waits) == pytest.approx(len(data) / 10_000, rel=0.05)  # 5 s for 50 kB at 10 kB/s
