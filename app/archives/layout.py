"""Folder archives as byte layouts: a stored ZIP (ZIP64 where needed) or a POSIX pax tar, known
to the byte before any file is read. Pure: no I/O, nothing else of Ferry's.

An archive of N files is a fixed sequence of parts: header bytes (built here from a member's path,
size, mtime and, for ZIP, CRC-32), then the file's own bytes, then padding or the next header,
and a trailer (ZIP's central directory, tar's two zero blocks). Given the members, the archive's
length and every byte range are therefore known up front: `Layout.pieces(start, stop)` answers a
range with header bytes to send and `FileSpan`s to send from the files themselves (sendfile, or
the bucket's ranged reads), so a folder download can carry a Content-Length, resume with Range
and be sent zero-copy.

Memory is a few integers per member (`array` of offsets) beside the members themselves; header
bytes are rebuilt on demand for the parts a range touches, never kept for the whole archive, and
the trailer is built in parts as it is sent.

The formats: zip.py (stored ZIP, ZIP64 where needed) and tar.py (POSIX pax tar).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple


class Member(NamedTuple):
    """One file of an archive: its '/'-separated path inside it, size, mtime (epoch seconds) and
    CRC-32 (needed by ZIP, unused by tar). A tuple: a 100,000-file manifest builds four times
    faster than with a frozen dataclass."""

    path: str
    size: int
    mtime: int
    crc32: int | None = None


@dataclass(frozen=True, slots=True)
class FileSpan:
    """Bytes [offset, offset + length) of member `index`'s file."""

    index: int
    offset: int
    length: int


Piece = bytes | FileSpan


class Layout:
    """An archive as parts: member i's header, its bytes, its padding; then the trailer."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = members
        # starts[i]: where member i's header begins; data[i]: where its bytes begin.
        self.starts = array("q")
        self.data = array("q")
        offset = 0
        for i, member in enumerate(members):
            self.starts.append(offset)
            offset += self.header_length(i, offset)
            self.data.append(offset)
            offset += member.size + self.padding_length(i)
        self.trailer_start = offset
        self.length = offset + self.trailer_length()

    # What a format defines ------------------------------------------------------------------------

    def header(self, index: int, offset: int) -> bytes:
        raise NotImplementedError

    def header_length(self, index: int, offset: int) -> int:
        return len(self.header(index, offset))

    def padding(self, index: int) -> bytes:
        """What follows member `index`'s bytes (tar's padding, ZIP's data descriptor)."""
        return b""

    def padding_length(self, index: int) -> int:
        return len(self.padding(index))

    def trailer_length(self) -> int:
        raise NotImplementedError

    def trailer_parts(self) -> Iterator[bytes]:
        """The trailer's bytes in order, in parts (a ZIP's central directory can be large)."""
        raise NotImplementedError

    # Ranges -------------------------------------------------------------------------------------

    def pieces(self, start: int, stop: int) -> Iterator[Piece]:
        """The archive's bytes [start, stop) as header/trailer bytes and file spans, in order."""
        start, stop = max(0, start), min(stop, self.length)
        if start >= stop:
            return
        first = _last_at_or_before(self.starts, start)
        for i in range(max(first, 0), len(self.members)):
            begin = self.starts[i]
            if begin >= stop:
                return
            head = self.header(i, begin)
            yield from _clip(head, begin, start, stop)
            data, size = self.data[i], self.members[i].size
            low, high = max(start, data), min(stop, data + size)
            if low < high:
                yield FileSpan(i, low - data, high - low)
            yield from _clip(self.padding(i), data + size, start, stop)
        if stop > self.trailer_start:
            at = self.trailer_start
            for part in self.trailer_parts():
                if at >= stop:
                    return
                yield from _clip(part, at, start, stop)
                at += len(part)


def _last_at_or_before(values: array[int], target: int) -> int:
    low, high = 0, len(values)
    while low < high:
        middle = (low + high) // 2
        if values[middle] <= target:
            low = middle + 1
        else:
            high = middle
    return low - 1


def _clip(data: bytes, at: int, start: int, stop: int) -> Iterator[bytes]:
    low, high = max(start, at), min(stop, at + len(data))
    if low < high:
        yield data[low - at : high - at]
