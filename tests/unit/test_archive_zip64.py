"""A ZIP entry right after one of exactly 4 GiB − 1 bytes (0xFFFFFFFF, the ZIP64 marker itself)
carries its sizes in a ZIP64 field too: unzip 6.0 carries the size before over into the next
entry and otherwise reads that entry's ZIP64 offset as its size (tests/clients/
test_archive_readers.py shows unzip failing on it). Sparse files: no 4 GiB is written."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from app.archives.zip import ZipLayout
from tests.support.archives import members_of, write_archive

MARKER = 0xFFFFFFFF


def zip64_field(extra: bytes) -> tuple[int, ...]:
    """The values of an extra block's ZIP64 field (0x0001), () when it has none."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        if kind == 1:
            return struct.unpack_from(f"<{length // 8}Q", extra, at + 4)
        at += 4 + length
    return ()


def test_the_entry_after_one_of_4_gib_minus_1_has_zip64_sizes(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    with (root / "a-marker.bin").open("wb") as f:
        f.truncate(MARKER)
    (root / "b-after.txt").write_bytes(b"after\n")
    (root / "c-last.txt").write_bytes(b"last\n")
    paths = ["a-marker.bin", "b-after.txt", "c-last.txt"]
    layout = ZipLayout(members_of(root, paths))
    write_archive(layout, [root / p for p in paths], tmp_path / "tree.zip")
    with zipfile.ZipFile(tmp_path / "tree.zip") as opened:
        marker, after, last = opened.infolist()
        assert zip64_field(marker.extra) == (MARKER, MARKER)
        assert zip64_field(after.extra) == (6, 6, layout.starts[1])  # sizes as well as the offset
        assert zip64_field(last.extra) == (layout.starts[2],)  # and back to the offset only
        assert [i.file_size for i in (marker, after, last)] == [MARKER, 6, 5]
        assert (opened.read("b-after.txt"), opened.read("c-last.txt")) == (b"after\n", b"last\n")
