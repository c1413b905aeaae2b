"""A stored ZIP as a `Layout` (layout.py): every entry "stored" (method 0), CRC-32 and sizes in the
local header (no data descriptor: the CRC is known beforehand), the UTF-8 name flag (bit 11), an
extended-timestamp field with the exact mtime beside the DOS one; ZIP64 fields for an entry whose
size or offset reaches 4 GiB, and the ZIP64 end records when the directory's entries, size or
offset do. Read back by Python's zipfile and unzip (tests/unit/test_archive_layout.py).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

from app.archives.layout import Layout, Member

_U32 = 0xFFFFFFFF
_U16 = 0xFFFF

_UTF8 = 0x0800
_UNIX = 3 << 8
_FILE_MODE = 0o100644 << 16


def dos_time(mtime: int) -> tuple[int, int]:
    """(time, date) in MS-DOS format, UTC, clamped to the years it can hold (1980–2107)."""
    t = time.gmtime(min(max(mtime, 315532800), 4354819198))  # 1980-01-01 … 2107-12-31
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((t.tm_year - 1980) << 9) | (
        t.tm_mon << 5
    ) | t.tm_mday


def _timestamp_field(mtime: int) -> bytes:
    """Info-ZIP's extended timestamp (0x5455): the exact mtime, where 32 bits hold it."""
    if not 0 <= mtime <= 0x7FFFFFFF:
        return b""
    return struct.pack("<HHBI", 0x5455, 5, 1, mtime)


class ZipLayout(Layout):
    def __init__(self, members: Sequence[Member]) -> None:
        if any(m.crc32 is None for m in members):
            raise ValueError("every member of a ZIP needs its CRC-32")
        self._names = [m.path.encode("utf-8") for m in members]
        self.directory_start = self.directory_size = 0  # measured by trailer_length
        super().__init__(members)

    def _zip64_sizes(self, index: int) -> bool:
        """Whether entry `index` carries its sizes in a ZIP64 field: from 4 GiB − 1 bytes, and
        right after an entry of exactly 4 GiB − 1 bytes (0xFFFFFFFF, the ZIP64 marker itself),
        whose size unzip 6.0 carries over as if it were the next entry's 32-bit field, reading
        that entry's ZIP64 offset as its size (the archive then fails its tests)."""
        return self.members[index].size >= _U32 or (index > 0 and self.members[index - 1].size == _U32)

    def header(self, index: int, offset: int) -> bytes:
        m, name = self.members[index], self._names[index]
        big = self._zip64_sizes(index)
        extra = struct.pack("<HHQQ", 1, 16, m.size, m.size) if big else b""
        extra += _timestamp_field(m.mtime)
        clock, date = dos_time(m.mtime)
        size = _U32 if big else m.size
        return (
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                45 if big else 20,
                _UTF8,
                0,
                clock,
                date,
                m.crc32 or 0,
                size,
                size,
                len(name),
                len(extra),
            )
            + name
            + extra
        )

    def _central(self, index: int) -> bytes:
        m, name, offset = self.members[index], self._names[index], self.starts[index]
        zip64: list[int] = []
        if self._zip64_sizes(index):
            zip64 += [m.size, m.size]
        if offset >= _U32:
            zip64.append(offset)
        extra = struct.pack(f"<HH{len(zip64)}Q", 1, 8 * len(zip64), *zip64) if zip64 else b""
        extra += _timestamp_field(m.mtime)
        clock, date = dos_time(m.mtime)
        size = _U32 if self._zip64_sizes(index) else m.size
        version = 45 if zip64 else 20
        return (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                _UNIX | version,
                version,
                _UTF8,
                0,
                clock,
                date,
                m.crc32 or 0,
                size,
                size,
                len(name),
                len(extra),
                0,
                0,
                0,
                _FILE_MODE,
                _U32 if offset >= _U32 else offset,
            )
            + name
            + extra
        )

    def _needs_zip64_end(self) -> bool:
        return len(self.members) >= _U16 or self.directory_start >= _U32 or self.directory_size >= _U32

    def trailer_length(self) -> int:
        # Called by Layout.__init__ before the directory is measured: measure it here.
        directory = sum(len(self._central(i)) for i in range(len(self.members)))
        self.directory_start, self.directory_size = self.trailer_start, directory
        return directory + (56 + 20 if self._needs_zip64_end() else 0) + 22

    def trailer(self) -> bytes:
        directory = b"".join(self._central(i) for i in range(len(self.members)))
        return directory + self._end()

    def _end(self) -> bytes:
        count, start, size = len(self.members), self.directory_start, self.directory_size
        out = b""
        if self._needs_zip64_end():
            end64 = start + size
            out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, _UNIX | 45, 45, 0, 0, count, count, size, start)
            out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
        return out + struct.pack(
            "<IHHHHIIH",
            0x06054B50,
            0,
            0,
            min(count, _U16),
            min(count, _U16),
            min(size, _U32),
            min(start, _U32),
            0,
        )
