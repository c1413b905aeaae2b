"""The storage index (issue 4; CONTRACT.md "Listings and the index") against a real `ferry serve`:

- changes made by another process (files and whole trees created, moved, deleted) reach listings and
  search without a restart, through inotify and through the periodic rescan alone (the tests wait up
  to PATIENCE seconds: a loaded machine delays the watcher, and a missed change waits for the next
  rescan, 300 s away, so a lost event still fails);
- downloads never depend on the index;
- a restart reuses the index (the start-up scan reads only changed directories), and a corrupt index
  is rebuilt;
- --show-hidden on a server of its own.

Listings, search and pagination over a tree nobody changes are tests/integration/test_index_listings.py's
(in-process); its helpers compute expectations from the disk. Tests here get their own tree and server,
each in its own working directory, so no two servers ever share an index file.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PATIENCE, FerryServer
from tests.integration.test_index_listings import (
    api_path,
    build_index_tree,
    check_entries,
    expected_search,
    files_dir,
    get_json,
    listing_names,
    search_paths,
    visible,
    walk_listing,
)
from tests.support.servers import launcher

pytestmark = pytest.mark.clients

SCAN_LINE = re.compile(r"index scan: (\d+) directories, (\d+) read from disk, (\d+\.\d+)s")
POLL = 0.1


def wait_for_scans(
    server: FerryServer, count: int = 1, timeout: float = PATIENCE
) -> list[tuple[int, int, float]]:
    """The `index scan: ...` lines of a server's log, once at least `count` are there."""
    deadline = time.monotonic() + timeout
    while True:
        found = [(int(a), int(b), float(c)) for a, b, c in SCAN_LINE.findall(server.log.read_text())]
        if len(found) >= count:
            return found
        assert server.process.poll() is None, f"ferry serve exited: {server.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no index scan logged: {server.log.read_text()[-3000:]}"
        time.sleep(0.05)


Probe = Callable[[], str | None]


def eventually(probe: Probe, what: str, timeout: float = PATIENCE) -> float:
    """Poll every 0.1 s until `probe` has no complaint; fail with its last complaint after `timeout`."""
    began = time.monotonic()
    while True:
        complaint = probe()
        elapsed = time.monotonic() - began
        if complaint is None:
            return elapsed
        if elapsed > timeout:
            pytest.fail(f"{what}: still wrong after {timeout:.0f}s: {complaint}")
        time.sleep(POLL)


def state_is(
    client: httpx.Client,
    server: FerryServer,
    listings: dict[str, set[str] | None],
    searches: dict[str, set[str]],
    *,
    search_first: bool = False,
) -> Probe:
    """A probe: these directories list exactly these names (None: 404), these queries find exactly
    these paths. With `search_first`, no listing is asked for until the searches are right (a
    listing refreshes the directories it reads, so it can race with the watcher)."""

    def listed() -> str | None:
        for rel, want in listings.items():
            got = listing_names(client, server, rel)
            if got != want:
                return f"listing {rel!r} shows {got}, the disk has {want}"
        return None

    def searched() -> str | None:
        for q, paths in searches.items():
            found = search_paths(client, server, q)
            if found != paths:
                return f"search {q!r} finds {found}, the disk has {paths}"
        return None

    def probe() -> str | None:
        first, then = (searched, listed) if search_first else (listed, searched)
        return first() or then()

    return probe


def disk_names(root: Path, rel: str) -> set[str] | None:
    return set(visible(root, rel)) if (root / rel).is_dir() else None


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., FerryServer]]:
    """launch(root, *flags): a server of this test's own, in a fresh working directory, returned
    once its start-up scan is logged; stopped at the end of the test."""
    yield from launcher(tmp_path, wait_for_scans)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15, follow_redirects=False) as c:
        yield c


def test_show_hidden_lists_hidden_names_but_never_escaping_links(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client
) -> None:
    """--show-hidden, on a server of its own (what it finds wrong must not leak into other tests)."""
    root = build_index_tree(tmp_path)
    server = launch(root, "--show-hidden")
    names = [e["name"] for e in walk_listing(client, server, "")]
    assert names == sorted(visible(root, "", show_hidden=True))
    assert {".hidden", ".git", ".report-secret", ".cache", "link-to-hidden"} <= set(names)
    assert not set(names) & {"link-outside.txt", "dir-outside"}
    assert ".env" in {e["name"] for e in walk_listing(client, server, "sub")}

    # A hidden name directly under ROOT keeps its leading dot in the entry, path and url.
    entry = get_json(client, server.url + api_path(".hidden"))
    assert (entry["name"], entry["path"], entry["url"]) == (".hidden", ".hidden", "/files/.hidden")
    for rel in [".cache", ".git"]:
        for url, params in [(api_path(rel), {}), (files_dir(rel), {"format": "json"})]:
            page = get_json(client, server.url + url, **params)
            assert page["path"] == rel, url
            assert [e["name"] for e in page["entries"]] == sorted(visible(root, rel, show_hidden=True)), url
    # ... and asking for it leaves no made-up entries behind in the index.
    assert [e["name"] for e in walk_listing(client, server, "")] == names
    assert search_paths(client, server, "hidden") == expected_search(root, "hidden", show_hidden=True)

    for rel in ["", "sub", ".cache", ".git"]:
        check_entries(client, server, root, rel, walk_listing(client, server, rel), show_hidden=True)


# --------------------------------------------------------------------------- changes by other programs

MODES = [
    pytest.param((), id="inotify"),
    pytest.param(("--no-watch", "--rescan-interval", "1"), id="rescan-only"),
]


def small_tree(base: Path) -> Path:
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "keep.txt").write_bytes(b"keep\n")
    (root / "sub" / "stays.txt").write_bytes(b"stays\n")
    return root


@pytest.mark.parametrize("flags", MODES)
def test_a_file_created_renamed_deleted_by_another_process_is_seen(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client, flags: tuple[str, ...]
) -> None:
    root = small_tree(tmp_path)
    server = launch(root, *flags)

    (root / "sub" / "fresh-ZQX file.txt").write_bytes(b"new\n")
    eventually(
        state_is(
            client, server, {"sub": {"stays.txt", "fresh-ZQX file.txt"}}, {"zqx": {"sub/fresh-ZQX file.txt"}}
        ),
        "a created file",
    )
    entry = get_json(client, server.url + api_path("sub/fresh-ZQX file.txt"))
    assert entry["size"] == 4

    os.rename(root / "sub" / "fresh-ZQX file.txt", root / "other" / "moved-ZQX file.txt")
    eventually(
        state_is(
            client,
            server,
            {"sub": {"stays.txt"}, "other": {"moved-ZQX file.txt"}},
            {"zqx": {"other/moved-ZQX file.txt"}, "fresh": set()},
        ),
        "a renamed file",
    )

    os.remove(root / "other" / "moved-ZQX file.txt")
    eventually(
        state_is(client, server, {"sub": {"stays.txt"}, "other": set()}, {"zqx": set(), "moved": set()}),
        "a deleted file",
    )


@pytest.mark.parametrize(
    ("flags", "search_first"),
    [
        pytest.param((), True, id="inotify-search-polled-first"),
        pytest.param((), False, id="inotify-listings-polled-first"),
        pytest.param(("--no-watch", "--rescan-interval", "1"), False, id="rescan-only"),
    ],
)
def test_a_tree_copied_in_moved_and_removed_by_another_process_is_seen(
    launch: Callable[..., FerryServer],
    tmp_path: Path,
    client: httpx.Client,
    flags: tuple[str, ...],
    search_first: bool,
) -> None:
    """A tree copied in (shutil.copytree), renamed into another directory, then removed (rmtree).

    Polling the listings first is what a person browsing meanwhile does: a listing of the parent
    may see the new directory before the watcher does."""
    root = small_tree(tmp_path)
    source = tmp_path / "outside" / "Tree ÄÖ"
    (source / "deep" / "deeper").mkdir(parents=True)
    (source / "a-TRQ.txt").write_bytes(b"a\n")
    (source / "deep" / "b-TRQ.txt").write_bytes(b"bb\n")
    (source / "deep" / "deeper" / "c-TRQ #?.bin").write_bytes(b"ccc\n")
    server = launch(root, *flags)

    shutil.copytree(source, root / "incoming")
    eventually(
        state_is(
            client,
            server,
            {
                "": {"sub", "other", "keep.txt", "incoming"},
                "incoming": {"a-TRQ.txt", "deep"},
                "incoming/deep/deeper": {"c-TRQ #?.bin"},
            },
            {
                "trq": {"incoming/a-TRQ.txt", "incoming/deep/b-TRQ.txt", "incoming/deep/deeper/c-TRQ #?.bin"},
                "deeper": {"incoming/deep/deeper"},
            },
            search_first=search_first,
        ),
        "a tree copied in",
    )

    os.rename(root / "incoming", root / "sub" / "landed")
    eventually(
        state_is(
            client,
            server,
            {
                "": {"sub", "other", "keep.txt"},
                "incoming": None,
                "sub": {"stays.txt", "landed"},
                "sub/landed/deep/deeper": {"c-TRQ #?.bin"},
            },
            {
                "trq": {
                    "sub/landed/a-TRQ.txt",
                    "sub/landed/deep/b-TRQ.txt",
                    "sub/landed/deep/deeper/c-TRQ #?.bin",
                },
                "deeper": {"sub/landed/deep/deeper"},
                "incoming": set(),
            },
            search_first=search_first,
        ),
        "a tree moved",
    )

    shutil.rmtree(root / "sub" / "landed")
    eventually(
        state_is(
            client,
            server,
            {"sub": {"stays.txt"}, "sub/landed": None},
            {"trq": set(), "deeper": set(), "landed": set()},
            search_first=search_first,
        ),
        "a tree removed",
    )


@pytest.mark.parametrize("flags", MODES)
def test_a_file_rewritten_in_place_by_another_process_is_seen(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client, flags: tuple[str, ...]
) -> None:
    """Appending to a file changes its size, mtime and ETag but not its directory's mtime; the listing
    must still catch up (the rescan is the safety net "for anything inotify missed")."""
    root = small_tree(tmp_path)
    server = launch(root, *flags)
    with (root / "sub" / "stays.txt").open("ab") as f:
        f.write(b"grown by another program\n")
    size = (root / "sub" / "stays.txt").stat().st_size

    def probe() -> str | None:
        listed = {e["name"]: e for e in get_json(client, server.url + api_path("sub"))["entries"]}[
            "stays.txt"
        ]
        etag = client.head(server.url + "/files/sub/stays.txt").headers["etag"]
        if (listed["size"], listed["etag"]) != (size, etag):
            return (
                f"listing says size {listed['size']} etag {listed['etag']}; disk/download say {size} {etag}"
            )
        return None

    eventually(probe, "a file appended to")


def test_a_listing_is_right_at_once_without_watcher_or_rescan(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client
) -> None:
    """With no inotify and no rescan, listing a directory whose mtime changed re-reads it."""
    root = small_tree(tmp_path)
    server = launch(root, "--no-watch", "--rescan-interval", "0")

    def right_now(*dirs: str) -> None:
        for rel in dirs:
            assert listing_names(client, server, rel) == disk_names(root, rel), rel

    right_now("", "sub", "other")
    (root / "sub" / "new #1?.txt").write_bytes(b"one\n")
    right_now("sub")
    entry = get_json(client, server.url + api_path("sub"))["entries"][0]
    assert entry["name"] == "new #1?.txt"
    assert entry["size"] == 4
    assert entry["etag"] == client.head(server.url + entry["url"]).headers["etag"]

    os.rename(root / "sub" / "new #1?.txt", root / "sub" / "renamed.txt")
    right_now("sub")
    os.rename(root / "sub" / "renamed.txt", root / "other" / "moved.txt")
    right_now("sub", "other")
    os.remove(root / "other" / "moved.txt")
    right_now("other")

    (root / "sub" / "made" / "deeper").mkdir(parents=True)
    (root / "sub" / "made" / "deeper" / "x.txt").write_bytes(b"x\n")
    right_now("sub", "sub/made", "sub/made/deeper")
    shutil.copytree(root / "sub" / "made", root / "other" / "copy")
    right_now("other", "other/copy", "other/copy/deeper")
    os.rename(root / "other" / "copy", root / "copy-moved")
    right_now("", "other", "copy-moved/deeper")
    assert listing_names(client, server, "other/copy") is None
    shutil.rmtree(root / "copy-moved")
    right_now("")
    assert listing_names(client, server, "copy-moved") is None
    for i in range(30):  # quick successive changes, each listed at once
        (root / "sub" / f"quick-{i}").write_bytes(b"q")
        right_now("sub")


# --------------------------------------------------------------------------- downloads and the index


def test_downloads_never_depend_on_the_index(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client
) -> None:
    root = small_tree(tmp_path)
    (root / "sub" / "old-file-KQW.txt").write_bytes(b"was here at start-up\n")
    server = launch(root, "--no-watch", "--rescan-interval", "0")
    assert search_paths(client, server, "kqw") == {"sub/old-file-KQW.txt"}

    # Created after start-up: served although the index has not seen it.
    (root / "late-file-JXV.txt").write_bytes(b"late bytes\n")
    (root / "late-dir").mkdir()
    (root / "late-dir" / "inner-JXV.bin").write_bytes(b"\x00\x01late\n")
    assert search_paths(client, server, "jxv") == set(), "the index saw it: the test proves nothing"
    r = client.get(server.url + "/files/late-file-JXV.txt")
    assert (r.status_code, r.content) == (200, b"late bytes\n")
    r = client.get(server.url + "/files/late-dir/inner-JXV.bin")
    assert (r.status_code, r.content) == (200, b"\x00\x01late\n")
    assert client.head(server.url + "/files/late-file-JXV.txt").status_code == 200

    # Deleted after start-up: 404 although the index still lists it, and then the index drops it.
    os.remove(root / "sub" / "old-file-KQW.txt")
    assert search_paths(client, server, "kqw") == {"sub/old-file-KQW.txt"}, "the index already dropped it"
    assert client.get(server.url + "/files/sub/old-file-KQW.txt").status_code == 404
    assert client.head(server.url + "/files/sub/old-file-KQW.txt").status_code == 404
    assert client.get(server.url + api_path("sub/old-file-KQW.txt")).status_code == 404
    # The index's writer thread drops it a moment after the 404 (nothing waits for that write).
    eventually(
        lambda: None if search_paths(client, server, "kqw") == set() else "still found",
        "the index never dropped a file found gone",
    )
    assert search_paths(client, server, "old-file") == set()


# --------------------------------------------------------------------------- restarts


def many_dirs(base: Path) -> tuple[Path, int]:
    """20 directories of 10 directories of 3 files: 221 directories with ROOT."""
    root = base / "root"
    for i in range(20):
        for j in range(10):
            leaf = root / f"d{i:02d}" / f"e{j:02d}"
            leaf.mkdir(parents=True)
            for k in range(3):
                (leaf / f"file-{i:02d}-{j:02d}-{k}.txt").write_bytes(b"x" * (i + j + k))
    return root, 1 + 20 + 20 * 10


def test_a_restart_reads_only_changed_directories(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client
) -> None:
    root, dirs = many_dirs(tmp_path)
    index = tmp_path / "var" / "index.sqlite3"

    first = launch(root, "--index-path", str(index))
    assert wait_for_scans(first)[0][:2] == (dirs, dirs)
    first.stop()
    assert index.exists()

    second = launch(root, "--index-path", str(index))
    assert wait_for_scans(second)[0][:2] == (dirs, 0), "unchanged directories were read again"
    for rel in ["", "d03", "d19/e09"]:
        check_entries(client, second, root, rel, walk_listing(client, second, rel))
    assert search_paths(client, second, "file-07-04") == {f"d07/e04/file-07-04-{k}.txt" for k in range(3)}
    second.stop()

    (root / "d07" / "e04" / "added-while-stopped.txt").write_bytes(b"added\n")
    third = launch(root, "--index-path", str(index))
    assert wait_for_scans(third)[0][:2] == (dirs, 1), "not exactly the changed directory was read"
    check_entries(client, third, root, "d07/e04", walk_listing(client, third, "d07/e04"))
    assert search_paths(client, third, "added-while") == {"d07/e04/added-while-stopped.txt"}
    assert search_paths(client, third, "file-19-09") == {f"d19/e09/file-19-09-{k}.txt" for k in range(3)}


@pytest.mark.parametrize("sidecars", ["removed", "kept"])
def test_a_corrupt_index_is_rebuilt_at_start_up(
    launch: Callable[..., FerryServer], tmp_path: Path, client: httpx.Client, sidecars: str
) -> None:
    """Garbage in the index file while Ferry is stopped. With the -wal/-shm files kept, SQLite may
    still find every page in the WAL; with them removed (as after a checkpoint), the main file is all
    there is."""
    root, dirs = many_dirs(tmp_path)
    index = tmp_path / "var" / "index.sqlite3"
    first = launch(root, "--index-path", str(index))
    wait_for_scans(first)
    first.stop()

    index.write_bytes(b"this is not a database, just garbage\x00\xff" * 2000)
    if sidecars == "removed":
        for suffix in ("-wal", "-shm"):
            Path(f"{index}{suffix}").unlink(missing_ok=True)

    second = launch(root, "--index-path", str(index))  # fails if it does not start
    scans = wait_for_scans(second)
    if sidecars == "removed":
        assert scans[0][:2] == (dirs, dirs), "the index was not rebuilt from the disk"
    for rel in ["", "d11", "d11/e05"]:
        check_entries(client, second, root, rel, walk_listing(client, second, rel))
    assert search_paths(client, second, "file-11-05") == {f"d11/e05/file-11-05-{k}.txt" for k in range(3)}
