"""A POSIX pax tar as a `Layout` (layout.py): ustar headers (mode 0644, uid/gid 0), and a pax
extended header before a member whose path is not plain ASCII or does not fit ustar's name and
prefix fields, whose size reaches 8 GiB, or whose mtime does not fit; two zero blocks at the end.
Read back by Python's tarfile and GNU tar (tests/unit/test_archive_layout.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from app.archives.layout import Layout

BLOCK = 512

_MAX_OCTAL_11 = 8**11 - 1  # the most a 12-byte size or mtime field holds


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _ustar_name(path: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) fields for a path, or None when ustar cannot hold it."""
    if len(path) <= 100:
        return b"", path
    cut = path.rfind(b"/", 0, 156)
    while cut > 0:
        if len(path) - cut - 1 <= 100:
            return path[:cut], path[cut + 1 :]
        cut = path.rfind(b"/", 0, cut)
    return None


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


_MODE_OWNER = _octal(0o644, 8) + _octal(0, 8) + _octal(0, 8)
_MAGIC = b"ustar\x0000"
# Every header's checksum counts these bytes, and the checksum field itself as eight spaces.
_FIXED_SUM = sum(_MODE_OWNER) + sum(_MAGIC) + 8 * ord(" ")


def _block(prefix: bytes, name: bytes, size: int, mtime: int, kind: bytes) -> bytes:
    """One ustar header block (built from its fields: no 512-byte pass per header)."""
    size_field, mtime_field = _octal(size, 12), _octal(mtime, 12)
    checksum = _FIXED_SUM + sum(name) + sum(prefix) + sum(size_field) + sum(mtime_field) + kind[0]
    return b"".join(
        (
            name.ljust(100, b"\0"),
            _MODE_OWNER,
            size_field,
            mtime_field,
            b"%06o\0 " % checksum,
            kind,
            bytes(100),  # linkname
            _MAGIC,
            bytes(80),  # uname, gname, devmajor, devminor
            prefix.ljust(155, b"\0"),
            bytes(12),
        )
    )


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


class TarLayout(Layout):
    def _records(self, index: int) -> tuple[bytes, tuple[bytes, bytes] | None]:
        """A member's pax records (b"" when ustar holds it) and its ustar name fields."""
        m = self.members[index]
        path = m.path.encode("utf-8")
        fields = _ustar_name(path) if path.isascii() else None
        records = b""
        if fields is None:
            records += _pax_record("path", m.path)
        if m.size > _MAX_OCTAL_11:
            records += _pax_record("size", str(m.size))
        if not 0 <= m.mtime <= _MAX_OCTAL_11:
            records += _pax_record("mtime", str(m.mtime))
        return records, fields

    def header_length(self, index: int, offset: int) -> int:
        records, _ = self._records(index)
        return BLOCK + (BLOCK + len(records) + (-len(records) % BLOCK) if records else 0)

    def header(self, index: int, offset: int) -> bytes:
        m = self.members[index]
        path = m.path.encode("utf-8")
        records, fields = self._records(index)
        if fields is None:
            short = path[-100:].split(b"/")[-1] if path.isascii() else b"member"
            fields = (b"", short or b"member")
        prefix, name = fields
        size = m.size if m.size <= _MAX_OCTAL_11 else 0
        mtime = min(max(m.mtime, 0), _MAX_OCTAL_11)
        own = _block(prefix, name, size, mtime, b"0")
        if not records:
            return own
        pax_name = b"PaxHeaders/" + name[-89:]
        return _block(b"", pax_name, len(records), mtime, b"x") + _padded(records) + own

    def padding(self, index: int) -> bytes:
        return bytes(-self.members[index].size % BLOCK)

    def padding_length(self, index: int) -> int:
        return -self.members[index].size % BLOCK

    def trailer_length(self) -> int:
        return 2 * BLOCK

    def trailer_parts(self) -> Iterator[bytes]:
        yield b"\0" * (2 * BLOCK)
