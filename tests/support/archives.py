"""Folder archives written to disk from real files, for the archive readers (unzip, zipfile,
bsdtar, 7z, GNU tar) to open: a `Layout`'s header bytes from `pieces()`, each `FileSpan` from the
member's own file.

Sparse in, sparse out: the holes of a sparse source (SEEK_HOLE) and all-zero blocks are skipped
with a seek instead of written, and a hole's CRC-32 is computed arithmetically, so a 5 GiB
member costs neither disk nor a 5 GiB read.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from app.archives.layout import FileSpan, Layout, Member

BLOCK = 1024 * 1024
_ZEROS = bytes(BLOCK)

# CRC-32 arithmetic (zlib's crc32_combine): polynomials mod the reflected CRC-32 polynomial.
_POLY = 0xEDB88320


def _multiply(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (bit-reflected, x^0 in the top bit)."""
    product, bit = 0, 1 << 31
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _x_to_the(power: int) -> int:
    """x^power modulo the polynomial, by squaring."""
    result, square = 1 << 31, 1 << 30  # x^0, x^1
    while power:
        if power & 1:
            result = _multiply(square, result)
        square = _multiply(square, square)
        power >>= 1
    return result


def crc32_zeros(crc: int, count: int) -> int:
    """`zlib.crc32(bytes(count), crc)` without the bytes: appending n zeros multiplies the CRC's
    register by x^(8n)."""
    return _multiply(_x_to_the(8 * count), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def data_extents(fd: int, start: int, stop: int) -> Iterator[tuple[int, int]]:
    """The [begin, end) stretches of [start, stop) that may hold data; the rest are holes."""
    at = start
    while at < stop:
        try:
            begin = os.lseek(fd, at, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole from here to the end of the file
            return
        if begin >= stop:
            return
        end = min(os.lseek(fd, begin, os.SEEK_HOLE), stop)
        yield begin, end
        at = end


def nonzero_blocks(fd: int, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) for the blocks of [start, stop) of a file that hold a non-zero byte:
    every other byte of it is zero (a hole, or zeros written out)."""
    for begin, end in data_extents(fd, start, stop):
        while begin < end:
            data = os.pread(fd, min(BLOCK, end - begin), begin)
            if not data:
                raise OSError(f"file shorter than expected at {begin}")
            if data != _ZEROS[: len(data)]:
                yield begin, data
            begin += len(data)


def crc32_of(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        crc, at = 0, 0
        for offset, data in nonzero_blocks(fd, 0, os.fstat(fd).st_size):
            crc = zlib.crc32(data, crc32_zeros(crc, offset - at))
            at = offset + len(data)
        return crc32_zeros(crc, os.fstat(fd).st_size - at)
    finally:
        os.close(fd)


def members_of(root: Path, paths: Sequence[str], *, crc32: bool = True) -> list[Member]:
    """Members for files below `root` ('/'-separated relative paths), with CRC-32s for ZIP."""
    members = []
    for path in paths:
        stat = (root / path).stat()
        crc = crc32_of(root / path) if crc32 else None
        members.append(Member(path, stat.st_size, int(stat.st_mtime), crc))
    return members


def write_archive(layout: Layout, sources: Sequence[Path], target: Path) -> None:
    """The whole archive into `target`, member i's bytes from `sources[i]`; sparse where they
    are zeros."""
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        at = 0
        pending = bytearray()

        def flush() -> None:
            nonlocal at
            os.pwrite(out, pending, at)
            at += len(pending)
            pending.clear()

        for piece in layout.pieces(0, layout.length):
            if isinstance(piece, FileSpan):
                flush()
                _copy(sources[piece.index], piece, out, at)
                at += piece.length
            else:
                pending += piece
                if len(pending) >= BLOCK:
                    flush()
        flush()
        os.ftruncate(out, layout.length)  # a hole at the end is still part of the archive
    finally:
        os.close(out)


def _copy(source: Path, span: FileSpan, out: int, at: int) -> None:
    fd = os.open(source, os.O_RDONLY)
    try:
        for offset, data in nonzero_blocks(fd, span.offset, span.offset + span.length):
            os.pwrite(out, data, at + offset - span.offset)
    finally:
        os.close(fd)
