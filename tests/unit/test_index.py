"""Index (app/storage/index.py) through its public methods, on a real tree and database: what a
scan puts in, how listings page and sort, what search finds, how changes on disk and uploads'
bookkeeping are kept."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.storage.index import Index
from app.storage.paths import PathPolicy


def make_tree(root: Path) -> None:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "Report.TXT").write_bytes(b"r" * 3)
    (root / "docs" / "deep" / "report-2024.csv").write_bytes(b"c" * 10)
    (root / "a.bin").write_bytes(b"a")
    (root / "b.bin").write_bytes(b"bb")
    (root / ".hidden-report").write_bytes(b"h")
    (root / "link-out").symlink_to(root.parent / "outside.txt")
    (root.parent / "outside.txt").write_bytes(b"outside")
    os.mkfifo(root / "fifo")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    make_tree(path)
    return path


@pytest.fixture
def index(tmp_path: Path, root: Path) -> Iterator[Index]:
    idx = Index(tmp_path / "index.sqlite3", PathPolicy(root=root))
    idx.scan()
    yield idx
    idx.close()


def names(index: Index, directory: str, **kwargs: object) -> list[str]:
    page = index.list_dir(directory, limit=100, **kwargs)  # type: ignore[arg-type]
    assert page.next_cursor is None
    return [e.name for e in page.entries]


def test_a_scan_indexes_what_the_gate_serves_and_nothing_else(index: Index, root: Path) -> None:
    assert names(index, "") == ["a.bin", "b.bin", "docs"]  # no hidden name, link out, FIFO
    assert names(index, "docs") == ["Report.TXT", "deep"]
    entry = index.get("docs/deep/report-2024.csv")
    assert entry is not None and not entry.is_dir and entry.size == 10
    assert entry.path == "docs/deep/report-2024.csv" and entry.name == "report-2024.csv"
    st = (root / "docs" / "deep" / "report-2024.csv").stat()
    assert (entry.mtime_ns, entry.ino) == (st.st_mtime_ns, st.st_ino)
    docs = index.get("docs")
    assert docs is not None and docs.is_dir
    assert index.get(".hidden-report") is None and index.get("link-out") is None
    assert index.count() == 6


def test_listings_page_by_cursor_in_order(index: Index, root: Path) -> None:
    for i in range(7):
        (root / f"n{i}.txt").write_bytes(b"x" * (7 - i))
    index.scan()
    seen: list[str] = []
    cursor = None
    while True:
        page = index.list_dir("", limit=3, cursor=cursor)
        seen += [e.name for e in page.entries]
        cursor = page.next_cursor
        if cursor is None:
            break
        assert len(page.entries) == 3
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 10
    by_size = names(index, "", sort="size", descending=True)
    sizes = [index.get(n).size for n in by_size]  # type: ignore[union-attr]
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("report", {"docs/Report.TXT", "docs/deep/report-2024.csv"}),  # a trigram match
        ("RE", {"docs/Report.TXT", "docs/deep/report-2024.csv"}),  # shorter than a trigram
        ("2024.c", {"docs/deep/report-2024.csv"}),
        ("hidden", set()),
        ("nothing-like-it", set()),
    ],
)
def test_search_finds_parts_of_names_ignoring_case(index: Index, query: str, found: set[str]) -> None:
    page = index.search(query, limit=100)
    assert {e.path for e in page.entries} == found


def test_changes_on_disk_reach_the_index(index: Index, root: Path) -> None:
    (root / "a.bin").unlink()
    (root / "docs" / "new.txt").write_bytes(b"new")
    index.sync_path("a.bin")
    index.sync_path("docs/new.txt")
    assert index.get("a.bin") is None and index.get("docs/new.txt") is not None
    (root / "b.bin").write_bytes(b"grown bigger")
    assert index.changed("")  # a.bin's removal moved the folder's mtime on
    index.refresh_if_changed("")  # what a listing has the index writer do first
    assert not index.changed("")
    assert names(index, "") == ["b.bin", "docs"]
    assert index.get("b.bin").size == len(b"grown bigger")  # type: ignore[union-attr]
    index.remove("docs")
    assert index.get("docs/deep/report-2024.csv") is None and index.get("docs") is None


def test_a_restart_reads_only_changed_directories(tmp_path: Path, root: Path, index: Index) -> None:
    again = Index(tmp_path / "index.sqlite3", PathPolicy(root=root))
    try:
        unchanged = again.scan()
        assert (unchanged.directories, unchanged.rescanned) == (3, 0)
        (root / "docs" / "deep" / "more.txt").write_bytes(b"m")
        changed = again.scan()
        assert (changed.directories, changed.rescanned) == (3, 1)
        assert again.get("docs/deep/more.txt") is not None
    finally:
        again.close()


def test_uploads_are_recorded_until_they_end_and_orphans_are_told(index: Index) -> None:
    index.begin_upload("docs/.ferry-upload-0123456789abcdef.part")
    assert index.orphaned_uploads() == []  # this process is alive
    index.end_upload("docs/.ferry-upload-0123456789abcdef.part")
    # An upload begun by a process that has exited since is an orphan.
    code = (
        "import sys; from pathlib import Path; from app.storage.index import Index; "
        "from app.storage.paths import PathPolicy; "
        "index = Index(Path(sys.argv[1]), PathPolicy(root=Path(sys.argv[2]))); "
        "index.begin_upload('x/.ferry-upload-dead.part')"
    )
    subprocess.run([sys.executable, "-c", code, str(index.db_path), str(index.policy.root)], check=True)
    assert index.orphaned_uploads() == ["x/.ferry-upload-dead.part"]


def test_a_temporary_upload_found_by_a_scan_is_listed_as_found(index: Index, root: Path) -> None:
    (root / "docs" / ".ferry-upload-0123456789abcdef.part").write_bytes(b"left behind")
    index.scan()
    assert index.found_uploads() == ["docs/.ferry-upload-0123456789abcdef.part"]
    assert ".ferry-upload-0123456789abcdef.part" not in names(index, "docs")
