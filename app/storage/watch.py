"""Keeping the index current while Ferry runs: one start-up scan, inotify, and a periodic rescan.

Only one process per index does this (the one holding ``<index>.lock``), so several workers never
scan the same tree at once; every worker reads the index, and Ferry's own writes update it directly.
Changes made by other programs arrive through inotify (app/storage/inotify.py; watchfiles where
that is missing) within about a second; the periodic incremental rescan is the safety net for
anything inotify missed (watch limits, overflow). Watching survives anything: a path it cannot use
is skipped, and if the watcher fails (an overflowed queue; watchfiles on a name that is not valid
UTF-8) it starts again, with backoff, after a rescan.

Temporary upload files nobody writes any more are swept at start-up and after every rescan: those
of uploads this index recorded whose process died, at once; any other (seen on disk by a scan) once
untouched for an hour (index.STALE_UPLOAD_SECONDS) and locked by no writer; and those of
resumable uploads once past their expiry (resumable.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import watchfiles

from app import metrics
from app.storage import inotify
from app.storage.errors import StorageError
from app.storage.hasher import DigestWorker
from app.storage.index import Index
from app.storage.paths import open_write_target
from app.storage.resumable import expire_uploads
from app.storage.upload_store import STALE_UPLOAD_SECONDS
from app.storage.values import decodable
from app.storage.writes import remove_stale

logger = logging.getLogger("ferry.index")
_RESTART_DELAYS = (0.5, 60.0)  # first and longest wait before watching starts again after a failure
_HEALTHY_RUN = 300.0  # a watcher that ran this long before failing starts again at the first delay


def owner_lock(index: Index) -> int | None:
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
        self._lock = owner_lock(self.index)
        if self._lock is None:
            self.ready.set()  # another worker keeps the index; this one only reads it
            return
        self._tasks.append(asyncio.create_task(self._run(), name="ferry-index"))

    async def stop(self) -> None:
        self._stop.set()
        self.index.stop_scans()  # a scan in a worker thread ends at its next directory
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
        await self._sweep()
        if self.watch:
            # The watcher scans once its watches exist (see _watch_once); serving starts after that.
            scanned = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._watch(scanned), name="ferry-index-watch"))
            await scanned.wait()
        else:
            await self._scan()
        await self._sweep()  # and what the start-up scan found on disk
        self.ready.set()
        if self.hasher is not None:
            self.hasher.start()
        while self.rescan_interval > 0:
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.rescan_interval)
                return
            except TimeoutError:
                # While inotify works it reports changes inside files; without it (turned off,
                # failed, a network filesystem) only a full rescan sees a file changed in place.
                await self._scan(incremental=self._watching)
                await self._sweep()

    async def _sweep(self) -> None:
        try:
            await asyncio.to_thread(self._sweep_uploads)
        except Exception:
            logger.exception("sweeping temporary upload files failed")

    def _sweep_uploads(self) -> None:
        """Temporary files of uploads whose process died (a crash, a kill) are removed, and those
        a scan found on disk once they are stale (module docstring)."""
        for temp_path in self.index.orphaned_uploads():
            self._remove_upload(temp_path, min_age=None)
        for temp_path in self.index.found_uploads():
            self._remove_upload(temp_path, min_age=STALE_UPLOAD_SECONDS)
        expire_uploads(self.index, time.time())  # resumable uploads past FERRY_UPLOAD_EXPIRY

    def _remove_upload(self, temp_path: str, *, min_age: float | None) -> None:
        parent, _, name = temp_path.rpartition("/")
        try:
            directory = open_write_target(
                parent + "/" if parent else "", self.index.policy, create_parents=False
            )
        except (OSError, StorageError):
            directory = None  # its directory is gone too
        if directory is not None:
            try:
                there = _exists(directory.dir_fd, name)
                if there and not remove_stale(directory.dir_fd, name, min_age=min_age):
                    return  # still written to, or not stale yet: the next sweep looks again
            finally:
                directory.close()
            if there:
                metrics.STALE_UPLOADS_REMOVED.inc()
                logger.info("removed an interrupted upload: %s", temp_path)
        self.index.end_upload(temp_path)

    async def _scan(self, *, incremental: bool = True) -> None:
        if self.index.rebuilding:
            return  # the rebuild's own full scan is reading the disk into the index
        try:
            stats = await asyncio.to_thread(self.index.scan, incremental=incremental)
            entries = await asyncio.to_thread(self.index.count)
            if self.hasher is not None:
                await asyncio.to_thread(self.index.prune_digests)
        except Exception:
            logger.exception("index scan failed")
            return
        if stats.stopped:
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

    async def _watch(self, scanned: asyncio.Event) -> None:
        """Watch until stopped; a failed watcher starts again (and scans again, for what it
        missed), waiting longer after each failure that follows a short run."""
        delay = _RESTART_DELAYS[0]
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                await self._watch_once(scanned)
                return  # stopped
            except Exception as exc:
                if "decode path" in _reason(exc):
                    metrics.INDEX_SKIPPED_NAMES.inc()
                logger.warning("file watching failed (%s); starting again in %.1fs", _reason(exc), delay)
            finally:
                scanned.set()  # the start-up goes on even if watching could not begin
            if time.monotonic() - began > _HEALTHY_RUN:
                delay = _RESTART_DELAYS[0]
            root = self.index.policy.root
            if not root.is_dir():
                # ROOT is gone (unmounted, moved away): watch again as soon as it is back, not
                # after a back-off that grew while it was missing.
                if await self._stopped_within(delay, until=root.is_dir):
                    return
                delay = _RESTART_DELAYS[0] if root.is_dir() else min(delay * 2, _RESTART_DELAYS[1])
            else:
                if await self._stopped_within(delay):
                    return
                delay = min(delay * 2, _RESTART_DELAYS[1])
            metrics.INDEX_WATCH_RESTARTS.inc()

    async def _stopped_within(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Wait up to `seconds` (looking at `until` twice a second, and ending when it holds);
        True when the keeper was stopped meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=left if until is None else min(left, 0.5))
                return True
            if until is not None and until():
                return False
        return False

    async def _watch_once(self, scanned: asyncio.Event) -> None:
        """Start watching, then scan, then apply what the watcher reports.

        In that order because inotify reports only what happens after its watches exist:
        the watcher sets them all up as its generator first runs (one turn of the loop) and from
        then on collects changes until asked for them. So the scan reads anything that changed
        before (the start-up scan, or what a failed watcher missed), and the watcher everything
        after, the scan's own time included; a path seen by both is brought up to date twice."""
        root = self.index.policy.root
        changes = self._changes(root)
        first = asyncio.ensure_future(anext(changes))
        self._watching = True
        try:
            await asyncio.sleep(0)
            await self._scan()
            scanned.set()
            batch = await first
            while True:
                paths = {p for changed in batch if (p := _relative(root, changed))}
                await asyncio.to_thread(self._apply, paths)
                batch = await anext(changes)
        except StopAsyncIteration:
            return  # stopped
        finally:
            if not first.done():
                first.cancel()  # ends the watcher (it closes its watches as it is cancelled)
            self._watching = False

    def _changes(self, root: Path) -> AsyncIterator[set[str]]:
        """Batches of changed absolute paths below `root`, until the keeper stops."""
        if inotify.available():
            return inotify.changes(str(root), self._stop, debounce=0.3, step=0.05)
        return _paths(
            watchfiles.awatch(
                root,
                stop_event=self._stop,
                debounce=300,
                step=50,
                recursive=True,
                ignore_permission_denied=True,
            )
        )

    def _apply(self, paths: set[str]) -> None:
        # Parents first, so a new directory is scanned once, then its children are already known.
        for path in sorted(paths, key=lambda p: p.count("/")):
            if not decodable(path):
                metrics.INDEX_SKIPPED_NAMES.inc()
                continue
            try:
                self.index.sync_path(path)
            except Exception:
                logger.exception("index: bringing %r up to date failed; the next rescan retries", path)


async def _paths(batches: AsyncIterator[set[tuple[watchfiles.Change, str]]]) -> AsyncIterator[set[str]]:
    async for batch in batches:
        yield {path for _, path in batch}


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _reason(exc: BaseException) -> str:
    """One line for a failure, looking inside exception groups (watchfiles raises them)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
