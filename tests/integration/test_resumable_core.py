"""The resumable-upload core (app/storage/resumable.py) without HTTP: appends in pieces, cut
connections, checksums, a concurrent append, a restart (a new core over the same index), bytes
past the recorded offset after a crash, expiry, and the target appearing only when complete with
the right digest in the index."""

from __future__ import annotations

import asyncio
import hashlib
import os
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from app.storage.async_index import AsyncIndex
from app.storage.errors import InTheWay, NotServable, StorageError
from app.storage.index import Index
from app.storage.paths import TEMP_PREFIX, PathPolicy
from app.storage.resumable import (
    ChecksumMismatch,
    ResumableUploads,
    TooManyUploads,
    expire_uploads,
    owner_of,
)
from app.storage.running_sha256 import RunningSha256
from app.storage.upload_store import Resumable
from app.storage.values import identity
from app.storage.watch import IndexKeeper
from app.transfer.resumable import append_body
from app.transfer.upload import ClientGone

OWNER = owner_of(b"token")
MAX = 1024**3


def _anything(st: os.stat_result | None) -> None:
    return None


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class World:
    """One ROOT and its index; `core()` is a process's core (a new one: a restart)."""

    def __init__(self, base: Path) -> None:
        self.root = base / "root"
        self.root.mkdir()
        self.policy = PathPolicy(root=self.root.resolve(), show_hidden=False, follow_symlinks=False)
        self.index = Index(base / "index.sqlite3", self.policy)
        self.async_index = AsyncIndex(self.index)
        self.clock = Clock()

    def core(self, **kwargs: int) -> ResumableUploads:
        return ResumableUploads(
            self.index, self.async_index, self.policy, fsync=True, expiry=3600, clock=self.clock, **kwargs
        )

    def temps(self) -> list[str]:
        return [n for _, _, names in os.walk(self.root) for n in names if n.startswith(TEMP_PREFIX)]

    def close(self) -> None:
        self.async_index.close()
        self.index.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


async def _chunks(*parts: bytes, cut: bool = False) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    if cut:
        raise ClientGone()


async def _append(
    core: ResumableUploads,
    upload: Resumable,
    *parts: bytes,
    cut: bool = False,
    checksum: tuple[str, bytes] | None = None,
) -> Resumable:
    """One request's append; the upload as recorded after it."""
    append = await core.append(upload)
    try:
        try:
            await append_body(core, append, _chunks(*parts, cut=cut), 64 * 1024, checksum)
        except ClientGone:
            pass
        return append.upload
    finally:
        core.release(append)


async def _finish(core: ResumableUploads, upload: Resumable) -> None:
    append = await core.append(upload)
    try:
        await core.complete(append, _anything)
    finally:
        core.release(append)


def test_appends_in_pieces_publish_once_with_the_digest(world: World) -> None:
    async def run() -> None:
        core = world.core()
        data = os.urandom(300_000)
        upload = await core.create("docs/a.bin", len(data), OWNER, {}, _anything, MAX)
        assert (world.root / "docs").is_dir() and world.temps()
        # Its file outlives this request and process: neither the dead-process sweep nor the
        # sweep of unrecorded files a scan finds takes it.
        world.index.scan(incremental=False)
        assert world.index.orphaned_uploads() == [] and world.index.found_uploads() == []
        upload = await _append(core, upload, data[:1000], data[1000:5000])
        assert upload.offset == 5000 and not (world.root / "docs/a.bin").exists()
        upload = await _append(core, upload, data[5000:])
        assert upload.offset == len(data) and not (world.root / "docs/a.bin").exists()
        await _finish(core, upload)
        target = world.root / "docs/a.bin"
        assert target.read_bytes() == data and world.temps() == []
        digest = world.index.digest(identity(target.stat()))
        assert digest is not None and digest.sha256 == hashlib.sha256(data).digest()
        assert world.index.get("docs/a.bin") is not None
        with pytest.raises(NotServable):
            await core.find(upload.id, OWNER)  # gone once published

    asyncio.run(run())


def test_a_cut_append_keeps_what_arrived_and_a_restart_resumes_it(world: World) -> None:
    async def run() -> None:
        data = os.urandom(9 * 1024**2 + 123)
        first = world.core()
        upload = await first.create("big.bin", len(data), OWNER, {}, _anything, MAX)
        upload = await _append(first, upload, data[:5_000_000], cut=True)
        assert upload.offset == 5_000_000 and upload.crc32 == zlib.crc32(data[:5_000_000])
        assert upload.sha256 is not None
        assert RunningSha256(upload.sha256).digest() == hashlib.sha256(data[:5_000_000]).digest()
        later = world.core()  # another process: it continues from the record alone
        upload = await later.find(upload.id, OWNER)
        temp = world.root / upload.temp
        # What was stored is never read again: bytes changed on disk below the offset do not
        # reach the digest, which is the one of the bytes received.
        with temp.open("r+b") as f:
            f.write(b"\0" * 4096)
        upload = await _append(later, upload, data[5_000_000:])
        await _finish(later, upload)
        target = world.root / "big.bin"
        digest = world.index.digest(identity(target.stat()))
        assert digest is not None and digest.sha256 == hashlib.sha256(data).digest()
        assert digest.crc32 == zlib.crc32(data)

    asyncio.run(run())


def test_resumed_bytes_count_what_another_process_received(world: World) -> None:
    """ferry_resumable_resumed_bytes_total: the bytes an upload had when a process that did not
    receive them continued it; appends that follow in the same process add nothing."""

    def resumed() -> float:
        return REGISTRY.get_sample_value("ferry_resumable_resumed_bytes_total") or 0.0

    async def run() -> None:
        first = world.core()
        upload = await first.create("r.bin", 30, OWNER, {}, _anything, MAX)
        upload = await _append(first, upload, b"0123456789")
        before = resumed()
        upload = await _append(first, upload, b"abcdefghij")  # the same process goes on
        assert resumed() == before
        later = world.core()  # a restart
        upload = await _append(later, await later.find(upload.id, OWNER), b"ABCDEFGHIJ")
        assert resumed() == before + 20
        await _finish(later, upload)
        assert resumed() == before + 20

    asyncio.run(run())


def test_bytes_past_the_recorded_offset_are_cut_off(world: World) -> None:
    """A crash after writing but before recording: the next append starts at the recorded offset."""

    async def run() -> None:
        core = world.core()
        upload = await core.create("c.bin", 20, OWNER, {}, _anything, MAX)
        upload = await _append(core, upload, b"0123456789")
        temp = world.root / upload.temp
        with temp.open("ab") as f:
            f.write(b"unacknowledged")
        append = await world.core().append(upload)
        try:
            assert append.size == 10 and os.fstat(append.fd).st_size == 10
        finally:
            world.core().release(append)

    asyncio.run(run())


def test_a_checksum_mismatch_discards_the_append(world: World) -> None:
    async def run() -> None:
        core = world.core()
        upload = await core.create("d.bin", 8, OWNER, {}, _anything, MAX)
        upload = await _append(core, upload, b"abcd")
        wrong = ("sha256", hashlib.sha256(b"nope").digest())
        with pytest.raises(ChecksumMismatch):
            await _append(core, upload, b"efgh", checksum=wrong)
        assert (world.root / upload.temp).stat().st_size == 4
        assert (await core.find(upload.id, OWNER)).offset == 4
        right = ("sha1", hashlib.sha1(b"efgh").digest())
        upload = await _append(core, upload, b"efgh", checksum=right)
        await _finish(core, upload)
        assert (world.root / "d.bin").read_bytes() == b"abcdefgh"
        digest = world.index.digest(identity((world.root / "d.bin").stat()))
        assert digest is not None and digest.sha256 == hashlib.sha256(b"abcdefgh").digest()

    asyncio.run(run())


def test_one_append_at_a_time(world: World) -> None:
    async def run() -> None:
        core = world.core()
        upload = await core.create("e.bin", 8, OWNER, {}, _anything, MAX)
        held = await core.append(upload)
        try:
            with pytest.raises(InTheWay):
                await world.core().append(upload)  # another worker
            with pytest.raises(InTheWay):
                await core.append(upload)  # this one
        finally:
            core.release(held)
        core.release(await core.append(upload))  # free again

    asyncio.run(run())


def test_uploads_of_others_expired_and_terminated_are_not_found(world: World) -> None:
    async def run() -> None:
        core = world.core(max_per_owner=2)
        upload = await core.create("f.bin", 8, OWNER, {}, _anything, MAX)
        with pytest.raises(NotServable):
            await core.find(upload.id, owner_of(b"another"))
        other = await core.create("g.bin", 8, OWNER, {}, _anything, MAX)
        with pytest.raises(TooManyUploads):
            await core.create("h.bin", 8, OWNER, {}, _anything, MAX)
        await core.terminate(other)
        assert len(world.temps()) == 1
        world.clock.now += 3601
        with pytest.raises(NotServable):
            await core.find(upload.id, OWNER)
        assert await asyncio.to_thread(expire_uploads, world.index, world.clock.now) == 1
        assert world.temps() == [] and world.index.resumable(upload.id) is None

    asyncio.run(run())


def test_preconditions_and_targets_refused_at_creation(world: World) -> None:
    async def run() -> None:
        core = world.core()
        (world.root / "dir").mkdir()

        def refuse(st: os.stat_result | None) -> None:
            raise StorageError("refused")

        with pytest.raises(StorageError):
            await core.create("dir", 8, OWNER, {}, _anything, MAX)
        with pytest.raises(StorageError):
            await core.create("new.bin", 8, OWNER, {}, refuse, MAX)
        with pytest.raises(StorageError):
            await core.create("../out.bin", 8, OWNER, {}, _anything, MAX)
        with pytest.raises(StorageError):
            await core.create("huge.bin", 2**62, OWNER, {}, _anything, 2**63)  # 507: no such disk
        assert world.temps() == []

    asyncio.run(run())


def test_the_keepers_sweep_removes_expired_uploads(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    core = world.core()
    upload = asyncio.run(core.create("swept.bin", 8, OWNER, {}, _anything, MAX))
    keeper = IndexKeeper(world.index, watch=False, rescan_interval=0)
    monkeypatch.setattr("app.storage.watch.time.time", lambda: world.clock.now + 3599)
    keeper._sweep_uploads()  # not expired yet: kept
    assert world.temps() and world.index.resumable(upload.id) is not None
    monkeypatch.setattr("app.storage.watch.time.time", lambda: world.clock.now + 3601)
    keeper._sweep_uploads()
    assert world.temps() == [] and world.index.resumable(upload.id) is None


@settings(deadline=None, max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(min_size=0, max_size=40_000),
    cuts=st.lists(st.integers(min_value=0, max_value=40_000), max_size=6),
    restarts=st.lists(st.booleans(), min_size=7, max_size=7),
)
def test_any_chunking_and_interruptions_end_in_the_same_digest(
    world: World, data: bytes, cuts: list[int], restarts: list[bool]
) -> None:
    async def run() -> None:
        core = world.core()
        path = f"h/{os.urandom(6).hex()}.bin"  # one world for every example: a new target each
        upload = await core.create(path, len(data), OWNER, {}, _anything, MAX)
        points = sorted({c for c in cuts if c < len(data)} | {len(data)})
        for point, restart in zip(points, restarts, strict=False):
            if restart:
                core = world.core()
            offset = upload.offset
            upload = await _append(core, upload, data[offset:point], cut=point < len(data))
            assert upload.offset == point
            assert not (world.root / path).exists()
        if upload.offset < len(data):  # more cuts than restart flags
            upload = await _append(core, upload, data[upload.offset :])
        await _finish(core, upload)
        target = world.root / path
        assert target.read_bytes() == data
        digest = world.index.digest(identity(target.stat()))
        if data:
            assert digest is not None and digest.sha256 == hashlib.sha256(data).digest()

    asyncio.run(run())
