"""The background hasher and the digest store, on a temp directory (no server): digests keyed by
identity, files still changing passed over without holding up the rest, a file changed during the
read never stored, and no hashing while another process has a transfer in flight."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import time
import zlib
from pathlib import Path

import pytest

from app.storage.digests import MIN_PIECE, hash_open_file
from app.storage.hasher import DigestWorker
from app.storage.index import Index
from app.storage.paths import PathPolicy
from app.storage.schema import schema_identity
from app.storage.values import EMPTY_DIGEST, FileDigest, identity
from app.transfer.activity import Activity
from tests.conftest import PATIENCE

PAST = time.time() - 3600


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Index, Activity]:
    root = tmp_path / "root"
    root.mkdir()
    index = Index(tmp_path / "index.sqlite3", PathPolicy(root=root.resolve()))
    return root, index, Activity(tmp_path / "index.sqlite3.busy")


def _write(path: Path, data: bytes, *, old: bool = True) -> None:
    path.write_bytes(data)
    if old:
        os.utime(path, (PAST, PAST))


def _drain(worker: DigestWorker) -> None:
    cursor = None
    while cursor != 0:
        cursor, _ = worker._round(cursor or 0)


def test_settled_files_are_hashed_and_keyed_by_identity(setup: tuple[Path, Index, Activity]) -> None:
    root, index, activity = setup
    _write(root / "a.bin", b"a" * 5000)
    _write(root / "b.bin", b"b")
    index.scan()
    worker = DigestWorker(index, activity, rate=0)
    _drain(worker)
    assert worker.hashed_files == 2 and index.pending_count() == 0
    entry = index.get("a.bin")
    assert entry is not None and entry.sha256 == hashlib.sha256(b"a" * 5000).digest()
    # Rewritten in place: a new identity, no digest until hashed again, and queued again.
    _write(root / "a.bin", b"c" * 5000)
    os.utime(root / "a.bin", (PAST + 1, PAST + 1))
    index.sync_path("a.bin")
    changed = index.get("a.bin")
    assert changed is not None and changed.sha256 is None and index.pending_count() == 1
    _drain(worker)
    again = index.get("a.bin")
    assert again is not None and again.sha256 == hashlib.sha256(b"c" * 5000).digest()


def test_files_still_changing_do_not_hold_up_the_rest(setup: tuple[Path, Index, Activity]) -> None:
    root, index, activity = setup
    for i in range(150):  # more than one batch of files written just now
        _write(root / f"fresh-{i:03}.log", b"x", old=False)
    index.scan()
    _write(root / "zz-settled.bin", b"settled")
    index.sync_path("zz-settled.bin")  # queued after all the fresh ones
    worker = DigestWorker(index, activity, rate=0)
    _drain(worker)  # one pass
    settled = index.get("zz-settled.bin")
    assert settled is not None and settled.sha256 == hashlib.sha256(b"settled").digest()
    assert worker.hashed_files == 1 and index.pending_count() == 150


def test_a_file_changed_during_the_read_is_not_hashed(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    _write(path, b"z" * (3 * 1024**2))
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)

        def append(size: int) -> bool:
            with path.open("ab") as f:
                f.write(b"more")
            return True

        assert hash_open_file(fd, st, before_read=append) is None
        assert hash_open_file(fd, os.fstat(fd)) is not None
    finally:
        os.close(fd)


def test_no_hashing_while_a_transfer_is_in_flight(
    setup: tuple[Path, Index, Activity], tmp_path: Path
) -> None:
    root, index, activity = setup
    _write(root / "a.bin", b"a" * 100)
    index.scan()
    worker = DigestWorker(index, activity, rate=0, idle_poll=0.05)

    async def serve_then_stop() -> None:
        # As another worker holds it; the linger outlasts any stall of a loaded machine.
        serving = Activity(tmp_path / "index.sqlite3.busy", linger=3.0)
        serving.begin()
        worker.start()
        await asyncio.sleep(1.0)
        assert worker.hashed_files == 0 and activity.busy()
        serving.end()
        await asyncio.sleep(0.2)
        assert worker.hashed_files == 0 and activity.busy()  # still lingering after the transfer
        deadline = time.monotonic() + PATIENCE
        while worker.hashed_files == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert worker.hashed_files == 1 and not activity.busy()

    try:
        asyncio.run(serve_then_stop())
    finally:
        worker.stop()
    assert not any(t.name == "ferry-digests" for t in threading.enumerate())


def test_many_short_transfers_keep_the_server_busy(tmp_path: Path) -> None:
    """Small downloads end between requests; the linger keeps the lock (and costs no flock each)."""
    linger = 2.0  # far longer than the gaps, however loaded the machine
    probe = Activity(tmp_path / "busy", linger=linger)

    async def short_transfers() -> None:
        serving = Activity(tmp_path / "busy", linger=linger)
        for _ in range(20):
            serving.begin()
            serving.end()
            await asyncio.sleep(0.02)
            assert probe.busy()
        await asyncio.sleep(linger + 0.2)
        assert not probe.busy()

    asyncio.run(short_transfers())


def test_the_rate_limit_paces_reads(setup: tuple[Path, Index, Activity]) -> None:
    root, index, activity = setup
    _write(root / "a.bin", b"a" * (4 * 1024**2))
    index.scan()
    worker = DigestWorker(index, activity, rate=8 * 1024**2)  # 4 MiB at 8 MiB/s: at least ~0.4 s
    began = time.monotonic()
    _drain(worker)
    assert worker.hashed_files == 1
    assert time.monotonic() - began >= 0.3


def test_identity_is_what_the_etag_is_made_of(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"1")
    st = os.stat(path)
    assert identity(st) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def test_empty_files_are_never_queued_and_have_the_empty_digest(setup: tuple[Path, Index, Activity]) -> None:
    root, index, _ = setup
    for i in range(10):
        _write(root / f"empty-{i}", b"")
    index.scan()
    assert index.pending_count() == 0
    page = index.list_dir("", limit=20)
    assert {e.sha256 for e in page.entries} == {hashlib.sha256(b"").digest()}


def test_a_whole_file_digest_gets_its_piece_hashes_in_the_background(
    setup: tuple[Path, Index, Activity],
) -> None:
    """An upload stores the whole-file digest only; the hasher adds the pieces later."""
    root, index, activity = setup
    data = os.urandom(9 * 1024**2)
    _write(root / "up.bin", data)
    st = os.stat(root / "up.bin")
    index.put_digest(identity(st), FileDigest(hashlib.sha256(data).digest()))
    index.scan()
    DigestWorker(index, activity, rate=0)._round(0)
    stored = index.digest(identity(st))
    assert stored is not None and stored.sha256 == hashlib.sha256(data).digest()
    assert stored.piece_hexes() == tuple(
        hashlib.sha256(data[i : i + MIN_PIECE]).hexdigest() for i in range(0, len(data), MIN_PIECE)
    )


# -- CRC-32s (what a ZIP entry needs), stored beside the digests --------------------------------


def test_the_hasher_stores_each_files_crc32(setup: tuple[Path, Index, Activity]) -> None:
    root, index, activity = setup
    big = os.urandom(MIN_PIECE + 5)  # more than one piece
    _write(root / "big.bin", big)
    _write(root / "small.txt", b"small")
    _write(root / "empty", b"")
    index.scan()
    _drain(DigestWorker(index, activity, rate=0))
    for name, data in (("big.bin", big), ("small.txt", b"small"), ("empty", b"")):
        entry = index.get(name)
        assert entry is not None and entry.crc32 == zlib.crc32(data), name
        stored = index.digest((entry.dev, entry.ino, entry.size, entry.mtime_ns))
        assert stored is not None and stored.crc32 == zlib.crc32(data)
        assert stored.sha256 == hashlib.sha256(data).digest()
    listed = {e.name: e.crc32 for e in index.list_dir("", limit=10).entries}
    assert listed == {"big.bin": zlib.crc32(big), "small.txt": zlib.crc32(b"small"), "empty": 0}
    paged = {e.path: (e.sha256, e.crc32) for e in index.files_with_digests("", recursive=True, limit=10)}
    assert paged["big.bin"] == (hashlib.sha256(big).digest(), zlib.crc32(big))
    assert paged["empty"] == (hashlib.sha256(b"").digest(), 0)


def test_a_digest_without_its_crc32_is_hashed_again(setup: tuple[Path, Index, Activity]) -> None:
    """A whole-file digest of one piece is otherwise done; without a CRC-32 it is read once more."""
    root, index, activity = setup
    _write(root / "old.txt", b"hashed before CRC-32s were kept")
    st = os.stat(root / "old.txt")
    index.put_digest(identity(st), FileDigest(hashlib.sha256(b"hashed before CRC-32s were kept").digest()))
    index.scan()
    entry = index.get("old.txt")
    assert entry is not None and entry.sha256 is not None and entry.crc32 is None
    worker = DigestWorker(index, activity, rate=0)
    _drain(worker)
    assert worker.hashed_files == 1 and index.pending_count() == 0
    stored = index.digest(identity(st))
    assert stored is not None and stored.crc32 == zlib.crc32(b"hashed before CRC-32s were kept")


def test_a_digest_with_its_crc32_is_not_hashed_again(setup: tuple[Path, Index, Activity]) -> None:
    root, index, activity = setup
    _write(root / "up.txt", b"uploaded")
    st = os.stat(root / "up.txt")
    index.put_digest(
        identity(st), FileDigest(hashlib.sha256(b"uploaded").digest(), crc32=zlib.crc32(b"uploaded"))
    )
    index.scan()
    worker = DigestWorker(index, activity, rate=0)
    _drain(worker)
    assert worker.hashed_files == 0 and index.pending_count() == 0


def test_the_digest_store_round_trips_crc32s(setup: tuple[Path, Index, Activity]) -> None:
    _, index, _ = setup
    ident = (1, 2, 3, 4)
    for digest in (
        FileDigest(b"\x01" * 32, crc32=0xFFFFFFFF),  # the largest CRC-32 fits SQLite's integers
        FileDigest(b"\x02" * 32, MIN_PIECE, b"\x03" * 64, crc32=0),
        FileDigest(b"\x04" * 32),  # none known: stays None, not 0
    ):
        index.put_digest(ident, digest)
        assert index.digest(ident) == digest
    assert index.digest((1, 2, 0, 4)) == EMPTY_DIGEST and EMPTY_DIGEST.crc32 == 0


def test_an_index_of_the_previous_schema_is_started_afresh(tmp_path: Path) -> None:
    """Its digests carry no CRC-32: each would need a read anyway, so the cache is rebuilt."""
    root = tmp_path / "root"
    root.mkdir()
    policy = PathPolicy(root=root.resolve())
    db = tmp_path / "index.sqlite3"
    Index(db, policy)
    conn = sqlite3.connect(db)
    with conn:
        previous = [6, *json.loads(schema_identity(policy))[1:]]  # the schema before CRC-32s
        conn.execute("UPDATE meta SET value = ? WHERE key = 'identity'", (json.dumps(previous),))
        conn.execute("DROP TABLE digests")
        conn.execute(
            "CREATE TABLE digests (dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL, "
            "mtime_ns INTEGER NOT NULL, sha256 BLOB NOT NULL, piece_length INTEGER NOT NULL, "
            "pieces BLOB NOT NULL, PRIMARY KEY (dev, ino))"
        )
        conn.execute("INSERT INTO digests VALUES (1, 2, 3, 4, ?, 0, x'')", (b"\x01" * 32,))
    conn.close()
    index = Index(db, policy)
    assert index.digest((1, 2, 3, 4)) is None
    index.put_digest((1, 2, 3, 4), FileDigest(b"\x01" * 32, crc32=7))
    assert index.digest((1, 2, 3, 4)) == FileDigest(b"\x01" * 32, crc32=7)
