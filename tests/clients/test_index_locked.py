"""A write-locked index stalls no request but the writes that need it, against a real `ferry serve`.

Another program (a backup, `sqlite3` in a shell) holds the index database write-locked for a few
seconds: downloads and listings of other files are answered as usual meanwhile, and uploads, one
finishing its body and one begun while the lock is held, complete once it is released.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import PATIENCE, ServerFactory, wait_for

pytestmark = pytest.mark.clients

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOLD = 8.0  # seconds the index stays write-locked; every probe must be answered well within it
PROMPT = HOLD / 3
BODY = b"x" * (64 * 1024)


def _timed(call: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    began = time.monotonic()
    response = call()
    return time.monotonic() - began, response


def _uploads_begun(index: Path) -> int:
    """Uploads the server has recorded as in progress (its own, not ones a scan found)."""
    with sqlite3.connect(index, timeout=PATIENCE) as conn:
        row = conn.execute("SELECT count(*) FROM uploads WHERE owner != ''").fetchone()
    return int(row[0])


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def test_a_write_locked_index_stalls_no_download_or_listing(
    ferry: ServerFactory, tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    root = tmp_path / "root"
    (root / "other").mkdir(parents=True)
    (root / "uploads").mkdir()
    payload = bytes(range(256)) * 1024
    (root / "other" / "a.bin").write_bytes(payload)
    index = tmp_path / "index.sqlite3"
    server = ferry(root, "--write-token", TOKEN, "--index-path", str(index))
    client = httpx.Client(base_url=server.url, timeout=PATIENCE)

    def listing() -> httpx.Response:
        return client.get("/files/other/", params={"format": "json"})

    def listed(directory: str) -> set[str]:
        response = client.get(f"/files/{directory}/", params={"format": "json"})
        return {e["name"] for e in response.json()["entries"]} if response.status_code == 200 else set()

    assert wait_for(lambda: "a.bin" in listed("other"))

    # Upload A is under way (recorded in the index) when the lock is taken; its body ends meanwhile.
    release_body = threading.Event()

    def body() -> Iterator[bytes]:
        yield BODY
        release_body.wait(PATIENCE)
        yield BODY

    def put(name: str, content: Iterator[bytes] | bytes) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=HOLD + 2 * PATIENCE) as own:
            return own.put(f"/files/uploads/{name}", content=content, headers=AUTH)

    first: Future[httpx.Response] = executor.submit(put, "first.bin", body())
    assert wait_for(lambda: _uploads_begun(index) == 1)

    lock = sqlite3.connect(index, timeout=PATIENCE, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN IMMEDIATE")  # no other connection can write until the COMMIT
    locked_at = time.monotonic()

    def release() -> None:
        lock.execute("COMMIT")
        lock.close()

    # Released on time by a thread of its own, even if a probe is still waiting.
    unlock = threading.Timer(HOLD, release)
    unlock.start()
    try:
        release_body.set()
        second: Future[httpx.Response] = executor.submit(put, "second.bin", BODY)
        probes: list[tuple[str, float]] = []
        while time.monotonic() - locked_at < HOLD * 0.6:
            took, response = _timed(lambda: client.get("/files/other/a.bin"))
            assert response.status_code == 200
            assert response.content == payload
            probes.append(("download", took))
            took, response = _timed(listing)
            assert response.status_code == 200
            assert [e["name"] for e in response.json()["entries"]] == ["a.bin"]
            probes.append(("listing", took))
        slow = [(what, round(took, 2)) for what, took in probes if took >= PROMPT]
        assert not slow, f"answered late while the index was write-locked: {slow}"
        assert time.monotonic() - locked_at < HOLD, "the probes outlasted the lock"
        # The uploads cannot finish without the index: the lock really was held all along.
        assert not first.done() and not second.done()
    finally:
        unlock.join()

    assert first.result(timeout=2 * PATIENCE).status_code == 201
    assert second.result(timeout=2 * PATIENCE).status_code == 201
    assert listed("uploads") == {"first.bin", "second.bin"}
    found = client.get("/api/search", params={"q": "second.b"}).json()
    assert [e["path"] for e in found["entries"]] == ["uploads/second.bin"]
    assert client.get("/files/uploads/first.bin").content == BODY * 2
    assert wait_for(lambda: _uploads_begun(index) == 0)
    client.close()
