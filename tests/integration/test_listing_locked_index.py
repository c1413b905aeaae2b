"""A listing of a directory that changed on disk while another program holds the index database
write-locked: answered promptly from what the index knows (the rescan of the directory waits for
the lock on the index's one writer thread, not in the request), and the rescan lands once the lock
is released."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.storage.async_index import REFRESH_PATIENCE
from tests.conftest import make_settings
from tests.support.inprocess import in_process

# A listing waits at most REFRESH_PATIENCE for its directory's rescan; the database's busy timeout
# (what a listing waited for before) is 30 s. The margin is for a loaded machine.
PROMPT = REFRESH_PATIENCE + 8.0
PATIENCE = 30.0


@dataclass
class Tree:
    root: Path
    index: Path
    client: httpx.AsyncClient


@pytest.fixture
async def tree(tmp_path: Path) -> AsyncIterator[Tree]:
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_bytes(b"a")
    index = tmp_path / "index.sqlite3"
    app = create_app(make_settings(root, index_path=index, watch=False))
    app.services.index.scan()
    async with in_process(app, lifespan=False, timeout=60) as client:
        yield Tree(root, index, client)


@pytest.fixture
def changed(tree: Tree) -> Path:
    """docs/ gains b.txt behind the index's back (no watcher), with an mtime surely new."""
    docs = tree.root / "docs"
    (docs / "b.txt").write_bytes(b"b")
    st = docs.stat()
    os.utime(docs, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    return docs


@pytest.fixture
def write_locked(tree: Tree) -> Iterator[sqlite3.Connection]:
    lock = sqlite3.connect(tree.index, timeout=PATIENCE, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN IMMEDIATE")  # no other connection can write until the COMMIT
    try:
        yield lock
    finally:
        if lock.in_transaction:
            lock.execute("COMMIT")
        lock.close()


async def _names(client: httpx.AsyncClient, url: str) -> tuple[float, int, list[str]]:
    began = time.monotonic()
    response = await client.get(url)
    took = time.monotonic() - began
    entries = response.json().get("entries", []) if response.status_code == 200 else []
    return took, response.status_code, [e["name"] for e in entries]


LISTINGS = [
    pytest.param("/files/docs/?format=json", id="listing"),
    pytest.param("/api/files/docs", id="api"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("url", LISTINGS)
async def test_a_changed_directory_is_listed_promptly_while_the_index_is_write_locked(
    tree: Tree, changed: Path, write_locked: sqlite3.Connection, url: str
) -> None:
    took, status, names = await _names(tree.client, url)
    assert status == 200
    assert names == ["a.txt"], "answered from what the index knew"
    assert took < PROMPT, f"a listing waited {took:.1f} s for the write-locked index"
    # The loop stayed free meanwhile, and still is: another listing is answered as promptly.
    took, status, names = await _names(tree.client, url)
    assert (status, names) == (200, ["a.txt"]) and took < PROMPT

    write_locked.execute("COMMIT")
    deadline = time.monotonic() + PATIENCE
    while (found := await _names(tree.client, url))[2] != ["a.txt", "b.txt"]:
        assert time.monotonic() < deadline, f"the rescan never landed: {found}"
        await asyncio.sleep(0.05)
