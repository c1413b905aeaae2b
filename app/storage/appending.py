"""One request's append to a resumable upload (resumable.py): the locked descriptor, the bytes
written at the offset, and their hashes as they pass.

`_Hashes` keeps the SHA-256 of each complete piece always, and the whole file's SHA-256 and CRC-32
when every byte passed through this process; an append that continues an upload without them
re-hashes only the partial piece (`rebuilt`). A per-append checksum (tus Upload-Checksum) is
checked once the body is in, and its bytes are discarded when it does not match.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from app.storage.digests import READ_SIZE, crc32
from app.storage.errors import InTheWay, InvalidInput
from app.storage.paths import WriteTarget
from app.storage.upload_store import Resumable
from app.storage.values import FileDigest

_SYNC_FILE_RANGE_WRITE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing these bytes to disk now (Linux sync_file_range, without
    waiting): the fsync that ends an append then has little left to wait for, where otherwise
    the whole append's dirty pages would be written while the client waits for the answer."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def busy() -> InTheWay:
    """Another request is appending to this upload (409)."""
    return InTheWay("another request is appending to this upload; try again when it ends")


class ChecksumMismatch(Exception):
    """The bytes of an append do not have the checksum the client sent; they were discarded. Not
    a StorageError: each protocol answers it its own way (tus: 460)."""

    detail = "the body does not match its checksum; its bytes were discarded"


class TooManyUploads(Exception):
    """The cap on open uploads (per token, or in all) is reached (the protocol answers 429)."""

    detail = "too many uploads in progress; finish or terminate some first"


_PARALLEL_MIN = 256 * 1024
# An append's pwrite and its piece hashes, beside the whole file's hash on the caller's thread.
_PIECE_HASHER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ferry-append")


class Hashes:
    """The hashes of an upload's bytes so far: piece SHA-256s always, the whole file's SHA-256 and
    CRC-32 only when every byte passed through this process (`whole` None otherwise)."""

    def __init__(self, piece_len: int, pieces: list[bytes], size: int, whole: Any | None) -> None:
        self.piece_length = piece_len
        self.pieces = pieces
        self.piece = hashlib.sha256()
        self.in_piece = 0
        self.size = size
        self.whole = whole
        self.crc32 = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self.whole is not None and len(view) >= _PARALLEL_MIN:
            # Two SHA-256 passes over the same bytes (the file's and its pieces'): side by side on
            # two threads (hashlib lets go of the GIL), so an append costs one pass of wall time.
            pieces = _PIECE_HASHER.submit(self._pieces, view)
            self.whole.update(view)
            self.crc32 = crc32(view, self.crc32)
            pieces.result()
            return
        if self.whole is not None:
            self.whole.update(view)
            self.crc32 = crc32(view, self.crc32)
        self._pieces(view)

    def _pieces(self, view: memoryview) -> None:
        self.size += len(view)
        while view:
            take = min(len(view), self.piece_length - self.in_piece)
            self.piece.update(view[:take])
            self.in_piece += take
            view = view[take:]
            if self.in_piece == self.piece_length:
                self.pieces.append(self.piece.digest())
                self.piece, self.in_piece = hashlib.sha256(), 0

    def copy(self) -> Hashes:
        other = Hashes(self.piece_length, list(self.pieces), self.size, None)
        other.piece, other.in_piece = self.piece.copy(), self.in_piece
        other.whole, other.crc32 = (self.whole.copy() if self.whole is not None else None), self.crc32
        return other

    def result(self) -> FileDigest | None:
        if self.whole is None:
            return None
        pieces = self.pieces + ([self.piece.digest()] if self.in_piece else [])
        if len(pieces) <= 1:
            return FileDigest(self.whole.digest(), crc32=self.crc32)
        return FileDigest(self.whole.digest(), self.piece_length, b"".join(pieces), self.crc32)


@dataclass
class Append:
    """One request's append to an upload: its locked descriptor and the hashes as bytes arrive.
    `write` blocks (run it in a worker thread); `verify` checks a per-append checksum."""

    upload: Resumable
    target: WriteTarget
    fd: int
    hashes: Hashes
    start: int  # the offset when this append began
    recorded: int  # the offset last recorded in the index
    checksum: Any | None = None  # hashlib object of this append's bytes, when the client sent one
    writeback: bool = False  # start writing each chunk to disk at once (an fsync will follow)
    _before: Hashes | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return self.hashes.size

    def expect_checksum(self, algorithm: str) -> None:
        self.checksum = hashlib.new(algorithm)

    def write(self, data: bytes | bytearray) -> None:
        length = self.upload.length
        if length is not None and self.size + len(data) > length:
            raise InvalidInput(f"the upload is {length} bytes long; the body goes past its end")
        view = memoryview(data)
        # Written and hashed at once (pwrite and hashlib let go of the GIL), as a PUT's body is.
        writing = _PIECE_HASHER.submit(self._pwrite, view, self.size)
        try:
            self.hashes.update(view)
            if self.checksum is not None:
                self.checksum.update(view)
        finally:
            writing.result()

    def _pwrite(self, view: memoryview, start: int) -> None:
        offset = start
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written
        if self.writeback:
            start_writeback(self.fd, start, offset - start)

    def verify(self, digest: bytes) -> None:
        """The checksum of this append's bytes must be `digest`; else they are discarded."""
        if self.checksum is not None and self.checksum.digest() != digest:
            self.discard()
            raise ChecksumMismatch()

    def discard(self) -> None:
        """Cut the file back to the recorded offset (bytes received but not acknowledged)."""
        if self.fd < 0 or self.size == self.recorded:
            return
        os.ftruncate(self.fd, self.recorded)
        if self._before is not None and self._before.size == self.recorded:
            self.hashes = self._before.copy()
        else:
            self.hashes = rebuilt(self.fd, replace(self.upload, offset=self.recorded))


def rebuilt(fd: int, upload: Resumable) -> Hashes:
    """The hashes of an upload continued without its running hash: the recorded pieces, and the
    partial piece read back (the whole file is hashed once, at completion)."""
    complete = upload.offset // upload.piece_length
    pieces = [upload.pieces[i * 32 : (i + 1) * 32] for i in range(complete)]
    hashes = Hashes(upload.piece_length, pieces, complete * upload.piece_length, None)
    position = hashes.size
    while position < upload.offset:
        data = os.pread(fd, min(READ_SIZE, upload.offset - position), position)
        if not data:
            raise InvalidInput("the upload's stored bytes are shorter than recorded; start it again")
        hashes.update(data)
        position += len(data)
    return hashes
