"""AsyncIndex.refresh: a directory that changed on disk is rescanned on the index's writer thread,
once for all the listings that want it meanwhile, and a listing waits for that rescan only so long."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.storage.async_index import AsyncIndex
from app.storage.index import Index
from app.storage.paths import PathPolicy

PATIENCE = 30.0
SHORT = 0.2  # how long a listing waits for its rescan here


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a").write_bytes(b"a")
    index = Index(tmp_path / "index.sqlite3", PathPolicy(root=root.resolve()))
    index.scan()
    yield index
    index.close()


def _change(index: Index) -> None:
    d = index.policy.root / "d"
    (d / "b").write_bytes(b"b")
    st = d.stat()
    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _names(index: Index) -> list[str]:
    return [e.name for e in index.list_dir("d", limit=10).entries]


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_an_unchanged_directory_queues_no_write(index: Index) -> None:
    facade = AsyncIndex(index)
    facade.refresh("d")
    asyncio.run(facade.refreshed("d"))
    assert facade._writer is None  # no write was ever queued
    facade.close()


def test_a_changed_directory_is_rescanned_through_the_writer(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    facade = AsyncIndex(index)
    threads: list[str] = []
    rescan = index.refresh_if_changed

    def recorded(directory: str) -> None:
        threads.append(threading.current_thread().name)
        rescan(directory)

    monkeypatch.setattr(index, "refresh_if_changed", recorded)
    _change(index)
    facade.refresh("d")
    assert _names(index) == ["a", "b"]
    assert threads == ["ferry-index-writer"]
    facade.close()


def test_listings_of_a_write_locked_index_share_one_rescan_and_wait_only_so_long(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    facade = AsyncIndex(index)
    rescans = 0
    rescan = index.refresh_if_changed

    def counted(directory: str) -> None:
        nonlocal rescans
        rescans += 1
        rescan(directory)

    monkeypatch.setattr(index, "refresh_if_changed", counted)
    _change(index)
    lock = sqlite3.connect(index.db_path, timeout=PATIENCE, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN IMMEDIATE")
    try:
        began = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda _: facade.refresh("d", SHORT), range(3)))
        asyncio.run(facade.refreshed("d", SHORT))
        assert time.monotonic() - began < PATIENCE / 2, "a listing waited for the lock"
        assert _names(index) == ["a"]  # what the index knew
    finally:
        lock.execute("COMMIT")
        lock.close()
    _until(lambda: _names(index) == ["a", "b"], "the rescan never landed")
    assert rescans == 1
    facade.close()
