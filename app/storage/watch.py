"""Keeping the index current while Ferry runs: one start-up scan, inotify, and a periodic rescan.

Only one process per index does this (the one holding ``<index>.lock``), so several workers never
scan the same tree at once; every worker reads the index, and Ferry's own writes update it directly.
Changes made by other programs arrive through watchfiles (inotify) within about a second; the
periodic incremental rescan is the safety net for anything inotify missed (watch limits, overflow).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import watchfiles

from app import metrics
from app.errors import FerryError
from app.storage.digests import DigestWorker
from app.storage.index import Index
from app.storage.paths import open_write_target
from app.storage.writes import remove_stale

logger = logging.getLogger("ferry.index")


def _owner_lock(index: Index) -> int | None:
    """Take the index's writer lock without waiting; the descriptor holds it until closed."""
    fd = os.open(str(index.db_path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _relative(root: Path, changed: str) -> str | None:
    """The index path of a changed path below ROOT; None for ROOT itself (no entry of its own:
    "." would name it, and the gate reads "./x" as "x") and for anything outside."""
    try:
        path = Path(changed).relative_to(root).as_posix()
    except ValueError:
        return None
    return None if path == "." else path


class IndexKeeper:
    """Runs the scan, the watcher and the rescan loop for one index, if this process owns it."""

    def __init__(
        self, index: Index, *, watch: bool, rescan_interval: float, hasher: DigestWorker | None = None
    ) -> None:
        self.index = index
        self.hasher = hasher
        self.watch = watch
        self.rescan_interval = rescan_interval
        self.last_scan_seconds: float | None = None
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock: int | None = None
        self._stop = asyncio.Event()
        self._watching = False

    async def start(self) -> None:
        self._lock = _owner_lock(self.index)
        if self._lock is None:
            self.ready.set()  # another worker keeps the index; this one only reads it
            return
        self._tasks.append(asyncio.create_task(self._run(), name="ferry-index"))

    async def stop(self) -> None:
        self._stop.set()
        if self.hasher is not None:
            await asyncio.to_thread(self.hasher.stop)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    async def _run(self) -> None:
        await asyncio.to_thread(self._remove_orphaned_uploads)
        await self._scan()
        self.ready.set()
        if self.hasher is not None:
            self.hasher.start()
        if self.watch:
            self._tasks.append(asyncio.create_task(self._watch(), name="ferry-index-watch"))
        while self.rescan_interval > 0:
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.rescan_interval)
                return
            except TimeoutError:
                # While inotify works it reports changes inside files; without it (turned off,
                # failed, a network filesystem) only a full rescan sees a file changed in place.
                await self._scan(incremental=self._watching)

    def _remove_orphaned_uploads(self) -> None:
        """Temporary files of uploads whose process died (a crash, a kill) are removed."""
        for temp_path in self.index.orphaned_uploads():
            parent, _, name = temp_path.rpartition("/")
            try:
                directory = open_write_target(
                    parent + "/" if parent else "", self.index.policy, create_parents=False
                )
            except (OSError, FerryError):
                directory = None  # its directory is gone too
            if directory is not None:
                try:
                    remove_stale(directory.dir_fd, name)
                finally:
                    directory.close()
                logger.info("removed an interrupted upload: %s", temp_path)
            self.index.end_upload(temp_path)

    async def _scan(self, *, incremental: bool = True) -> None:
        try:
            stats = await asyncio.to_thread(self.index.scan, incremental=incremental)
            entries = await asyncio.to_thread(self.index.count)
            if self.hasher is not None:
                await asyncio.to_thread(self.index.prune_digests)
        except Exception:
            logger.exception("index scan failed")
            return
        self.last_scan_seconds = stats.seconds
        metrics.INDEX_SCAN_SECONDS.set(stats.seconds)
        metrics.INDEX_ENTRIES.set(entries)
        logger.info(
            "index scan: %d directories, %d read from disk, %.2fs",
            stats.directories,
            stats.rescanned,
            stats.seconds,
        )

    async def _watch(self) -> None:
        root = self.index.policy.root
        self._watching = True
        try:
            async for changes in self._changes(root):
                paths = {p for _, changed in changes if (p := _relative(root, changed))}
                await asyncio.to_thread(self._apply, paths)
        except Exception:
            logger.exception("file watching stopped; the periodic rescan keeps the index current")
        finally:
            self._watching = False

    def _changes(self, root: Path) -> AsyncIterator[set[tuple[watchfiles.Change, str]]]:
        return watchfiles.awatch(
            root, stop_event=self._stop, debounce=300, step=50, recursive=True, ignore_permission_denied=True
        )

    def _apply(self, paths: set[str]) -> None:
        # Parents first, so a new directory is scanned once, then its children are already known.
        for path in sorted(paths, key=lambda p: p.count("/")):
            self.index.sync_path(path)
