"""The index at scale (issue 4): Ferry's start-up scan of a tree of N empty files, its index on disk,
its memory, the latency of listings and searches on that tree, and a restart that reuses the index.

The tree has FILES_PER_DIR files per leaf directory, ten leaves per top directory
(d000/e00/f0000000 ... d099/e09/f0999999 for a million), every file name unique. It is made once per
size in --data-dir (default: the system temp dir) and kept for the next run: a marker file beside
it says it is complete. nginx has no index, so these figures stand alone; `find` over the same tree
gives context. Ferry runs with its defaults (one worker, watch on) and a fresh --index-path.
"""

from __future__ import annotations

import math
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tests.bench.clients import RssSampler, Timings, fetch_text, timed_gets
from tests.bench.report import Figure
from tests.bench.servers import FerryOptions, Server, start_ferry
from tests.bench.system import BenchError, create_empty_files, log, rss_kib, wait_idle

FILES_PER_DIR = 1000
LEAVES_PER_TOP = 10
PAGE = 100
MAX_FILES = 10**7 - 1  # seven-digit names
SCAN_TIMEOUT = 900.0  # seconds for one start-up scan
_LAYOUT = "d{top:03d}/e{leaf:02d}/f{number:07d}, 1000 files per leaf, 10 leaves per top directory\n"
_SCAN_LINE = re.compile(r"index scan: (\d+) directories, (\d+) read from disk, ([\d.]+)s")
_ENTRIES_METRIC = re.compile(r"^ferry_index_entries ([\d.e+]+)$", re.MULTILINE)


# --- the tree ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    root: Path
    files: int
    made_in: float | None  # seconds this run took to make it; None: reused

    @property
    def leaves(self) -> int:
        return math.ceil(self.files / FILES_PER_DIR)

    @property
    def directories(self) -> int:
        """Every directory below the root: the leaves and the top directories holding them."""
        return self.leaves + math.ceil(self.leaves / LEAVES_PER_TOP)

    def leaf(self, index: int) -> str:
        return f"d{index // LEAVES_PER_TOP:03d}/e{index % LEAVES_PER_TOP:02d}"

    def names(self, index: int) -> list[str]:
        first = index * FILES_PER_DIR
        return [f"f{number:07d}" for number in range(first, min(self.files, first + FILES_PER_DIR))]


def tree_for(base: Path, files: int) -> Tree:
    """The tree of `files` empty files under `base`, made unless a complete one is there."""
    if not 0 < files <= MAX_FILES:
        raise BenchError(f"--index-files {files}: from 1 to {MAX_FILES:,} (seven-digit names)")
    home = base / f"ferry-index-tree-{files}"
    marker = home / "complete"
    tree = Tree(home / "root", files, None)
    if marker.exists() and marker.read_text() == _LAYOUT:
        log(f"reusing the {files:,}-file tree in {home}")
        return tree
    log(f"making {files:,} empty files in {home} (kept for later runs; rm -rf it to reclaim)")
    began = time.monotonic()
    for index in range(tree.leaves):
        create_empty_files(tree.root / tree.leaf(index), tree.names(index))
    marker.write_text(_LAYOUT)
    return Tree(tree.root, files, time.monotonic() - began)


# --- the scan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    directories: int
    read: int  # directories read from disk (not skipped as unchanged)
    logged: float  # seconds, as Ferry logs it
    wall: float  # seconds from the process's start to the log line

    def describe(self) -> str:
        return f"{self.directories:,} directories, {self.read:,} read from disk"


def wait_for_scan(server: Server, timeout: float = SCAN_TIMEOUT) -> Scan:
    """The first `index scan:` line of the server's log, polled for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _SCAN_LINE.search(server.log.read_text(errors="replace"))
        if match:
            wall = time.monotonic() - server.started_at
            return Scan(int(match.group(1)), int(match.group(2)), float(match.group(3)), wall)
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited during its scan:\n{server.log.read_text()[-2000:]}")
        time.sleep(0.02)
    raise BenchError(f"{server.name}: no index scan line within {timeout:.0f} s")


def indexed_entries(server: Server) -> int:
    match = _ENTRIES_METRIC.search(fetch_text(server.port, "/metrics"))
    if match is None:
        raise BenchError(f"{server.name}: no ferry_index_entries in /metrics")
    return int(float(match.group(1)))


def index_mib(index_path: Path) -> tuple[float, str]:
    """The index's size on disk, the database and its write-ahead log together."""
    parts = {suffix: Path(f"{index_path}{suffix}") for suffix in ("", "-wal")}
    sizes = {
        suffix: path.stat().st_size / 1024**2 if path.exists() else 0.0 for suffix, path in parts.items()
    }
    return sum(sizes.values()), f"database {sizes['']:.1f} MiB, -wal {sizes['-wal']:.1f} MiB"


# --- the requests ------------------------------------------------------------------------------


def _latency(label: str, timings: Timings, shown: str) -> Figure:
    times = timings.milliseconds
    detail = f"{shown}; min {min(times):.2f}, max {max(times):.2f} ms over {len(times)}"
    return Figure(label, "ms", statistics.median(times), detail)


def _page(timings: Timings) -> str:
    entries = timings.body["entries"]
    more = "more pages" if timings.body["next_cursor"] else "last page"
    return f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}, {more}"


def last_page_cursor(port: int, directory: str) -> tuple[str | None, int]:
    """The cursor of the directory's last page (None if it has one page), and entries before it."""
    cursor: str | None = None
    before = 0
    while True:
        path = f"/api/files/{directory}?limit={PAGE}" + (f"&cursor={quote(cursor)}" if cursor else "")
        body = timed_gets(port, path, requests=1).body
        if not body["next_cursor"]:
            return cursor, before
        before += len(body["entries"])
        cursor = body["next_cursor"]


def listing_figures(server: Server, tree: Tree, requests: int) -> list[Figure]:
    directory = tree.leaf(tree.leaves // 2)
    size = len(tree.names(tree.leaves // 2))
    first = timed_gets(server.port, f"/api/files/{directory}?limit={PAGE}", requests=requests)
    cursor, before = last_page_cursor(server.port, directory)
    path = f"/api/files/{directory}?limit={PAGE}" + (f"&cursor={quote(cursor)}" if cursor else "")
    last = timed_gets(server.port, path, requests=requests)
    if len(first.body["entries"]) != min(PAGE, size) or before + len(last.body["entries"]) != size:
        raise BenchError(f"listing {directory}: pages do not add up to its {size} files")
    return [
        _latency(f"listing: first page, limit={PAGE}, of a {size:,}-file directory", first,
                 f"{directory}, {_page(first)}"),
        _latency(f"listing: its last page, through a cursor (entries {before + 1:,}–{size:,})", last,
                 f"{_page(last)}"),
    ]  # fmt: skip


def search_figures(server: Server, tree: Tree, requests: int) -> list[Figure]:
    rare = f"{int(tree.files * 0.54321):07d}"  # seven digits: in exactly one name
    queries = [
        (rare, "one name holds it"),
        ("f00", "a trigram in many names"),
        ("99", "2 characters: LIKE, stops at a full page"),
        ("zq", "2 characters, no match: LIKE reads every name"),
    ]
    figures = []
    for query, what in queries:
        timings = timed_gets(server.port, f"/api/search?q={quote(query)}&limit={PAGE}", requests=requests)
        if query == rare and [entry["name"] for entry in timings.body["entries"]] != [f"f{rare}"]:
            raise BenchError(f"search {rare!r}: want exactly f{rare}, got {timings.body['entries'][:3]}")
        figures.append(_latency(f'search "{query}": {what}', timings, _page(timings)))
    return figures


# --- find, for context -------------------------------------------------------------------------


def time_find(root: Path, files: int, *, stat_each: bool) -> Figure:
    """`find DIR -type f | wc -l`: readdir alone (d_type), or with -printf of size and mtime, which
    stats every file as Ferry's scan does."""
    printf = " -printf '%s %T@\\n'" if stat_each else ""
    began = time.monotonic()
    result = subprocess.run(
        ["sh", "-c", f'find "$1" -type f{printf} | wc -l', "sh", str(root)],
        capture_output=True, text=True, timeout=SCAN_TIMEOUT, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - began
    if result.returncode != 0 or int(result.stdout.strip() or 0) != files:
        raise BenchError(f"find over {root}: {result.stdout.strip()} files, {result.stderr.strip()}")
    label = f"for context: `find DIR -type f{printf} \\| wc -l`"
    what = (
        "stats every file, as Ferry's scan does" if stat_each else "reads directories only (d_type), no stat"
    )
    return Figure(label, "s", seconds, f"{files:,} lines; {what}")


# --- the measure -------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexRun:
    figures: list[Figure]
    context: list[str]


def _first_start(
    ferry: FerryOptions, tree: Tree, index_path: Path, workdir: Path, requests: int
) -> list[Figure]:
    """Start Ferry on the tree with a fresh index; the scan, memory, index size and requests."""
    server = start_ferry("Ferry index", ferry, tree.root, workdir, index_path=index_path)
    try:
        with RssSampler([server.process.pid]) as peak:
            scan = wait_for_scan(server)
            at_scan_end = (rss_kib(server.process.pid) or 0) / 1024
            log(f"index scan: {scan.describe()}, {scan.logged:.2f} s logged, {scan.wall:.2f} s wall")
            settled = wait_idle(server.process.pid)  # the watcher sets up after the scan
            rss = (rss_kib(server.process.pid) or 0) / 1024
            size, parts = index_mib(index_path)
            entries, expected = indexed_entries(server), tree.files + tree.directories
            counted = f"{entries:,} entries indexed" + (
                "" if entries == expected else f" (expected {expected:,})"
            )
            figures = [
                Figure("start-up scan, as Ferry logs it", "s", scan.logged, f"{scan.describe()}; {counted}"),
                Figure("start-up scan, wall time from process start", "s", scan.wall,
                       "Python start-up and imports included"),
                Figure("index on disk, database + -wal, after the scan", "MiB", size, parts),
                Figure("server RSS after the scan", "MiB", rss,
                       f"{at_scan_end:.1f} MiB as the scan ended; then after the watcher's set-up"
                       + ("" if settled else " (the server never went idle)")),
            ]  # fmt: skip
            figures += listing_figures(server, tree, requests)
            figures += search_figures(server, tree, requests)
        figures.append(
            Figure("server peak RSS, start to last request", "MiB", peak.peak_mib(), "sampled every 0.2 s")
        )
        return figures
    finally:
        server.stop()


def _restart(ferry: FerryOptions, tree: Tree, index_path: Path, workdir: Path) -> list[Figure]:
    """Ferry again on the index the first start left: unchanged directories are not read."""
    server = start_ferry("Ferry index restart", ferry, tree.root, workdir, index_path=index_path)
    try:
        scan = wait_for_scan(server)
    finally:
        server.stop()
    log(f"restart scan: {scan.describe()}, {scan.logged:.2f} s logged, {scan.wall:.2f} s wall")
    return [
        Figure("restart with that index: scan, as Ferry logs it", "s", scan.logged, scan.describe()),
        Figure(
            "restart: wall time from process start", "s", scan.wall, "Python start-up and imports included"
        ),
    ]


def measure_index(ferry: FerryOptions, tree: Tree, workdir: Path, *, requests: int) -> IndexRun:
    """Ferry with one worker (its default), zero-copy as in the run, on a fresh index file."""
    options = FerryOptions(1, ferry.zero_copy, ferry.chunk_size)
    index_path = workdir / "index-scale.sqlite3"
    # An untimed pass first, so every figure sees the same warm dentry and inode caches.
    time_find(tree.root, tree.files, stat_each=True)
    finds = [time_find(tree.root, tree.files, stat_each=stat_each) for stat_each in (False, True)]
    first = _first_start(options, tree, index_path, workdir, requests)
    restart = _restart(options, tree, index_path, workdir)
    figures = first[:2] + restart + first[2:] + finds
    made = (
        f"made in {tree.made_in:.1f} s by this run"
        if tree.made_in is not None
        else "reused (made by an earlier run)"
    )
    context = [
        f"tree: {tree.files:,} empty files, {FILES_PER_DIR:,} per directory, in {tree.directories:,} "
        f"directories (d000/e00/f0000000 …), {made}",
        "Ferry: 1 worker (its default), watch on, a fresh --index-path in the run's temp dir; the "
        "restart reuses that index",
        "caches: an untimed `find` over the tree first, so the dentry and inode caches are warm for "
        "every figure",
        f"latencies: median of {requests} GETs on one keep-alive connection (Python http.client, "
        "request sent to last body byte), once the server is idle after its scan",
    ]
    return IndexRun(figures, context)
