"""app/storage/inotify.py: what the index keeper hears of changes below ROOT, and what it no
longer hears of (a file opened and read, by Ferry or anyone: no event, no wake-up)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from app.storage import inotify

pytestmark = pytest.mark.skipif(not inotify.available(), reason="inotify is Linux's")

PATIENCE = 10.0  # seconds for an expected batch; a busy machine delays it, never loses it
QUIET = 0.6  # seconds in which no batch must come (two debounce periods)


class Batches:
    """The batches a running `inotify.changes` hands on, gathered by a task of their own (a
    timed-out wait never cancels the generator itself)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[set[str]] = asyncio.Queue()

    async def next(self, timeout: float = PATIENCE) -> set[str] | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def until(self, wanted: set[str]) -> set[str]:
        """Batches gathered until every path in `wanted` has been reported."""
        seen: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PATIENCE
        while not wanted <= seen and loop.time() < deadline:
            seen |= await self.next(max(0.1, deadline - loop.time())) or set()
        return seen


def _watching(root: Path, body: Callable[[Batches], Awaitable[None]]) -> None:
    async def run() -> None:
        stop = asyncio.Event()
        changes = inotify.changes(str(root), stop, debounce=0.1, step=0.02)
        batches = Batches()
        first = asyncio.ensure_future(anext(changes))  # as the keeper starts it: watches set up now
        await asyncio.sleep(0)

        async def pump() -> None:
            batches.queue.put_nowait(await first)
            async for batch in changes:
                batches.queue.put_nowait(batch)

        pumping = asyncio.ensure_future(pump())
        try:
            await body(batches)
        finally:
            stop.set()
            await asyncio.wait_for(pumping, PATIENCE)

    asyncio.run(run())


def test_made_written_renamed_and_removed_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "old.txt").write_bytes(b"old")

    async def body(changes: Batches) -> None:
        (tmp_path / "docs" / "new.txt").write_bytes(b"new")
        (tmp_path / "old.txt").rename(tmp_path / "docs" / "moved.txt")
        (tmp_path / "docs" / "gone.txt").write_bytes(b"x")
        (tmp_path / "docs" / "gone.txt").unlink()
        os.utime(tmp_path / "docs" / "new.txt", (1, 1))
        wanted = {f"{tmp_path}/docs/new.txt", f"{tmp_path}/old.txt", f"{tmp_path}/docs/moved.txt",
                  f"{tmp_path}/docs/gone.txt"}  # fmt: skip
        assert wanted <= await changes.until(wanted)

    _watching(tmp_path, body)


def test_opening_and_reading_a_file_is_not_an_event(tmp_path: Path) -> None:
    """What watchfiles' watches reported (IN_OPEN): each download's open woke the watcher."""
    (tmp_path / "served.bin").write_bytes(os.urandom(4096))

    async def body(changes: Batches) -> None:
        for _ in range(50):
            (tmp_path / "served.bin").read_bytes()
        assert await changes.next(QUIET) is None
        (tmp_path / "served.bin").write_bytes(b"rewritten")  # a write still is one
        assert await changes.until({f"{tmp_path}/served.bin"})

    _watching(tmp_path, body)


def test_a_folder_made_or_moved_in_is_watched_from_then_on(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (outside / "tree" / "deep").mkdir(parents=True)
    (outside / "tree" / "deep" / "a.txt").write_bytes(b"a")

    async def body(changes: Batches) -> None:
        (tmp_path / "made" / "deep").mkdir(parents=True)
        assert f"{tmp_path}/made" in await changes.until({f"{tmp_path}/made"})
        shutil.move(str(outside / "tree"), str(tmp_path / "tree"))
        assert f"{tmp_path}/tree" in await changes.until({f"{tmp_path}/tree"})
        # Both are watched, their subfolders too: changes deep inside are reported.
        (tmp_path / "made" / "deep" / "later.txt").write_bytes(b"later")
        (tmp_path / "tree" / "deep" / "a.txt").write_bytes(b"changed")
        wanted = {f"{tmp_path}/made/deep/later.txt", f"{tmp_path}/tree/deep/a.txt"}
        assert wanted <= await changes.until(wanted)

    _watching(tmp_path, body)


def test_a_folder_moved_away_is_no_longer_watched_under_its_old_name(tmp_path: Path) -> None:
    (tmp_path / "here" / "sub").mkdir(parents=True)

    async def body(changes: Batches) -> None:
        (tmp_path / "here").rename(tmp_path / "there")
        # Moved within ROOT: reported under both names (the keeper rescans each).
        wanted = {f"{tmp_path}/here", f"{tmp_path}/there"}
        assert wanted <= await changes.until(wanted)
        (tmp_path / "there" / "sub" / "x.txt").write_bytes(b"x")
        seen = await changes.until({f"{tmp_path}/there/sub/x.txt"})
        assert f"{tmp_path}/there/sub/x.txt" in seen
        assert not any(path.startswith(f"{tmp_path}/here/") for path in seen)

    _watching(tmp_path, body)


def test_a_full_event_queue_ends_the_watch(tmp_path: Path) -> None:
    """The keeper restarts a failed watcher after a rescan (watch.py): an overflow is raised."""
    watches = inotify.Watches(str(tmp_path))
    try:
        overflow = inotify._EVENT.pack(-1, inotify.IN_Q_OVERFLOW, 0, 0)
        with pytest.raises(inotify.Overflow):
            watches._parse(overflow, set())
    finally:
        watches.close()


def test_root_going_away_ends_the_watch(tmp_path: Path) -> None:
    """The keeper then waits for ROOT to be back and rescans (watch.py): its watches are gone."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)

    async def run() -> None:
        stop = asyncio.Event()
        changes = inotify.changes(str(root), stop, debounce=0.1, step=0.02)
        pending = asyncio.ensure_future(anext(changes))
        await asyncio.sleep(0)
        root.rename(tmp_path / "away")
        with pytest.raises(inotify.RootGone):
            await asyncio.wait_for(pending, PATIENCE)

    asyncio.run(run())


def test_nothing_is_reported_after_stop(tmp_path: Path) -> None:
    async def run() -> None:
        stop = asyncio.Event()
        changes = inotify.changes(str(tmp_path), stop)
        pending = asyncio.ensure_future(anext(changes))
        await asyncio.sleep(0)
        stop.set()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(pending, PATIENCE)

    asyncio.run(run())
