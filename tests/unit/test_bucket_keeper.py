"""The bucket keeper's listing rounds (app/storage/bucket_index.py) beside Ferry's own writes: a
file uploaded while a round lists the bucket stays in the index (the round's listing may have
passed its name already), and what the round did not see and nobody added since is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.storage.async_index import AsyncIndex
from app.storage.backend import Stat
from app.storage.bucket_index import BucketKeeper, entry_of
from app.storage.index import Index
from app.storage.locations import S3Location
from app.storage.paths import PathPolicy

pytestmark = pytest.mark.anyio


def _file(path: str) -> Stat:
    return Stat(path, False, 3, 1_000_000_000, '"e"', '"e":')


@dataclass
class PausingBucket:
    """A bucket whose listing stops half way until `resume` is set."""

    stats: list[Stat]
    listed: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)

    @dataclass
    class _Config:
        location: S3Location = S3Location("b", "")

    config: _Config = field(default_factory=_Config)

    async def walk(self, top: str = "") -> AsyncIterator[Stat]:
        for stat in self.stats:
            yield stat
        self.listed.set()
        await self.resume.wait()


async def test_an_upload_during_a_listing_round_stays_in_the_index(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    index = Index(tmp_path / "index.sqlite3", PathPolicy(root=root))
    facade = AsyncIndex(index)
    try:
        index.put(entry_of(_file("gone.txt")))  # deleted from the bucket by someone else
        bucket = PausingBucket([_file("kept.txt")])
        keeper = BucketKeeper(index, facade, bucket, rescan_interval=0)  # type: ignore[arg-type]
        round_ = asyncio.ensure_future(keeper.sync())
        await asyncio.wait_for(bucket.listed.wait(), timeout=30)
        # Ferry's own upload, indexed at once, after the listing passed where it sorts.
        await facade.write(index.put, entry_of(_file("added.txt")))
        bucket.resume.set()
        assert await asyncio.wait_for(round_, timeout=30)
        assert index.get("kept.txt") is not None
        assert index.get("added.txt") is not None
        assert index.get("gone.txt") is None
    finally:
        await asyncio.to_thread(facade.close)
        index.close()
