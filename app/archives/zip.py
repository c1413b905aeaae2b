"""A stored ZIP as a `Layout` (layout.py): every entry "stored" (method 0) and followed by a data
descriptor with its CRC-32 and sizes (general-purpose flag bit 3), the UTF-8 name flag (bit 11),
an extended-timestamp field with the exact mtime beside the DOS one; ZIP64 fields for an entry whose
size or offset reaches 4 GiB, and the ZIP64 end records when the directory's entries, size or
offset do. Read back by Python's zipfile and unzip (tests/unit/test_archive_layout.py), bsdtar,
7z (tests/clients/test_archive_readers.py).

Why data descriptors although the sizes are known: the CRC-32s then appear only after each file's
bytes (its descriptor) and in the central directory at the end, never before a file's bytes. So
the archive's bytes depend only on the files, whether Ferry knew each CRC-32 beforehand (from the
index: then any range can be sent) or computes it from the bytes it is sending (a whole archive of
files not hashed yet) — a download resumed later is the same archive, never a splice of two
encodings. A member's CRC-32 may be None until `set_crc32` gives it; the descriptor and the
directory are built only when they are sent.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator, Sequence

from app.archives.layout import Layout, Member

_U32 = 0xFFFFFFFF
_U16 = 0xFFFF

_FLAGS = 0x0800 | 0x0008  # UTF-8 names; CRC-32 and sizes in a data descriptor after the bytes
_UNIX = 3 << 8
_FILE_MODE = 0o100644 << 16
_LOCAL = 30
_CENTRAL = 46
_TIMESTAMP = 9  # the 0x5455 field with the mtime only


def dos_time(mtime: int) -> tuple[int, int]:
    """(time, date) in MS-DOS format, UTC, clamped to the years it can hold (1980–2107)."""
    t = time.gmtime(min(max(mtime, 315532800), 4354819198))  # 1980-01-01 … 2107-12-31
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((t.tm_year - 1980) << 9) | (
        t.tm_mon << 5
    ) | t.tm_mday


def _has_timestamp(mtime: int) -> bool:
    return 0 <= mtime <= 0x7FFFFFFF


def _timestamp_field(mtime: int) -> bytes:
    """Info-ZIP's extended timestamp (0x5455): the exact mtime, where 32 bits hold it."""
    return struct.pack("<HHBI", 0x5455, 5, 1, mtime) if _has_timestamp(mtime) else b""


class ZipLayout(Layout):
    def __init__(self, members: Sequence[Member]) -> None:
        self._names = [m.path.encode("utf-8") for m in members]
        self.crc32s: list[int | None] = [0 if m.size == 0 else m.crc32 for m in members]
        self.directory_start = self.directory_size = 0  # measured by trailer_length
        super().__init__(members)

    @property
    def complete(self) -> bool:
        """Whether every CRC-32 is known (so any range of the archive can be built)."""
        return all(c is not None for c in self.crc32s)

    def set_crc32(self, index: int, crc32: int) -> None:
        """Member `index`'s CRC-32, computed from the bytes being sent."""
        self.crc32s[index] = crc32

    def _crc(self, index: int) -> int:
        crc = self.crc32s[index]
        if crc is None:
            raise LookupError(f"the CRC-32 of {self.members[index].path!r} is not known")
        return crc

    def _zip64_sizes(self, index: int) -> bool:
        """Whether entry `index` carries its sizes in a ZIP64 field: from 4 GiB − 1 bytes, and
        right after an entry of exactly 4 GiB − 1 bytes (0xFFFFFFFF, the ZIP64 marker itself),
        whose size unzip 6.0 carries over as if it were the next entry's 32-bit field, reading
        that entry's ZIP64 offset as its size (the archive then fails its tests)."""
        return self.members[index].size >= _U32 or (index > 0 and self.members[index - 1].size == _U32)

    def header_length(self, index: int, offset: int) -> int:
        m = self.members[index]
        return (
            _LOCAL
            + len(self._names[index])
            + (20 if self._zip64_sizes(index) else 0)
            + (_TIMESTAMP if _has_timestamp(m.mtime) else 0)
        )

    def header(self, index: int, offset: int) -> bytes:
        m, name = self.members[index], self._names[index]
        big = self._zip64_sizes(index)
        # A ZIP64 field (zeros, as the descriptor holds the sizes) tells readers that the
        # descriptor's sizes are 8 bytes each.
        extra = struct.pack("<HHQQ", 1, 16, 0, 0) if big else b""
        extra += _timestamp_field(m.mtime)
        clock, date = dos_time(m.mtime)
        size = _U32 if big else 0
        fields = (0x04034B50, 45 if big else 20, _FLAGS, 0, clock, date, 0, size, size, len(name), len(extra))
        return struct.pack("<IHHHHHIIIHH", *fields) + name + extra

    def padding_length(self, index: int) -> int:
        return 24 if self._zip64_sizes(index) else 16

    def padding(self, index: int) -> bytes:
        """The data descriptor: signature, CRC-32 and the two (equal) sizes."""
        size, crc = self.members[index].size, self._crc(index)
        if self._zip64_sizes(index):
            return struct.pack("<IIQQ", 0x08074B50, crc, size, size)
        return struct.pack("<IIII", 0x08074B50, crc, size, size)

    def _zip64_fields(self, index: int) -> list[int]:
        size, offset = self.members[index].size, self.starts[index]
        fields = [size, size] if self._zip64_sizes(index) else []
        return fields + [offset] if offset >= _U32 else fields

    def _central_length(self, index: int) -> int:
        n = len(self._zip64_fields(index))
        extra = (4 + 8 * n if n else 0) + (_TIMESTAMP if _has_timestamp(self.members[index].mtime) else 0)
        return _CENTRAL + len(self._names[index]) + extra

    def _central(self, index: int) -> bytes:
        m, name, offset = self.members[index], self._names[index], self.starts[index]
        zip64 = self._zip64_fields(index)
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
                _FLAGS,
                0,
                clock,
                date,
                self._crc(index),
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
        directory = sum(self._central_length(i) for i in range(len(self.members)))
        self.directory_start, self.directory_size = self.trailer_start, directory
        return directory + (56 + 20 if self._needs_zip64_end() else 0) + 22

    def trailer_parts(self) -> Iterator[bytes]:
        """The central directory, a batch of records at a time, then the end records."""
        batch: list[bytes] = []
        for i in range(len(self.members)):
            batch.append(self._central(i))
            if len(batch) == 256:
                yield b"".join(batch)
                batch = []
        yield b"".join(batch) + self._end()

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
