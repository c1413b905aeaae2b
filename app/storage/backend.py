"""What Ferry needs of a storage, whichever holds the bytes: the local file system or an
S3-compatible object store (app/storage/s3.py).

Paths are '/'-separated below the storage's top ('' is the top itself), exactly as the index and
the listings write them; each implementation maps them to its own names (a file under ROOT through
the path gate, a key under the bucket's prefix through the same lexical rules) and refuses, with a
`StorageError`, what those rules refuse. Nothing here knows about HTTP: conditional requests are
evaluated by Ferry against `Stat.etag` and `Stat.mtime_ns`; a storage's own `if_match` only guards
against a change between that decision and the bytes (a download never mixes two versions).

The local file system is one too (app/storage/local.py: the path gate, AtomicWrite and the
scanner's rules behind this interface). The request path does not go through this module yet:
when it does, the local storage may still hand downloads a descriptor (sendfile stays) rather
than chunks. tests/clients/test_storage_contract.py holds both implementations to the same
behaviour, and says where they legitimately differ.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Stat:
    """One file or folder as a storage reports it."""

    path: str
    is_dir: bool
    size: int
    mtime_ns: int
    # A strong validator of this version's bytes: the object store's ETag, quotes included
    # (None for a folder; a local file's is the one downloads send today, from its identity).
    etag: str | None
    # Changes whenever the content may have: ETag and version id of an object; (dev, ino, size,
    # mtime) of a local file. What the index compares to know a digest is still this file's.
    version: str
    sha256: bytes | None = None  # stored with the object by Ferry's own upload, when known
    crc32: int | None = None  # likewise (what a ZIP entry needs)

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


@dataclass(frozen=True, slots=True)
class StatPage:
    """One page of a folder's children, by name; `cursor` continues after its last one."""

    entries: list[Stat]
    cursor: str | None


class Chunk(Protocol):
    """Bytes as a storage hands them out: `bytes`, or a read-only buffer of the storage's own
    client (an object store's response, sliced without a copy). `memoryview(chunk)` reads it;
    `bytes(chunk)` copies it."""

    def __len__(self) -> int: ...

    def __buffer__(self, flags: int, /) -> memoryview: ...


class ByteStream(Protocol):
    """The bytes of one range, as chunks of at most the storage's chunk size: memory stays bounded
    whatever the range, and a consumer that stops reading stops the reads (backpressure)."""

    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None:
        """Stop early and release the connection or descriptor (idempotent)."""


class Storage(Protocol):
    async def stat(self, path: str) -> Stat:
        """The file or folder at `path`; NotServable when there is none Ferry may serve."""

    async def open_range(self, path: str, start: int, end: int, *, if_match: str | None = None) -> ByteStream:
        """Bytes [start, end) of the file; Changed when `if_match` no longer names its version."""

    async def list_page(self, folder: str, *, cursor: str | None = None, limit: int = 1000) -> StatPage:
        """Up to `limit` servable children of `folder`, by name, after `cursor`."""

    def walk(self, top: str = "") -> AsyncIterator[Stat]:
        """Every servable file and folder below `top`, for the index (each folder before its
        children; hidden and unservable names left out, as listings leave them out)."""

    async def write(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        sha256: bytes | None = None,
        crc32: int | None = None,
        content_type: str | None = None,
    ) -> Stat:
        """Store `chunks` at `path` atomically: readers see the old file or the whole new one, never
        a part. `if_match` (an ETag) / `if_none_match` (nothing there yet): Changed otherwise.
        `sha256`, `crc32`: what the body must have (InvalidInput otherwise, nothing stored), kept
        with it where the storage can keep it (the object store; the local one has the index)."""

    async def delete(self, path: str, *, if_match: str | None = None) -> None:
        """Remove the file at `path`; NotServable if there is none, Changed if `if_match` fails."""

    async def aclose(self) -> None:
        """Release connections and background work; the storage is not used afterwards."""
