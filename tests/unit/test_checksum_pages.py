"""SHA256SUMS pages (no server): walking a directory a page at a time yields the same files, in the
same order, as one query for all, whatever the page size, for names that sort next to the
directory's own (`a-b`, `a.b`, `a0` beside `a/`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from app.storage.index import Index
from app.storage.paths import PathPolicy
from app.storage.values import Entry, FileDigest

NAMES = ("a", "a-b", "a.b", "a0", "a b", "ab", "é", "z", "数据")


@pytest.fixture
def index(tmp_path: Path) -> Index:
    root = tmp_path / "root"
    for top in NAMES:
        for sub in ("", "a", "a-b", "a/a", "x y"):
            folder = root / top / sub
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("f", "f-1", "f.1", "é.txt", "0"):
                (folder / name).write_bytes(f"{top}/{sub}/{name}".encode())
    (root / "top.txt").write_bytes(b"")
    index = Index(tmp_path / "index.sqlite3", PathPolicy(root=root.resolve()))
    index.scan()
    return index


def _walk(root: Path, directory: str, recursive: bool) -> list[str]:
    """The files under `directory` by (parent, name), as the index orders them, from the disk."""
    base = root / directory if directory else root
    found = []
    for folder, _, files in os.walk(base):
        parent = os.path.relpath(folder, root)
        parent = "" if parent == "." else parent
        if recursive or folder == str(base):
            found += [(parent, name) for name in files]
    return [f"{p}/{n}" if p else n for p, n in sorted(found)]


def _pages(index: Index, directory: str, recursive: bool, size: int, **flags: bool) -> list[Entry]:
    entries: list[Entry] = []
    after = ("", "")
    while page := index.files_with_digests(directory, recursive=recursive, limit=size, after=after, **flags):
        assert len(page) <= size
        entries += page
        parent, _, name = page[-1].path.rpartition("/")
        after = (parent, name)
    return entries


@pytest.mark.parametrize("recursive", [False, True])
@pytest.mark.parametrize("directory", ["", "a", "a/a", "a-b", "数据/x y"])
def test_pages_equal_one_query_and_the_disk(index: Index, directory: str, recursive: bool) -> None:
    whole = index.files_with_digests(directory, recursive=recursive, limit=10**6)
    assert [e.path for e in whole] == _walk(index.policy.root, directory, recursive)
    for size in (1, 2, 3, 7, 1000):
        assert [e.path for e in _pages(index, directory, recursive, size)] == [e.path for e in whole]


def test_missing_only_pages_skip_known_and_empty_files(index: Index) -> None:
    before = _pages(index, "a", True, 4, missing_only=True)
    assert before and all(e.sha256 is None and e.size > 0 for e in before)
    known = before[0]
    data = (index.policy.root / known.path).read_bytes()
    index.put_digest(
        (known.dev, known.ino, known.size, known.mtime_ns), FileDigest(hashlib.sha256(data).digest())
    )
    after = _pages(index, "a", True, 4, missing_only=True)
    assert [e.path for e in after] == [e.path for e in before[1:]]
    files, missing, missing_bytes = index.digest_coverage("a", recursive=True, limit=10**6)
    assert (files, missing, missing_bytes) == (len(before), len(after), sum(e.size for e in after))
    assert index.digest_coverage("", recursive=False, limit=10**6) == (1, 0, 0)  # top.txt is empty
