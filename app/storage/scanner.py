"""The scanner: brings the index in step with the disk under ROOT.

A full or incremental walk (`scan`: at start-up, after a rebuild, periodically), one path the
watcher (watch.py) or a write saw change (`sync_path`), or one directory whose mtime moved
(`refresh_if_changed`, which a listing queues on the index's writer thread). Paths are stat'ed on a
descriptor the gate pinned and directories read by descriptor (paths.py), so a path swapped for a
symlink after a check cannot make the index list another directory or what a symlink leads to.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app import metrics
from app.storage.database import Replaced, recovering
from app.storage.entry_store import EntryStore
from app.storage.errors import IndexRebuilding, InvalidInput, NotServable, StorageError
from app.storage.paths import (
    TEMP_PREFIX,
    PathPolicy,
    SafePath,
    open_beneath,
    resolve,
    servable_name,
    stat_beneath,
    stat_child,
)
from app.storage.upload_store import FOUND_OWNER
from app.storage.values import Entry, ScanStats, decodable, entry_from_stat, join, stored_ns

_STOP_CHECK_ENTRIES = 1000  # a scan stopping checks between directories and every this many names
logger = logging.getLogger("ferry.index")

# The name AtomicWrite (writes.py) gives a temporary upload file; nothing else is ever swept.
TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]{16}\.part")


class Scanner(EntryStore):
    """Scanning, over the entries table (a scan also records the temporary upload files it finds)."""

    def __init__(self, db_path: Path, policy: PathPolicy) -> None:
        self._stop_scans = threading.Event()  # before the database opens: a rebuild may scan at once
        # False when files live in a bucket: nothing on disk is read into the index (the bucket
        # keeper, app/storage/bucket_index.py, fills it from listings instead).
        self.on_disk = True
        self.refill_wanted: Callable[[], None] | None = None  # called instead of a scan then
        super().__init__(db_path, policy)

    def stop_scans(self) -> None:
        """Make running and future scans stop at the next directory (shutdown)."""
        self._stop_scans.set()

    def refill(self) -> None:
        if not self.on_disk:
            if self.refill_wanted is not None:
                self.refill_wanted()  # the bucket keeper lists the bucket again now
            return
        stats = self.scan(incremental=False)
        if stats.stopped:
            logger.info("index rebuild stopped; the next start reads the rest of the disk")
            return
        metrics.INDEX_SCAN_SECONDS.set(stats.seconds)
        logger.info(
            "index scan: %d directories, %d read from disk, %.2fs (the index is rebuilt: %d entries)",
            stats.directories,
            stats.rescanned,
            stats.seconds,
            self.count(),
        )

    @recovering
    def sync_path(self, path: str) -> None:
        """Bring one path up to date with the disk: add, update or drop it (a new directory is
        scanned whole)."""
        if not self.on_disk or not os.path.isdir(self.policy.root):
            return  # ROOT itself is gone (an unmounted volume): nothing is known to be deleted
        found = self._stat(path)
        if found is None:
            self.remove(path)  # gone, or no longer allowed by the policy
            return
        safe, st = found
        entry = entry_from_stat(path, st)
        self.put(entry)
        # A directory is walked: those never read (created, copied or moved in, or only seen in
        # a listing of their parent) or changed since are read; the rest cost one stat each.
        if entry.is_dir and not os.path.islink(safe):
            self.scan(start=path, incremental=True)

    @recovering
    def refresh_if_changed(self, directory: str) -> None:
        """Rescan a directory's own entries if its mtime differs from the indexed one."""
        found = self._stat(directory) if self.on_disk else None
        if found is not None and self.dir_mtime(directory) != stored_ns(found[1].st_mtime_ns):
            self._rescan_dir(directory, found[0])

    def changed(self, directory: str) -> bool:
        """Whether a directory's mtime on disk differs from the indexed one (a read: the rescan
        `refresh_if_changed` does is a write)."""
        found = self._stat(directory) if self.on_disk else None
        return found is not None and self.dir_mtime(directory) != stored_ns(found[1].st_mtime_ns)

    def _stat(self, path: str) -> tuple[SafePath, os.stat_result] | None:
        """A path through the gate and its stat, taken on a pinned descriptor (`stat_beneath`);
        None if it is gone or the policy refuses it."""
        try:
            safe = resolve(path, self.policy)
            return safe, stat_beneath(safe, self.policy)
        except (OSError, ValueError, InvalidInput, NotServable):
            return None

    def scan(self, *, start: str = "", incremental: bool = True) -> ScanStats:
        """Walk ROOT (or a subtree); with `incremental`, directories whose mtime matches the index
        are not read again, only descended through. A directory that cannot be read is logged and
        passed over, never the end of the scan; `stop_scans` ends it at the next directory."""
        began = time.monotonic()
        stack = [start] if self.on_disk else []
        directories = rescanned = 0
        while stack:
            if self._stop_scans.is_set():
                return ScanStats(directories, rescanned, time.monotonic() - began, stopped=True)
            directory = stack.pop()
            directories += 1
            try:
                subdirs, read = self._scan_one(directory, incremental=incremental)
            except (Replaced, IndexRebuilding):
                raise  # the index was replaced: its rebuild scans everything again
            except Exception:
                logger.exception("index scan: reading %r failed; going on with the rest", directory)
                continue
            rescanned += read
            stack.extend(join(directory, name) for name in subdirs)
        return ScanStats(directories, rescanned, time.monotonic() - began)

    def _scan_one(self, directory: str, *, incremental: bool) -> tuple[list[str], bool]:
        """One directory of a scan: its subdirectories, and whether it was read from disk."""
        found = self._stat(directory)
        if found is None:
            if directory:
                self.remove(directory)  # gone, or no longer allowed by the policy
            return [], False
        safe, st = found
        mtime_ns = stored_ns(st.st_mtime_ns)
        subdirs = self._known_subdirs(directory, mtime_ns) if incremental else None
        if subdirs is not None:
            return subdirs, False
        return self._rescan_dir(directory, safe), True

    def _known_subdirs(self, directory: str, mtime_ns: int) -> list[str] | None:
        """The indexed subdirectories of a directory whose mtime is unchanged; None if it changed."""
        with self._connection() as conn:
            row = conn.execute("SELECT mtime_ns FROM dirs WHERE path = ?", (directory,)).fetchone()
            if row is None or row["mtime_ns"] != mtime_ns:
                return None
            rows = conn.execute("SELECT name FROM entries WHERE parent = ? AND is_dir = 1", (directory,))
            return [r["name"] for r in rows]

    def _rescan_dir(self, directory: str, safe: SafePath) -> list[str]:
        """Read one directory from disk into the index; returns the subdirectories to descend into
        (real directories only: a symlinked directory is listed but not walked, so no loops).

        The directory is opened through the gate and read by descriptor, so a path swapped for a
        symlink after the check cannot make the index list another directory.
        """
        found: dict[str, Entry] = {}
        walk: list[str] = []
        temporary: list[str] = []
        try:
            fd, st_dir = open_beneath(safe, self.policy)
        except (OSError, StorageError):
            if directory:
                self.remove(directory)
            return []
        try:
            mtime_ns = stored_ns(st_dir.st_mtime_ns)
            with os.scandir(fd) as it:
                for count, d in enumerate(it, 1):
                    if count % _STOP_CHECK_ENTRIES == 0 and self._stop_scans.is_set():
                        return []  # shutting down: the next start reads this directory again
                    if TEMP_NAME.fullmatch(d.name):
                        temporary.append(d.name)
                        continue
                    st = self._entry_stat(fd, d)
                    if st is None or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                        continue
                    found[d.name] = entry_from_stat(join(directory, d.name), st)
                    if stat.S_ISDIR(st.st_mode) and not d.is_symlink():
                        walk.append(d.name)
        except OSError:
            return []
        finally:
            os.close(fd)
        with self._write() as w:
            known = {
                r["name"]: r
                for r in w.execute(
                    "SELECT name, is_dir, size, mtime_ns, dev, ino FROM entries WHERE parent = ?",
                    (directory,),
                )
            }
            for name in known.keys() - found.keys():
                self._delete(w, join(directory, name))
            for name, e in found.items():
                old = known.get(name)
                if old is None or (old["is_dir"], old["size"], old["mtime_ns"], old["dev"], old["ino"]) != (
                    int(e.is_dir),
                    e.size,
                    e.mtime_ns,
                    e.dev,
                    e.ino,
                ):
                    self._upsert(w, directory, e)
            # Temporary upload files are remembered, so the sweep (watch.py) finds them even in a
            # directory no later scan reads again; an upload begun here keeps its own row.
            w.executemany(
                "INSERT OR IGNORE INTO uploads (path, owner) VALUES (?, ?)",
                [(join(directory, name), FOUND_OWNER) for name in temporary],
            )
            w.execute(
                "INSERT INTO dirs (path, mtime_ns) VALUES (?, ?) "
                "ON CONFLICT (path) DO UPDATE SET mtime_ns = excluded.mtime_ns",
                (directory, mtime_ns),
            )
        return walk

    def _entry_stat(self, dir_fd: int, d: os.DirEntry[str]) -> os.stat_result | None:
        """The stat of an entry the index may hold (None: skip it); one entry that fails in an
        unexpected way is skipped, never the end of its directory's scan."""
        try:
            return self._servable_stat(dir_fd, d)
        except Exception:
            logger.exception("index scan: skipping %r", d.name)
            return None

    def _servable_stat(self, dir_fd: int, d: os.DirEntry[str]) -> os.stat_result | None:
        if not decodable(d.name):
            metrics.INDEX_SKIPPED_NAMES.inc()  # not valid UTF-8: no URL can name it
            return None
        return servable_stat(dir_fd, d, self.policy)


def servable_stat(dir_fd: int, d: os.DirEntry[str], policy: PathPolicy) -> os.stat_result | None:
    """The stat of a directory entry the index and listings may show (None: leave it out): a
    servable name, a symlink followed only where the gate allows, never an upload in progress.
    The local storage's listings and walks (local.py) show exactly what the index holds."""
    if TEMP_NAME.fullmatch(d.name) or not decodable(d.name):
        return None
    if d.is_symlink():
        return stat_child(dir_fd, d.name, policy)  # followed only where the gate allows
    if not servable_name(d.name, policy):
        return None
    try:
        return d.stat(follow_symlinks=False)
    except OSError:
        return None
