"""Reads that never wait on the disk: a span read (or only probed) from the page cache with
RWF_NOWAIT, so the event loop can take it at once and leave a cold one to a thread."""

from __future__ import annotations

import mmap
import os

from app.http.ranges import ByteRange

_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
PAGE = mmap.PAGESIZE
_PROBE = [bytearray(1)]  # where a probe's byte lands (never read: any thread may share it)


def pages_cached(fd: int, offset: int, count: int) -> bool:
    """True when the first and last byte of the span are in the page cache (no disk wait)."""
    if _RWF_NOWAIT is None:
        return False
    try:
        os.preadv(fd, _PROBE, offset, _RWF_NOWAIT)
        if count > 1:
            os.preadv(fd, _PROBE, offset + count - 1, _RWF_NOWAIT)
    except OSError:
        return False  # EAGAIN (not cached) or EOPNOTSUPP (cannot tell): use a thread
    return True


def read_cached(fd: int, size: int, offset: int) -> bytes | None:
    """The bytes if every one of them is in the page cache (RWF_NOWAIT), else None."""
    buffer = bytearray(size)
    return bytes(buffer) if read_cached_into(fd, memoryview(buffer), offset) else None


def read_cached_into(fd: int, buffer: memoryview, offset: int) -> bool:
    """Fill `buffer` from `offset` if every byte is in the page cache (RWF_NOWAIT), else False."""
    if _RWF_NOWAIT is None:
        return False
    try:
        return os.preadv(fd, [buffer], offset, _RWF_NOWAIT) == len(buffer)
    except OSError:
        return False


def read_body_cached(fd: int, st: os.stat_result, segments: list[bytes | ByteRange]) -> bytearray | None:
    """A body of file spans and literal bytes (a multipart answer's part heads) from the page
    cache, read straight into one buffer: None if any of it is not cached, or the file (`st`
    when the answer was planned) changed meanwhile."""
    body = bytearray(sum(len(s) if isinstance(s, bytes) else s.length for s in segments))
    view, at = memoryview(body), 0
    for segment in segments:
        if isinstance(segment, ByteRange):
            if not read_cached_into(fd, view[at : at + segment.length], segment.start):
                return None
            at += segment.length
        else:
            view[at : at + len(segment)] = segment
            at += len(segment)
    now = os.fstat(fd)
    if now.st_size != st.st_size or now.st_mtime_ns != st.st_mtime_ns:
        return None
    return body
