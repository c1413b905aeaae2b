"""SHA-256 digests (and CRC-32s) of stored files: computed once, keyed by the file's identity, never
stale.

A digest belongs to a file's identity, (device, inode, size, mtime_ns), the same facts its ETag is
made from: a file replaced, appended or rewritten has a new identity, so an old digest can never
be paired with new bytes. Digests come from three places, all through `DigestBuilder`:
- an upload hashes its body while it streams to disk (no extra read; the piece hashes of a file of
  more than one piece are added later by the background hasher, which would otherwise double the
  hashing the upload waits for);
- the background `DigestWorker` hashes files the index lists without one, one file at a time, at
  FERRY_HASH_RATE, pausing while any worker is sending or receiving a file (integrity.py);
- a request that insists (`Want-Repr-Digest`, a `.meta4`, SHA256SUMS) has a small enough file
  hashed on demand by `OnDemandHasher` (on_demand.py), once per file version, on its own thread.

A file is hashed only if its identity is the same before and after the read, and only once its
mtime is a little in the past: a write within the same timestamp tick as the read would leave the
mtime unchanged (as git's "racy" index entries), so a file still being written waits.

Every digest carries the file's CRC-32 as well (what a ZIP entry needs, app/archives/): computed
in the same pass over the same bytes, so an archive never reads a file twice. `crc32` is ISA-L's
(python-isal: ~50 GB/s on the 2-vCPU build machine, 0.02 s a GiB) where its wheel installs, else
zlib's (~2.7 GB/s, 0.4 s a GiB, more than half of SHA-256's 0.6 s); the same values either way.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable

try:
    from isal.isal_zlib import crc32 as crc32
except ImportError:  # no wheel for this platform: zlib's, slower, the same values
    from zlib import crc32 as crc32

from app.storage.values import FileDigest, identity

MIN_PIECE = 4 * 1024**2
MAX_PIECES = 1024
READ_SIZE = 1024**2
SETTLE_SECONDS = 2.0  # a file modified more recently than this is hashed later


def piece_length(size: int) -> int:
    """4 MiB, doubled until the file has at most 1,024 pieces."""
    length = MIN_PIECE
    while length * MAX_PIECES < size:
        length *= 2
    return length


class DigestBuilder:
    """Hashes bytes as they pass: the whole-file SHA-256 and CRC-32, piece SHA-256s, and any extra
    algorithms a client asked to verify (sha-512)."""

    def __init__(self, expected_size: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.whole = hashlib.sha256()
        self.crc32 = 0
        self.extra = {name: hashlib.new(name) for name in extra if name != "sha256"}
        self.piece_length = piece_length(expected_size) if expected_size is not None else 0
        self._piece = hashlib.sha256() if self.piece_length else None
        self._in_piece = 0
        self._pieces: list[bytes] = []
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.whole.update(view)
        self.crc32 = crc32(view, self.crc32)
        for h in self.extra.values():
            h.update(view)
        self.size += len(view)
        if self._piece is None:
            return
        while view:
            take = min(len(view), self.piece_length - self._in_piece)
            self._piece.update(view[:take])
            self._in_piece += take
            view = view[take:]
            if self._in_piece == self.piece_length:
                self._pieces.append(self._piece.digest())
                self._piece, self._in_piece = hashlib.sha256(), 0

    def hexdigest(self, name: str) -> str:
        return self.whole.hexdigest() if name == "sha256" else self.extra[name].hexdigest()

    def digest(self, name: str = "sha256") -> bytes:
        return self.whole.digest() if name == "sha256" else self.extra[name].digest()

    def result(self) -> FileDigest:
        pieces = list(self._pieces)
        if self._piece is not None and self._in_piece:
            pieces.append(self._piece.digest())
        if len(pieces) <= 1:
            return FileDigest(self.whole.digest(), crc32=self.crc32)
        return FileDigest(self.whole.digest(), self.piece_length, b"".join(pieces), self.crc32)


def hash_open_file(
    fd: int,
    st: os.stat_result,
    *,
    extra: tuple[str, ...] = (),
    before_read: Callable[[int], bool] | None = None,
    after_read: Callable[[int], None] | None = None,
) -> DigestBuilder | None:
    """Hash an opened regular file from offset 0; None if it changed while being read (or if
    `before_read`, told the next read's size, returns False: stop). `after_read` is told each
    read's size."""
    builder = DigestBuilder(st.st_size, extra)
    offset = 0
    while offset < st.st_size:
        size = min(READ_SIZE, st.st_size - offset)
        if before_read is not None and not before_read(size):
            return None
        data = os.pread(fd, size, offset)
        if len(data) != size:
            return None
        builder.update(data)
        offset += size
        if after_read is not None:
            after_read(size)
    if identity(os.fstat(fd)) != identity(st):
        return None
    return builder


def settled(st: os.stat_result, now: float | None = None) -> bool:
    """Whether the file's mtime is far enough in the past for its identity to be trusted."""
    return st.st_mtime_ns / 1e9 <= (time.time() if now is None else now) - SETTLE_SECONDS
