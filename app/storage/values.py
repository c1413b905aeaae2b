"""The values both sides of storage share: what an index entry is, what a file's digest is, and
how the facts of a stat are kept in SQLite.

The database layer (database.py and its tables), the scanner, the integrity worker and the
request paths all speak in these; nothing here reads the disk or the database.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Literal

Identity = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns)
SortKey = Literal["name", "size", "mtime"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def stored_ns(ns: int) -> int:
    """A timestamp in ns as SQLite can hold it (a signed 64-bit integer): past year 2262 (which
    ext4 and tmpfs mtimes reach) it is clamped, rather than fail the directory's whole scan."""
    return min(max(ns, _INT64_MIN), _INT64_MAX)


def stored_u64(value: int) -> int:
    """An unsigned 64-bit number (st_dev, st_ino: NFS file ids use all 64 bits) as the signed
    64-bit integer with the same bits, so every value stays distinct in SQLite."""
    return value - 2**64 if value > _INT64_MAX else value


def identity(st: os.stat_result) -> Identity:
    """A file version's identity: the same facts its ETag is made from (digests.py says why)."""
    return (stored_u64(st.st_dev), stored_u64(st.st_ino), st.st_size, stored_ns(st.st_mtime_ns))


@dataclass(frozen=True, slots=True)
class FileDigest:
    """The SHA-256 of a whole file and, for a file of more than one piece, of each piece; and
    the file's CRC-32 (what a ZIP entry carries: app/archives/), when it was computed beside."""

    sha256: bytes
    piece_length: int = 0
    pieces: bytes = b""  # the 32-byte SHA-256 of each piece, concatenated
    crc32: int | None = None

    @property
    def hex(self) -> str:
        return self.sha256.hex()

    def piece_hexes(self) -> tuple[str, ...]:
        return tuple(self.pieces[i : i + 32].hex() for i in range(0, len(self.pieces), 32))


EMPTY_SHA256 = hashlib.sha256(b"").digest()
EMPTY_DIGEST = FileDigest(EMPTY_SHA256, crc32=0)


@dataclass(frozen=True, slots=True)
class Entry:
    """One indexed file or directory; `path` is '/'-separated below ROOT."""

    path: str
    name: str
    is_dir: bool
    size: int
    mtime_ns: int
    dev: int
    ino: int
    sha256: bytes | None = field(default=None, compare=False)  # known digest of this identity
    crc32: int | None = field(default=None, compare=False)  # known CRC-32 of this identity


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Entry]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ScanStats:
    directories: int = 0
    rescanned: int = 0
    seconds: float = 0.0
    stopped: bool = False


def decodable(name: str) -> bool:
    """Whether a file name read from disk is valid UTF-8 (undecodable bytes arrive as surrogate
    escapes, which neither a URL nor SQLite can carry)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def join(parent: str, name: str) -> str:
    """The '/'-separated path of `name` in `parent` ('' is ROOT)."""
    return f"{parent}/{name}" if parent else name


def split(path: str) -> tuple[str, str]:
    """(parent, name) of a '/'-separated path below ROOT."""
    parent, _, name = path.rpartition("/")
    return parent, name


def entry_from_stat(path: str, st: os.stat_result) -> Entry:
    parent, name = split(path)
    is_dir = stat.S_ISDIR(st.st_mode)
    dev, ino, size, mtime_ns = identity(st)
    return Entry(path, name, is_dir, 0 if is_dir else size, mtime_ns, dev, ino)


def object_identity(path: str, version: str) -> tuple[int, int]:
    """(dev, ino) standing in for an object's: 0, and 63 bits of its key and version (ETag and
    version id), so an object's digest is kept by identity as a local file's is, and a new version
    never inherits the old one's. The key is part of it because the ETag alone is not: two
    objects with the same bytes have the same ETag, and would share (and take turns to overwrite)
    one digest row, as two names of one inode do."""
    return 0, int.from_bytes(hashlib.sha256(f"{path}\n{version}".encode()).digest()[:8], "big") >> 1


def entry_from_object(path: str, is_dir: bool, size: int, mtime_ns: int, version: str) -> Entry:
    """The index entry of an object (or of a folder, a key prefix) in a bucket."""
    parent, name = split(path)
    dev, ino = object_identity(path, version) if not is_dir else (0, 0)
    return Entry(path, name, is_dir, 0 if is_dir else size, stored_ns(mtime_ns), dev, ino)
