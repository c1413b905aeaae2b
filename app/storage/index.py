"""The storage index: what is under ROOT, in SQLite, for listings, name search and digests.

`Index` is one object assembled from a layer each: the database file and its connections
(database.py, schema.py), its tables (entry_store.py, digest_store.py, upload_store.py) and the
scanner that fills them from the disk (scanner.py). The watcher (watch.py) keeps it in step while
Ferry runs; the digest worker (integrity.py) hashes what it lists, knowing it only through a
protocol of the few methods it calls.

A download reads the index for one thing, its file's digest (Repr-Digest, Digest and the Link to
the .meta4; `.meta4` and `?checksums` too), through the worker's `DigestCache` (on_demand.py): at
most one read a second per file version while it has no digest, in a thread, and a download does
not wait long for it. A download of a path the disk no longer has drops it from the index. The
index is written by the scanner and watcher, the digest worker and Ferry's own writes. Request
paths never write it from their own threads: they go through `AsyncIndex` (async_index.py), whose
one writer thread runs every request's write, a listing's rescan of a directory that changed on
disk included, so a write-locked database stalls only the writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Protocol, TypeVar

from app.storage.database import recovering
from app.storage.digest_store import DigestStore
from app.storage.errors import NotServable
from app.storage.paths import SafePath, relative, stat_beneath
from app.storage.scanner import Scanner
from app.storage.upload_store import UploadStore
from app.storage.values import Entry, entry_from_stat

_A = TypeVar("_A")


class Writer(Protocol):
    """Runs an index write, `func(arg)`: now, or queued (`AsyncIndex.enqueue`)."""

    def __call__(self, func: Callable[[_A], object], arg: _A, /) -> None: ...


class Index(Scanner, DigestStore, UploadStore):
    """The SQLite index of one ROOT under one path policy."""

    @recovering
    def entry_for(self, safe: SafePath, *, write: Writer | None = None) -> Entry | None:
        """A live entry for a gated path (stat now, on a pinned descriptor), keeping the index in
        step with what it saw: the update is handed to `write` (`AsyncIndex.enqueue`, so a
        reader thread never waits for the write lock), or made here without one."""
        path = relative(safe, self.policy)
        write = write or _now
        try:
            st = stat_beneath(safe, self.policy)
        except (OSError, NotServable):
            if path:
                write(self.forget, path)
            return None
        entry = entry_from_stat(path, st)
        known = self.get(path) if path else None
        if known == entry:
            return known  # with its digest, if known
        if path:
            write(self.put, entry)
        digest = self.digest((entry.dev, entry.ino, entry.size, entry.mtime_ns))
        return entry if digest is None else replace(entry, sha256=digest.sha256, crc32=digest.crc32)


def _now(func: Callable[[_A], object], arg: _A, /) -> None:
    func(arg)
