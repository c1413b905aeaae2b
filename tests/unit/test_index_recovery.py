"""The index survives what the disk and SQLite throw at it: names that are not UTF-8, a directory
that fails to read, a watcher that dies, a damaged database, a shutdown mid-scan, and temporary
upload files nobody will ever finish.

In process: an `Index` over a temporary tree, an `IndexKeeper` on the running loop, or the whole app
through httpx's ASGI transport; the same behaviour against a real server is in
tests/clients/test_index_recovery.py.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app import cli
from app.main import create_app
from app.storage import inotify, watch
from app.storage.index import Index
from app.storage.paths import PathPolicy
from app.storage.watch import IndexKeeper
from tests.conftest import make_settings, wait_for
from tests.support.inprocess import in_process

PAGE = 4096


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def tree(base: Path, dirs: int = 30, files: int = 5) -> Path:
    root = base / "root"
    for i in range(dirs):
        d = root / f"d{i:02d}"
        d.mkdir(parents=True)
        for j in range(files):
            (d / f"file-{i:02d}-{j}.txt").write_bytes(b"x" * (i + j))
    return root


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    idx = Index(tmp_path / "var" / "index.sqlite3", PathPolicy(root=tree(tmp_path)))
    idx.scan()
    yield idx
    idx.stop_scans()
    idx.close()


def found(idx: Index, q: str) -> set[str]:
    return {e.path for e in idx.search(q, limit=1000).entries}


def damage_middle_pages(db: Path) -> None:
    """Garbage over the middle third of the pages: the SQLite header, the schema and the first
    tables' roots stay intact, so opening the file and reading its identity still work."""
    pages = db.stat().st_size // PAGE
    assert pages >= 12, "too small a database to damage in the middle"
    with db.open("r+b") as f:
        f.seek(pages // 3 * PAGE)
        f.write(bytes([0xA5]) * PAGE * (pages // 3))


def checkpoint(db: Path) -> None:
    """Every page in the main file, the WAL empty: what a damaged disk block would hit."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


# --------------------------------------------------------------------------- names and the scanner


def test_names_that_are_not_utf8_are_skipped_and_counted(index: Index) -> None:
    root = index.policy.root
    (root / "d03" / "plain.txt").write_bytes(b"plain")
    with open(os.fsencode(root / "d03") + b"/bad\xff.txt", "wb") as f:
        f.write(b"bad")
    before = sample("ferry_index_skipped_names_total")
    index.scan(incremental=False)
    assert found(index, "plain.txt") == {"d03/plain.txt"}
    assert {e.name for e in index.list_dir("d03", limit=100).entries} >= {"plain.txt", "file-03-0.txt"}
    assert sample("ferry_index_skipped_names_total") > before


def test_one_directory_that_fails_does_not_end_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = Index(tmp_path / "index.sqlite3", PathPolicy(root=tree(tmp_path)))
    real = Index._rescan_dir

    def failing(self: Index, directory: str, safe: Any) -> list[str]:
        if directory == "d07":
            raise RuntimeError("an unexpected failure in one directory")
        return real(self, directory, safe)

    monkeypatch.setattr(Index, "_rescan_dir", failing)
    stats = idx.scan()
    assert stats.directories == 31
    assert found(idx, "file-29-4") == {"d29/file-29-4.txt"}
    assert found(idx, "file-00-0") == {"d00/file-00-0.txt"}
    idx.close()


def test_a_stopped_scan_ends_at_the_next_directory(index: Index) -> None:
    index.stop_scans()
    stats = index.scan(incremental=False)
    assert stats.stopped
    assert stats.directories == 0


# --------------------------------------------------------------------------- the watcher


def test_a_path_that_cannot_be_indexed_does_not_stop_the_others(index: Index) -> None:
    root = index.policy.root
    (root / "d01" / "after-bad.txt").write_bytes(b"after")
    keeper = IndexKeeper(index, watch=True, rescan_interval=0)
    keeper._apply({"d01/bad\udcff.txt", "d01/after-bad.txt"})  # what a surrogate-escaped name gives
    assert found(index, "after-bad") == {"d01/after-bad.txt"}


def test_a_watcher_that_dies_starts_again_after_a_rescan(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first watcher dies at once (as watchfiles does on a name it cannot decode); a file
    created meanwhile is found by the scan that follows each start, and watching goes on."""
    monkeypatch.setattr(watch, "_RESTART_DELAYS", (0.05, 0.2))
    root = index.policy.root
    calls: list[int] = []
    watching_again = threading.Event()

    def changes(self: IndexKeeper, root_path: Path) -> AsyncIterator[set[str]]:
        calls.append(1)

        async def died() -> AsyncIterator[set[str]]:
            (root / "d02" / "while-dead.txt").write_bytes(b"missed by the watcher")
            raise RuntimeError('Unable to decode path "/x/bad\\xFF.txt" to string')
            yield set()  # pragma: no cover  (an async generator)

        async def alive() -> AsyncIterator[set[str]]:
            watching_again.set()
            await self._stop.wait()
            return
            yield set()  # pragma: no cover

        return died() if len(calls) == 1 else alive()

    monkeypatch.setattr(IndexKeeper, "_changes", changes)
    restarts = sample("ferry_index_watch_restarts_total")

    async def run() -> None:
        keeper = IndexKeeper(index, watch=True, rescan_interval=0)
        await keeper.start()
        try:
            deadline = time.monotonic() + 30
            while not watching_again.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            await keeper.stop()

    asyncio.run(run())
    assert watching_again.is_set(), "watching never started again"
    assert len(calls) == 2
    assert found(index, "while-dead") == {"d02/while-dead.txt"}, "no rescan after the watcher died"
    assert sample("ferry_index_watch_restarts_total") == restarts + 1


def test_a_change_made_just_before_the_watches_exist_is_seen(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inotify reports only what happens after its watches exist: a tree copied in between the
    start-up scan and that moment was missed until the next periodic rescan. The keeper starts
    watching first and scans after, so a tree that lands as the watcher starts is indexed."""
    root = index.policy.root
    real_changes = IndexKeeper._changes

    def changes(self: IndexKeeper, root_path: Path) -> AsyncIterator[set[str]]:
        (root / "landed" / "deep").mkdir(parents=True)
        (root / "landed" / "deep" / "early-bird.txt").write_bytes(b"copied in as watching began")
        return real_changes(self, root_path)

    monkeypatch.setattr(IndexKeeper, "_changes", changes)

    async def run() -> set[str]:
        keeper = IndexKeeper(index, watch=True, rescan_interval=0)
        await keeper.start()
        try:
            await asyncio.wait_for(keeper.ready.wait(), 30)
            deadline = time.monotonic() + 10
            while not found(index, "early-bird") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return found(index, "early-bird")
        finally:
            await keeper.stop()

    assert asyncio.run(run()) == {"landed/deep/early-bird.txt"}


@pytest.mark.parametrize("own_inotify", [True, False], ids=["inotify", "watchfiles"])
def test_the_keeper_sees_what_other_programs_change(
    index: Index, own_inotify: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Ferry's own inotify watches (Linux) and through watchfiles (where inotify is
    missing) alike: a file written, a folder made with a file in it, a file removed."""
    if own_inotify and not inotify.available():
        pytest.skip("inotify is Linux's")
    if not own_inotify:
        monkeypatch.setattr(inotify, "available", lambda: False)
    root = index.policy.root

    async def run() -> None:
        keeper = IndexKeeper(index, watch=True, rescan_interval=0)
        await keeper.start()
        try:
            await asyncio.wait_for(keeper.ready.wait(), 30)
            (root / "d03" / "written-later.txt").write_bytes(b"new")
            (root / "made-later" / "inside").mkdir(parents=True)
            (root / "made-later" / "inside" / "deep-later.txt").write_bytes(b"deep")
            (root / "d04" / "file-04-1.txt").unlink()
            wanted = {"d03/written-later.txt", "made-later/inside/deep-later.txt"}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if found(index, "later") >= wanted and not found(index, "file-04-1"):
                    break
                await asyncio.sleep(0.05)
            assert found(index, "later") >= wanted
            assert not found(index, "file-04-1")
        finally:
            await keeper.stop()

    asyncio.run(run())


# --------------------------------------------------------------------------- a damaged database


def test_damage_that_keeps_the_header_is_found_at_start_up(index: Index) -> None:
    db = index.db_path
    index.close()
    checkpoint(db)
    damage_middle_pages(db)

    again = Index(db, index.policy)
    try:
        assert wait_for(lambda: not again.rebuilding, 30), "the rebuild never ended"
        assert found(again, "file-17-3") == {"d17/file-17-3.txt"}
        assert again.count() == 30 * 6
    finally:
        again.stop_scans()
        again.close()


class Gate:
    """Holds a rebuild's scan until opened, so a test sees the index while it is rebuilt."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        real = Index.scan

        def held(idx: Index, **kwargs: Any) -> Any:
            if threading.current_thread().name == "ferry-index-rebuild":
                assert self.open.wait(60)
            return real(idx, **kwargs)

        monkeypatch.setattr(Index, "scan", held)


def test_damage_found_while_serving_rebuilds_without_a_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request that meets the damage starts the rebuild and is answered from the new
    index; meanwhile listings and downloads work, search is 503 + Retry-After, /healthz says
    degraded; afterwards everything is as before."""
    root = tree(tmp_path)
    settings = make_settings(root, index_path=tmp_path / "var" / "index.sqlite3", write_token="t" * 20)
    app = create_app(settings)
    idx: Index = app.services.index
    idx.scan()
    gate = Gate(monkeypatch)
    rebuilds = sample("ferry_index_rebuilds_total")

    async def run() -> None:
        async with in_process(app, lifespan=False) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            checkpoint(idx.db_path)
            damage_middle_pages(idx.db_path)
            idx._reopen()  # connections with empty page caches, as after any other writer

            first = await client.get("/api/files/d05")
            assert first.status_code == 200, first.text
            assert {e["name"] for e in first.json()["entries"]} == {f"file-05-{j}.txt" for j in range(5)}
            assert sample("ferry_index_rebuilds_total") == rebuilds + 1

            health = await client.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "degraded", "index": "rebuilding"})
            search = await client.get("/api/search", params={"q": "file-11"})
            assert search.status_code == 503
            assert search.headers["retry-after"].isdigit()
            listing = await client.get("/api/files/d12")
            assert {e["name"] for e in listing.json()["entries"]} == {f"file-12-{j}.txt" for j in range(5)}
            download = await client.get("/files/d12/file-12-4.txt")
            assert (download.status_code, download.content) == (200, b"x" * 16)
            put = await client.put(
                "/files/d12/new.txt", content=b"new", headers={"authorization": "Bearer " + "t" * 20}
            )
            assert put.status_code == 201, put.text

            gate.open.set()
            deadline = time.monotonic() + 30
            while (await client.get("/healthz")).json() != {"status": "ok"}:
                assert time.monotonic() < deadline, "still rebuilding"
                await asyncio.sleep(0.05)
            search = await client.get("/api/search", params={"q": "file-11-2"})
            assert [e["path"] for e in search.json()["entries"]] == ["d11/file-11-2.txt"]
            search = await client.get("/api/search", params={"q": "new.txt"})
            assert [e["path"] for e in search.json()["entries"]] == ["d12/new.txt"]

    try:
        asyncio.run(run())
    finally:
        gate.open.set()
        idx.stop_scans()
        idx.close()


# --------------------------------------------------------------------------- temporary upload files


def test_an_upload_whose_index_record_fails_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tree(tmp_path, dirs=1, files=1)
    app = create_app(make_settings(root, index_path=tmp_path / "index.sqlite3", write_token="t" * 20))

    def refuse(temp_path: str) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(app.services.index, "begin_upload", refuse)

    async def run() -> int:
        async with in_process(app, lifespan=False, raise_app_exceptions=False) as client:
            r = await client.put(
                "/files/d00/up.bin", content=b"y" * 1000, headers={"authorization": "Bearer " + "t" * 20}
            )
            return r.status_code

    assert asyncio.run(run()) >= 500
    assert [p.name for p in (root / "d00").iterdir()] == ["file-00-0.txt"]


# --------------------------------------------------------------------------- the healthcheck command


@pytest.mark.parametrize(
    ("status", "body", "exit_code"),
    [
        (200, {"status": "ok"}, 0),
        (200, {"status": "degraded", "index": "rebuilding"}, 0),  # downloads work: healthy
        (200, {"status": "starting"}, 1),
        (503, {"status": "unavailable", "detail": "the storage root is missing"}, 1),
    ],
)
def test_the_healthcheck_counts_a_rebuilding_index_as_healthy(
    status: int, body: dict[str, str], exit_code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = json.dumps(body).encode()

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Answer) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            assert cli.healthcheck(url, timeout=10) == exit_code
        finally:
            server.shutdown()
    assert (capsys.readouterr().err == "") == (exit_code == 0)


def _open_new_index(db: str, root: str, barrier: Any, errors: Any) -> None:
    barrier.wait()
    try:
        Index(Path(db), PathPolicy(root=Path(root))).close()
    except Exception as exc:
        errors.put(repr(exc))


def test_workers_opening_a_new_index_at_the_same_instant_all_start(tmp_path: Path) -> None:
    """Forked workers open a new index together: switching it to WAL must not fail one of them
    with "database is locked" (that worker would die at start-up and be started again)."""
    context = multiprocessing.get_context("fork")
    root = tree(tmp_path, dirs=1, files=1)
    errors = context.Queue()
    for attempt in range(12):
        db = tmp_path / f"index-{attempt}.sqlite3"
        barrier = context.Barrier(3)
        workers = [
            context.Process(target=_open_new_index, args=(str(db), str(root), barrier, errors))
            for _ in range(3)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
    found_errors = []
    while not errors.empty():
        found_errors.append(errors.get())
    assert found_errors == []
