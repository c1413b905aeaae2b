"""AsyncIndex (index calls off the event loop) and DigestCache (digest lookups a download never
waits long for)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from app.storage.async_index import AsyncIndex
from app.storage.index import Index
from app.storage.on_demand import DigestCache
from app.storage.paths import PathPolicy
from app.storage.values import FileDigest, Identity

PATIENCE = 30.0


@pytest.fixture
def index(tmp_path: Path) -> Index:
    root = tmp_path / "root"
    root.mkdir()
    return Index(tmp_path / "index.sqlite3", PathPolicy(root=root))


def test_writes_run_one_at_a_time_in_order_on_one_thread(index: Index) -> None:
    facade = AsyncIndex(index)
    seen: list[tuple[int, str]] = []
    running = threading.Semaphore(1)

    def record(n: int) -> int:
        assert running.acquire(blocking=False), "two writes at once"
        seen.append((n, threading.current_thread().name))
        time.sleep(0.001)
        running.release()
        return n * 2

    async def main() -> list[int]:
        return await asyncio.gather(*(facade.write(record, n) for n in range(20)))

    assert asyncio.run(main()) == [n * 2 for n in range(20)]
    assert [n for n, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"ferry-index-writer"}
    facade.close()


def test_a_write_whose_awaiting_task_is_cancelled_still_runs(index: Index) -> None:
    facade = AsyncIndex(index)
    gate, ran = threading.Event(), threading.Event()

    async def main() -> None:
        facade.enqueue(gate.wait, PATIENCE)  # the writer is busy: the next write waits its turn
        task = asyncio.ensure_future(facade.write(ran.set))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()

    asyncio.run(main())
    assert ran.wait(PATIENCE)
    facade.close()


def test_a_failed_queued_write_is_logged_and_the_next_runs(
    index: Index, caplog: pytest.LogCaptureFixture
) -> None:
    facade = AsyncIndex(index)

    def fail() -> None:
        raise RuntimeError("boom")

    async def main() -> str:
        facade.enqueue(fail)
        with pytest.raises(RuntimeError, match="boom"):
            await facade.write(fail)
        return await facade.write(lambda: "after")

    assert asyncio.run(main()) == "after"
    assert "an index write failed" in caplog.text
    facade.close()


def test_call_refuses_to_block_the_event_loop(index: Index) -> None:
    facade = AsyncIndex(index)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="blocks"):
            facade.call(lambda: None)
        assert await asyncio.to_thread(facade.call, lambda: 7) == 7

    asyncio.run(main())
    facade.close()


def test_close_runs_what_is_queued(index: Index) -> None:
    facade = AsyncIndex(index)
    done: list[int] = []
    for n in range(5):
        facade.enqueue(done.append, n)
    facade.close()
    assert done == list(range(5))


def test_a_write_locked_index_stalls_the_writer_not_the_loop(index: Index) -> None:
    """`end_upload` waits for the lock on the writer thread; the loop keeps running meanwhile."""
    facade = AsyncIndex(index)
    index.begin_upload("a/.ferry-upload-0123456789abcdef.part")
    lock = sqlite3.connect(index.db_path, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN IMMEDIATE")

    async def main() -> int:
        facade.enqueue(index.end_upload, "a/.ferry-upload-0123456789abcdef.part")
        write = asyncio.ensure_future(facade.write(index.count))
        ticks = 0
        while ticks < 20:  # the loop turns while the write waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done()
        await asyncio.to_thread(lock.execute, "COMMIT")
        return await asyncio.wait_for(write, PATIENCE)

    try:
        assert asyncio.run(main()) == 0
    finally:
        lock.close()
    with sqlite3.connect(index.db_path) as conn:
        assert conn.execute("SELECT count(*) FROM uploads").fetchone() == (0,)  # the cleanup ran
    facade.close()


IDENT: Identity = (1, 2, 3, 4)
DIGEST = FileDigest(b"\x01" * 32)


def test_a_digest_lookup_that_does_not_answer_in_time_is_not_waited_for() -> None:
    answer = threading.Event()
    reads: list[Identity] = []

    async def slow_read(ident: Identity) -> FileDigest | None:
        reads.append(ident)
        await asyncio.to_thread(answer.wait, PATIENCE)
        return DIGEST

    cache = DigestCache(slow_read, patience=0.05)

    async def main() -> None:
        assert await cache.get(IDENT) is None  # no answer within patience: go on without it
        assert await cache.get(IDENT) is None  # the same lookup, not a second one
        answer.set()
        assert await cache.get(IDENT, wait=True) == DIGEST
        assert await cache.get(IDENT) == DIGEST  # from memory now

    asyncio.run(main())
    assert reads == [IDENT]


def test_a_digest_miss_is_remembered_for_a_while() -> None:
    reads: list[Identity] = []

    async def read(ident: Identity) -> FileDigest | None:
        reads.append(ident)
        return None

    cache = DigestCache(read, miss_ttl=PATIENCE)

    async def main() -> None:
        assert await cache.get(IDENT) is None
        assert await cache.get(IDENT) is None
        cache.remember(IDENT, DIGEST)
        assert await cache.get(IDENT) == DIGEST

    asyncio.run(main())
    assert reads == [IDENT]


def test_reads_run_off_the_event_loop(index: Index) -> None:
    facade = AsyncIndex(index)

    async def main() -> tuple[int, str]:
        return await facade.read(lambda: (index.count(), threading.current_thread().name))

    count, thread = asyncio.run(main())
    assert count == 0 and thread.startswith("ferry-index-read")
