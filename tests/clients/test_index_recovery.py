"""The index keeps working through what breaks it, against a real `ferry serve`: a name that is not
UTF-8 under a live watcher, a database damaged before start-up or while serving, temporary upload
files abandoned by a crash, SIGTERM in the middle of a long scan, and an index folder that cannot be
written. (The same mechanisms, with failures injected, are in tests/unit/test_index_recovery.py.)
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FerryServer, start_server
from tests.support.servers import launcher

pytestmark = pytest.mark.clients

SCAN_LINE = re.compile(r"index scan: (\d+) directories, (\d+) read from disk, (\d+\.\d+)s")
DEADLINE = 30.0  # generous: a loaded machine is slow, a broken watcher never gets there
PAGE = 4096
TEMP = ".ferry-upload-0123456789abcdef.part"


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., FerryServer]]:
    yield from launcher(tmp_path)


def scans(server: FerryServer, count: int = 1) -> list[tuple[int, int, float]]:
    deadline = time.monotonic() + DEADLINE
    while True:
        found = [(int(a), int(b), float(c)) for a, b, c in SCAN_LINE.findall(server.log.read_text())]
        if len(found) >= count:
            return found
        assert server.process.poll() is None, server.log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no index scan logged: {server.log.read_text()[-3000:]}"
        time.sleep(0.05)


def search(server: FerryServer, q: str) -> set[str] | int:
    r = httpx.get(f"{server.url}/api/search", params={"q": q, "limit": 1000}, timeout=15)
    if r.status_code != 200:
        return r.status_code
    return {e["path"] for e in r.json()["entries"]}


def until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def metric(server: FerryServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=15).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def small_tree(base: Path, dirs: int = 12, files: int = 4) -> Path:
    root = base / "root"
    for i in range(dirs):
        d = root / f"d{i:02d}"
        d.mkdir(parents=True)
        for j in range(files):
            (d / f"file-{i:02d}-{j}.txt").write_bytes(b"x" * (i + j + 1))
    return root


# --------------------------------------------------------------------------- names that are not UTF-8


def test_a_name_that_is_not_utf8_does_not_stop_live_indexing(
    launch: Callable[..., FerryServer], tmp_path: Path
) -> None:
    root = small_tree(tmp_path)
    server = launch(root)  # inotify on; the periodic rescan (300 s) is far beyond the deadline
    scans(server)

    with open(os.fsencode(root / "d03") + b"/bad\xff.txt", "wb") as f:
        f.write(b"no URL names this\n")
    (root / "d04" / "after-the-bad-name.txt").write_bytes(b"seen\n")
    until(
        lambda: search(server, "after-the-bad") == {"d04/after-the-bad-name.txt"},
        "a file created after a name that is not UTF-8 never reached search",
    )
    (root / "d05" / "later-still.txt").write_bytes(b"seen\n")
    until(lambda: search(server, "later-still") == {"d05/later-still.txt"}, "watching did not go on")
    assert metric(server, "ferry_index_skipped_names_total") >= 1
    names = {e["name"] for e in httpx.get(f"{server.url}/api/files/d03", timeout=15).json()["entries"]}
    assert names == {f"file-03-{j}.txt" for j in range(4)}
    assert server.process.poll() is None


# --------------------------------------------------------------------------- a damaged index


def checkpoint(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def damage_middle_pages(db: Path) -> None:
    """Garbage over the middle third of the pages: the SQLite header, the schema and the first
    tables' roots stay intact, so opening the file and reading its identity still work."""
    pages = db.stat().st_size // PAGE
    assert pages >= 12, "too small a database to damage in the middle"
    with db.open("r+b") as f:
        f.seek(pages // 3 * PAGE)
        f.write(bytes([0xA5]) * PAGE * (pages // 3))


def test_damage_with_an_intact_header_is_found_at_start_up(
    launch: Callable[..., FerryServer], tmp_path: Path
) -> None:
    root = small_tree(tmp_path, dirs=40)
    index = tmp_path / "var" / "index.sqlite3"
    first = launch(root, "--index-path", str(index))
    scans(first)
    first.stop()
    checkpoint(index)
    damage_middle_pages(index)

    second = launch(root, "--index-path", str(index))
    until(
        lambda: search(second, "file-33-2") == {"d33/file-33-2.txt"},
        f"search never worked after start-up: {second.log.read_text()[-2000:]}",
    )
    assert search(second, "file-0") == {f"d0{i}/file-0{i}-{j}.txt" for i in range(10) for j in range(4)}
    assert httpx.get(f"{second.url}/healthz", timeout=15).json() == {"status": "ok"}
    assert "index is corrupt" in second.log.read_text()


def test_damage_while_serving_is_rebuilt_without_a_500(
    launch: Callable[..., FerryServer], tmp_path: Path
) -> None:
    """Pages damaged under a running server: the first request (or watcher update) that reads one
    starts a rebuild; no request ever gets a 500, downloads always work, and search comes back."""
    root = small_tree(tmp_path, dirs=40)
    index = tmp_path / "var" / "index.sqlite3"
    server = launch(root, "--index-path", str(index), "--write-token", "w" * 20)
    scans(server)
    checkpoint(index)
    damage_middle_pages(index)

    statuses: dict[str, set[int]] = {"listing": set(), "search": set(), "download": set(), "put": set()}
    health: list[str] = []
    deadline = time.monotonic() + DEADLINE
    with httpx.Client(base_url=server.url, timeout=15) as client:
        for n in range(10_000):
            i = n % 40
            # A write of ours moves the WAL on: every connection's page cache is dropped.
            put = client.put(
                f"/files/d{i:02d}/put-{n}.txt", content=b"p", headers={"authorization": "Bearer " + "w" * 20}
            )
            statuses["put"].add(put.status_code)
            statuses["listing"].add(client.get(f"/api/files/d{i:02d}").status_code)
            statuses["search"].add(client.get("/api/search", params={"q": f"file-{i:02d}"}).status_code)
            download = client.get(f"/files/d{i:02d}/file-{i:02d}-1.txt")
            statuses["download"].add(download.status_code)
            assert download.content == b"x" * (i + 2)
            health.append(client.get("/healthz").json()["status"])
            if metric(server, "ferry_index_rebuilds_total") >= 1 and health[-1] == "ok":
                break
            assert time.monotonic() < deadline, f"no rebuild: {server.log.read_text()[-3000:]}"

        assert statuses["listing"] == {200}
        assert statuses["download"] == {200}
        assert statuses["put"] == {201}
        assert statuses["search"] <= {200, 503}
        assert set(health) <= {"ok", "degraded"}
        until(lambda: search(server, "file-27-3") == {"d27/file-27-3.txt"}, "search never came back")
        assert search(server, f"put-{n}.txt") == {f"d{n % 40:02d}/put-{n}.txt"}
    assert "index is corrupt" in server.log.read_text()
    assert (
        "Traceback" not in server.log.read_text().split("index is corrupt", 1)[1].split("index scan:", 1)[0]
    )


# --------------------------------------------------------------------------- abandoned uploads


def stale(path: Path, seconds: float = 2 * 3600) -> Path:
    past = time.time() - seconds
    os.utime(path, (past, past))
    return path


def test_abandoned_temporary_files_are_swept_at_start_up_and_on_rescans(
    launch: Callable[..., FerryServer], tmp_path: Path
) -> None:
    """As after a crash that also lost the index: no record of these uploads is left. Only Ferry's
    own naming pattern is swept, only once untouched for an hour, and never while a writer holds
    the file locked (an upload still running on another replica)."""
    root = small_tree(tmp_path, dirs=3)
    (root / "d01" / TEMP).write_bytes(b"partial")
    stale(root / "d01" / TEMP)
    fresh = root / "d02" / ".ferry-upload-fedcba9876543210.part"
    fresh.write_bytes(b"still being written")
    locked = root / "d00" / ".ferry-upload-00000000000000aa.part"
    locked.write_bytes(b"a slow upload of another replica")
    stale(locked)
    other = root / "d00" / ".ferry-upload-notours"
    other.write_bytes(b"")
    stale(other)
    holder = os.open(locked, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_SH)
    try:
        server = launch(root, "--no-watch", "--rescan-interval", "1")
        scans(server)
        until(lambda: not (root / "d01" / TEMP).exists(), "a stale temporary file was left at start-up")
        assert fresh.exists() and locked.exists() and other.exists()

        (root / "d02" / "sub").mkdir()
        late = root / "d02" / "sub" / ".ferry-upload-1111111111111111.part"
        late.write_bytes(b"left by a crash after start-up")
        stale(late)
        until(lambda: not late.exists(), "a stale temporary file was left after the rescans")
        scans(server, 3)
        assert fresh.exists() and locked.exists() and other.exists()
    finally:
        os.close(holder)
    stale(fresh)
    until(lambda: not locked.exists() and not fresh.exists(), "an unlocked stale file was kept")
    assert other.exists()
    assert metric(server, "ferry_stale_uploads_removed_total") == 4


# --------------------------------------------------------------------------- shutdown and start-up


def wide_tree(base: Path, top: int = 120, below: int = 50) -> Path:
    """top × below empty directories: a scan that takes seconds, not a quick one."""
    root = base / "wide"
    for i in range(top):
        for j in range(below):
            (root / f"a{i:03d}" / f"b{j:02d}").mkdir(parents=True)
    return root


def stop_seconds(server: FerryServer) -> float:
    """From SIGTERM to the process's exit (status 0)."""
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    status = server.process.wait(timeout=120)
    assert status == 0, server.log.read_text()[-2000:]
    return time.monotonic() - began


def test_sigterm_during_a_scan_stops_it_at_the_next_directory(tmp_path: Path) -> None:
    """Measured against the same machine's own figures: a whole scan of the tree, and a shutdown
    with no scan running. Waiting for the scan would cost most of a whole scan on top."""
    root = wide_tree(tmp_path)
    (tmp_path / "full").mkdir()
    full = start_server(root, tmp_path / "full")  # a fresh index: every directory is read
    scan_seconds = scans(full)[0][2]
    idle_stop = stop_seconds(full)

    (tmp_path / "stopped").mkdir()
    server = start_server(root, tmp_path / "stopped")  # fresh again: the same whole scan starts
    stopped_in = stop_seconds(server)
    assert not SCAN_LINE.search(server.log.read_text()), "the scan ended before SIGTERM: no test"
    assert stopped_in < idle_stop + scan_seconds / 2, (
        f"shutdown took {stopped_in:.2f}s (idle: {idle_stop:.2f}s), a whole scan {scan_seconds:.2f}s"
    )


def serve(root: Path, index_path: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "serve",
            "--root",
            str(root),
            "--port",
            "0",
            "--index-path",
            index_path,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("where", ["under-a-file", "in-proc", "a-directory"])
def test_an_index_folder_that_cannot_be_written_is_a_bad_setting(tmp_path: Path, where: str) -> None:
    """Fails as root too: a path below a regular file, inside /proc, or a directory as the file."""
    root = small_tree(tmp_path, dirs=1)
    (tmp_path / "plain-file").write_bytes(b"")
    (tmp_path / "a-dir").mkdir()
    index_path = {
        "under-a-file": str(tmp_path / "plain-file" / "var" / "index.sqlite3"),
        "in-proc": "/proc/ferry-index/index.sqlite3",
        "a-directory": str(tmp_path / "a-dir"),
    }[where]
    result = serve(root, index_path, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ferry: invalid setting FERRY_INDEX_PATH: "), lines[0]
    assert index_path in lines[0]
