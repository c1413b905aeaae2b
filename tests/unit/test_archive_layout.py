"""The archive layouts (app/archives/layout.py): what they build is what Python's zipfile and
tarfile read back, any byte range is the same slice of the whole archive, and the ZIP64 and pax
cases (4 GiB entries and offsets, more than 65,535 entries, long and non-ASCII names) are
written where the formats need them."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from app.archives.layout import FileSpan, Layout, Member
from app.archives.tar import BLOCK, TarLayout
from app.archives.zip import ZipLayout, dos_time


def contents_of(index: int, size: int) -> bytes:
    return bytes((index * 7 + i) % 251 for i in range(size))


def members_of(files: Sequence[tuple[str, int, int]]) -> list[Member]:
    return [
        Member(path, size, mtime, zlib.crc32(contents_of(i, size)))
        for i, (path, size, mtime) in enumerate(files)
    ]


def render(layout: Layout, start: int = 0, stop: int | None = None) -> bytes:
    out = bytearray()
    for piece in layout.pieces(start, layout.length if stop is None else stop):
        if isinstance(piece, FileSpan):
            data = contents_of(piece.index, layout.members[piece.index].size)
            out += data[piece.offset : piece.offset + piece.length]
        else:
            out += piece
    return bytes(out)


_segment = st.text(
    alphabet=st.sampled_from(list("abcXYZ019 _-.#%'\"é日本ñ😀")), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
_path = st.lists(_segment, min_size=1, max_size=4).map("/".join)
_files = st.lists(
    st.tuples(_path, st.integers(0, 3000), st.integers(0, 2**33)), max_size=8, unique_by=lambda f: f[0]
)


@settings(max_examples=60, deadline=None)
@given(files=_files, data=st.data())
def test_a_zip_reads_back_whole_and_any_range_is_its_slice(
    files: list[tuple[str, int, int]], data: st.DataObject
) -> None:
    layout = ZipLayout(members_of(files))
    whole = render(layout)
    assert len(whole) == layout.length
    with zipfile.ZipFile(io.BytesIO(whole)) as archive:
        assert archive.testzip() is None
        assert [i.filename for i in archive.infolist()] == [f[0] for f in files]
        for i, (path, size, _) in enumerate(files):
            assert archive.read(path) == contents_of(i, size)
            assert archive.getinfo(path).flag_bits & 0x800  # the UTF-8 name flag
    start = data.draw(st.integers(0, layout.length))
    stop = data.draw(st.integers(start, layout.length))
    assert render(layout, start, stop) == whole[start:stop]


@settings(max_examples=60, deadline=None)
@given(files=_files, data=st.data())
def test_a_tar_reads_back_whole_and_any_range_is_its_slice(
    files: list[tuple[str, int, int]], data: st.DataObject
) -> None:
    layout = TarLayout(members_of(files))
    whole = render(layout)
    assert len(whole) == layout.length and layout.length % BLOCK == 0
    with tarfile.open(fileobj=io.BytesIO(whole)) as archive:
        found = archive.getmembers()
        assert [m.name for m in found] == [f[0] for f in files]
        for member, (i, (_, size, mtime)) in zip(found, enumerate(files), strict=True):
            assert (member.size, member.mtime, member.mode) == (size, mtime, 0o644)
            extracted = archive.extractfile(member)
            assert extracted is not None and extracted.read() == contents_of(i, size)
    start = data.draw(st.integers(0, layout.length))
    stop = data.draw(st.integers(start, layout.length))
    assert render(layout, start, stop) == whole[start:stop]


class Sparse(io.RawIOBase):
    """An archive read through its layout without materialising it: file bytes are zeros."""

    def __init__(self, layout: Layout) -> None:
        self.layout, self.at = layout, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.at = offset if whence == 0 else self.at + offset if whence == 1 else self.layout.length + offset
        return self.at

    def tell(self) -> int:
        return self.at

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = bytearray()
        for piece in self.layout.pieces(self.at, self.at + len(buffer)):
            out += b"\0" * piece.length if isinstance(piece, FileSpan) else piece
        buffer[: len(out)] = out
        self.at += len(out)
        return len(out)


def test_entries_and_offsets_past_4_gib_get_zip64_fields() -> None:
    big = 5 * 1024**3
    members = [
        Member("big.bin", big, 1_700_000_000, 0),
        Member("after/small.txt", 3, 1_700_000_000, zlib.crc32(b"\0\0\0")),
    ]
    layout = ZipLayout(members)
    with zipfile.ZipFile(Sparse(layout)) as archive:
        first, second = archive.infolist()
        assert (first.file_size, first.compress_size) == (big, big)
        assert second.header_offset > 2**32 and second.header_offset == layout.starts[1]
        assert archive.read("after/small.txt") == b"\0\0\0"


def test_more_than_65535_entries_get_the_zip64_end_records() -> None:
    count = 70_000
    members = [Member(f"d/{i:05}.txt", 0, 1_700_000_000, 0) for i in range(count)]
    layout = ZipLayout(members)
    whole = render(layout)
    assert b"PK\x06\x06" in whole[-200:]  # the ZIP64 end of central directory record
    with zipfile.ZipFile(io.BytesIO(whole)) as archive:
        names = archive.namelist()
    assert len(names) == count and names[-1] == "d/69999.txt"


def test_tar_members_over_8_gib_and_long_names_get_pax_records() -> None:
    big = 9 * 1024**3
    long_name = "/".join(["segment-" + "x" * 60] * 5) + "/file.bin"
    layout = TarLayout([Member("huge.bin", big, 1_700_000_000), Member(long_name, 1, 1_700_000_000)])
    assert (
        layout.length == 3 * BLOCK + big + 3 * BLOCK + BLOCK + 2 * BLOCK
    )  # pax+own, data, pax+own, data, end
    head = render_headers(layout, 0)
    assert b"size=9663676416\n" in head
    with tarfile.open(fileobj=Sparse(layout), mode="r:") as archive:
        found = archive.getmembers()
    assert [(m.name, m.size) for m in found] == [("huge.bin", big), (long_name, 1)]


def render_headers(layout: Layout, index: int) -> bytes:
    return layout.header(index, layout.starts[index])


def test_zip_dates_are_utc_and_clamped_to_what_dos_holds() -> None:
    assert dos_time(1_700_000_000) == ((22 << 11) | (13 << 5) | 10, ((2023 - 1980) << 9) | (11 << 5) | 14)
    assert dos_time(0) == dos_time(315532800)  # before 1980: 1980-01-01
    assert dos_time(2**40)[1] >> 9 == 2107 - 1980


@settings(max_examples=40, deadline=None)
@given(files=_files)
def test_a_zip_is_the_same_bytes_whether_its_crcs_were_known_or_computed_while_sending(
    files: list[tuple[str, int, int]],
) -> None:
    known = render(ZipLayout(members_of(files)))
    later = ZipLayout([Member(path, size, mtime) for path, size, mtime in files])
    assert later.length == len(known) and later.complete == all(f[1] == 0 for f in files)
    out = bytearray()
    for piece in later.pieces(0, later.length):
        if isinstance(piece, FileSpan):  # the sender computes the CRC-32 of what it sends
            data = contents_of(piece.index, later.members[piece.index].size)
            later.set_crc32(piece.index, zlib.crc32(data))
            out += data
        else:
            out += piece
    assert bytes(out) == known and later.complete


def test_a_zip_descriptor_cannot_be_built_before_its_crc_is_known() -> None:
    layout = ZipLayout([Member("a.txt", 3, 1_700_000_000)])
    pieces = layout.pieces(0, layout.length)
    assert isinstance(next(pieces), bytes) and isinstance(next(pieces), FileSpan)
    try:
        next(pieces)
    except LookupError as exc:
        assert "a.txt" in str(exc)
    else:
        raise AssertionError("a descriptor was built without its CRC-32")


def test_zip_entries_carry_data_descriptors_with_8_byte_sizes_past_4_gib() -> None:
    big = 5 * 1024**3
    layout = ZipLayout([Member("big.bin", big, 1_700_000_000, 7), Member("s", 1, 1_700_000_000, 9)])
    assert layout.padding(0) == struct.pack("<IIQQ", 0x08074B50, 7, big, big)
    assert layout.padding(1) == struct.pack("<IIII", 0x08074B50, 9, 1, 1)
    head = render_headers(layout, 0)
    assert struct.unpack_from("<H", head, 6)[0] & 0x0808 == 0x0808  # UTF-8 names, descriptor
