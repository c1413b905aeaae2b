"""One request's append to a resumable upload (resumable.py): the locked descriptor, the bytes
written at the offset, and their hashes as they pass.

`Hashes` keeps the SHA-256 (as a state any process can continue) and CRC-32 of the bytes so far;
each recorded offset saves them, so no append ever reads back what earlier ones wrote. A
per-append checksum (tus Upload-Checksum) is checked once the body is in, and its bytes are
discarded when it does not match.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.storage.digests import crc32
from app.storage.errors import InTheWay, InvalidInput
from app.storage.paths import WriteTarget
from app.storage.running_sha256 import RunningSha256, available
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


# An append's pwrite, beside its hashes on the caller's thread (both let go of the GIL).
_WRITER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ferry-append")


class Hashes:
    """The SHA-256 and CRC-32 of an upload's bytes so far. The SHA-256 is OpenSSL's running state
    (running_sha256.py), saved with every recorded offset: an append continued by any process, after
    any restart, starts from the record and never reads the file back. Where that library is
    missing, `sha256` is None and completion hashes the file once."""

    def __init__(self, sha256: RunningSha256 | None, crc: int, size: int) -> None:
        self.sha256 = sha256
        self.crc32 = crc
        self.size = size

    @classmethod
    def start(cls) -> Hashes:
        return cls(RunningSha256() if available() else None, 0, 0)

    @classmethod
    def recorded(cls, upload: Resumable) -> Hashes:
        """The hashes as `upload`'s record left them, at its offset."""
        state = RunningSha256(upload.sha256) if upload.sha256 is not None and available() else None
        return cls(state, upload.crc32, upload.offset)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self.sha256 is not None:
            self.sha256.update(data)
        self.crc32 = crc32(data, self.crc32)
        self.size += memoryview(data).nbytes

    def saved(self) -> bytes | None:
        return self.sha256.saved() if self.sha256 is not None else None

    def result(self) -> FileDigest | None:
        if self.sha256 is None:
            return None
        return FileDigest(self.sha256.digest(), crc32=self.crc32)


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

    @property
    def size(self) -> int:
        return self.hashes.size

    def expect_checksum(self, algorithm: str) -> None:
        self.checksum = hashlib.new(algorithm)

    def write(self, data: bytes | bytearray) -> None:
        length = self.upload.length
        if length is not None and self.size + len(data) > length:
            raise InvalidInput(f"the upload is {length} bytes long; the body goes past its end")
        # Written and hashed at once (pwrite and the hashes let go of the GIL), as a PUT's body is.
        writing = _WRITER.submit(self._pwrite, memoryview(data), self.size)
        try:
            self.hashes.update(data)
            if self.checksum is not None:
                self.checksum.update(data)
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
        self.hashes = Hashes.recorded(self.upload)
