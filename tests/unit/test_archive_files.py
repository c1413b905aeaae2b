"""tests/support/archives.py, which writes archives to disk for the real readers: the CRC-32 of a
sparse file computed without reading its holes is zlib's, and the archive written is the layout's
bytes, sparse where its members are."""

from __future__ import annotations

import os
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.archives.tar import TarLayout
from app.archives.zip import ZipLayout
from tests.support.archives import crc32_of, crc32_zeros, members_of, write_archive

MiB = 1024**2


@given(crc=st.integers(0, 2**32 - 1), count=st.integers(0, 5000))
def test_crc32_of_appended_zeros_is_zlibs(crc: int, count: int) -> None:
    assert crc32_zeros(crc, count) == zlib.crc32(bytes(count), crc)


def sparse(path: Path, size: int, marks: dict[int, bytes]) -> bytes:
    """A sparse file with `marks` written into it; returns its bytes."""
    with path.open("wb") as f:
        f.truncate(size)
        for at, data in marks.items():
            f.seek(at)
            f.write(data)
    return path.read_bytes()


def test_crc32_of_a_sparse_file_is_zlibs_over_its_bytes(tmp_path_factory: pytest.TempPathFactory) -> None:
    @settings(max_examples=20, deadline=None)
    @given(
        size=st.integers(0, 3 * MiB),
        marks=st.dictionaries(st.integers(0, 3 * MiB), st.binary(min_size=1, max_size=9), max_size=4),
    )
    def check(size: int, marks: dict[int, bytes]) -> None:
        path = tmp_path_factory.mktemp("sparse") / "file"
        data = sparse(path, size, {at: mark for at, mark in marks.items() if at + len(mark) <= size})
        assert crc32_of(path) == zlib.crc32(data)

    check()


def test_archives_are_written_whole_and_sparse(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    contents = {
        "a.txt": b"first\n",
        "big.bin": sparse(
            root / "big.bin", 64 * MiB + 3, {0: b"start", 33 * MiB: b"mid", 64 * MiB - 2: b"end"}
        ),
        "z.txt": b"last\n",
    }
    (root / "a.txt").write_bytes(contents["a.txt"])
    (root / "z.txt").write_bytes(contents["z.txt"])
    paths = list(contents)
    sources = [root / p for p in paths]
    zipped, tarred = tmp_path / "tree.zip", tmp_path / "tree.tar"
    write_archive(ZipLayout(members_of(root, paths)), sources, zipped)
    write_archive(TarLayout(members_of(root, paths, crc32=False)), sources, tarred)
    for target in (zipped, tarred):
        assert target.stat().st_blocks * 512 < 4 * MiB  # the zeros were skipped, not written
    with zipfile.ZipFile(zipped) as opened:
        assert opened.testzip() is None
        assert {p: opened.read(p) for p in paths} == contents
    with tarfile.open(tarred) as opened:
        assert {m.name: _read(opened, m) for m in opened.getmembers()} == contents


def _read(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    extracted = archive.extractfile(member)
    assert extracted is not None
    return extracted.read()


def test_a_file_with_no_holes_is_copied_whole(tmp_path: Path) -> None:
    data = os.urandom(MiB + 1)
    (tmp_path / "f").write_bytes(data)
    assert crc32_of(tmp_path / "f") == zlib.crc32(data)
