"""Hashing a request waits for (no server): concurrent requests for one file version share one
read of it, a settled result is remembered, and new work past the backlog bound is refused."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import zlib
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from app.storage.index import Index
from app.storage.on_demand import HashBusy, Hashed, OnDemandHasher
from app.storage.paths import PathPolicy
from app.storage.values import identity

PAST = time.time() - 3600
MiB = 1024**2


def hashed_bytes() -> float:
    return REGISTRY.get_sample_value("ferry_on_demand_hash_bytes_total") or 0.0


@pytest.fixture
def root_and_index(tmp_path: Path) -> tuple[Path, Index]:
    root = tmp_path / "root"
    root.mkdir()
    return root, Index(tmp_path / "index.sqlite3", PathPolicy(root=root.resolve()))


def _old_file(path: Path, data: bytes) -> os.stat_result:
    path.write_bytes(data)
    os.utime(path, (PAST, PAST))
    return os.stat(path)


async def _many(hasher: OnDemandHasher, path: Path, name: str, count: int) -> list[Hashed | None]:
    fds = [os.open(path, os.O_RDONLY) for _ in range(count)]
    try:
        return await asyncio.gather(*(hasher.hash(fd, os.fstat(fd), name) for fd in fds))
    finally:
        for fd in fds:
            os.close(fd)


def test_concurrent_requests_share_one_read(root_and_index: tuple[Path, Index]) -> None:
    root, index = root_and_index
    data = os.urandom(3 * MiB)
    st = _old_file(root / "f.bin", data)
    hasher = OnDemandHasher(index, max_backlog=8 * MiB)
    try:
        before = hashed_bytes()
        results = asyncio.run(_many(hasher, root / "f.bin", "sha512", 12))
        assert hashed_bytes() - before == len(data)  # one read for twelve requests
        expected = hashlib.sha512(data).digest()
        assert all(r is not None and r.extra == {"sha512": expected} and r.settled for r in results)
        # Remembered: SHA-512 by the hasher, SHA-256 and CRC-32 in the index.
        assert hasher.known(identity(st), "sha512") == expected
        stored = index.digest(identity(st))
        assert stored is not None and stored.sha256 == hashlib.sha256(data).digest()
        assert stored.crc32 == zlib.crc32(data)
    finally:
        hasher.close()


def test_a_file_too_fresh_is_used_but_not_remembered(root_and_index: tuple[Path, Index]) -> None:
    root, index = root_and_index
    (root / "new.bin").write_bytes(b"new")
    st = os.stat(root / "new.bin")
    hasher = OnDemandHasher(index, max_backlog=MiB)
    try:
        (result,) = asyncio.run(_many(hasher, root / "new.bin", "sha512", 1))
        assert result is not None and not result.settled
        assert result.extra["sha512"] == hashlib.sha512(b"new").digest()
        assert hasher.known(identity(st), "sha512") is None and index.digest(identity(st)) is None
    finally:
        hasher.close()


def test_work_past_the_backlog_bound_is_refused(root_and_index: tuple[Path, Index]) -> None:
    root, index = root_and_index
    _old_file(root / "a.bin", os.urandom(2 * MiB))
    _old_file(root / "b.bin", os.urandom(2 * MiB))
    hasher = OnDemandHasher(index, max_backlog=3 * MiB)

    async def both() -> tuple[Hashed | None, BaseException | None]:
        a = os.open(root / "a.bin", os.O_RDONLY)
        b = os.open(root / "b.bin", os.O_RDONLY)
        try:
            first = asyncio.ensure_future(hasher.hash(a, os.fstat(a)))
            await asyncio.sleep(0)  # a's job is admitted: 2 MiB of the 3 MiB backlog
            try:
                await hasher.hash(b, os.fstat(b))
                refused = None
            except HashBusy as exc:
                refused = exc
            return await first, refused
        finally:
            os.close(a)
            os.close(b)

    try:
        before = hashed_bytes()
        first, refused = asyncio.run(both())
        assert first is not None and isinstance(refused, HashBusy)
        assert hashed_bytes() - before == 2 * MiB  # b was never read
        # The backlog drains: b is admitted now.
        (later,) = asyncio.run(_many(hasher, root / "b.bin", "sha256", 1))
        assert later is not None
    finally:
        hasher.close()
