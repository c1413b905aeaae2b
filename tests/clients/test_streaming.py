"""Streaming against a real `ferry serve`: huge offsets, flat memory, released descriptors,
slow readers, and files that change while they are being sent."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import PATIENCE, FerryServer, ServerFactory, quickest, wait_for
from tests.support.raw import read_head
from tests.support.servers import BOTH_TRANSFER_PATHS

pytestmark = pytest.mark.clients

MiB = 1024**2
GiB = 1024**3
TIMEOUT = httpx.Timeout(30.0)


def sparse_file(path: Path, size: int, markers: dict[int, bytes] | None = None) -> Path:
    """A file of `size` bytes that costs no disk: zeros except the given marker bytes."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in (markers or {}).items():
            f.seek(offset)
            f.write(data)
    return path


def raw_get(server: FerryServer, target: str, *, rcvbuf: int | None = None) -> socket.socket:
    """A raw socket with a GET for `target` already sent (no client library in between)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def settled_fds(server: FerryServer) -> int:
    """The server's open descriptor count once it has stopped changing (connections closed)."""
    counts = [server.open_fds()]
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        time.sleep(0.1)
        counts.append(server.open_fds())
        if len(counts) >= 5 and len(set(counts[-5:])) == 1:
            break
    return counts[-1]


# --- offsets past 2^32 ------------------------------------------------------------------------

BIG = 4 * GiB + MiB
AROUND_2_32 = bytes(range(0x41, 0x41 + 16))  # b"ABCDEFGHIJKLMNOP" at 2**32 - 8 .. 2**32 + 7
TAIL = b"--the-last-32-bytes-of-the-file-"
FIRST = b"first bytes"


@pytest.fixture
def big_sparse(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "big"
    root.mkdir()
    path = sparse_file(
        root / "huge.bin",
        BIG,
        {0: FIRST, 2**32 - 8: AROUND_2_32, BIG - len(TAIL): TAIL},
    )
    yield root
    path.unlink()


@BOTH_TRANSFER_PATHS
def test_range_across_the_2_32_offset(ferry: ServerFactory, big_sparse: Path) -> None:
    server = ferry(big_sparse)
    url = f"{server.url}/files/huge.bin"
    with httpx.Client(timeout=TIMEOUT) as client:
        r = client.get(url, headers={"Range": "bytes=4294967288-4294967303"})
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes 4294967288-4294967303/{BIG}"
        assert r.headers["content-length"] == "16"
        assert r.content == AROUND_2_32

        # A range that starts below 2^32 and ends well past it, sliced out of the zeros.
        r = client.get(url, headers={"Range": f"bytes={2**32 - 4}-{2**32 + 100}"})
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes {2**32 - 4}-{2**32 + 100}/{BIG}"
        assert r.content == AROUND_2_32[4:] + bytes(105 - 12)

        # Entirely above 2^32.
        r = client.get(url, headers={"Range": f"bytes={2**32 + 4}-{2**32 + 7}"})
        assert r.status_code == 206
        assert r.content == AROUND_2_32[12:]


@BOTH_TRANSFER_PATHS
def test_suffix_and_open_ranges_reach_the_end_of_a_4_gib_file(ferry: ServerFactory, big_sparse: Path) -> None:
    server = ferry(big_sparse)
    url = f"{server.url}/files/huge.bin"
    with httpx.Client(timeout=TIMEOUT) as client:
        r = client.get(url, headers={"Range": f"bytes=-{len(TAIL)}"})
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes {BIG - len(TAIL)}-{BIG - 1}/{BIG}"
        assert r.content == TAIL

        r = client.get(url, headers={"Range": f"bytes={BIG - MiB}-"})
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes {BIG - MiB}-{BIG - 1}/{BIG}"
        assert len(r.content) == MiB
        # The last MiB starts at 2**32 exactly: the upper half of the marker, zeros, the tail.
        assert r.content == AROUND_2_32[8:] + bytes(MiB - 8 - len(TAIL)) + TAIL

        # End clamped to the file; first bytes still right.
        r = client.get(url, headers={"Range": f"bytes={BIG - 5}-{BIG * 2}"})
        assert r.status_code == 206
        assert r.content == TAIL[-5:]
        r = client.get(url, headers={"Range": "bytes=0-10"})
        assert r.content == FIRST

        r = client.get(url, headers={"Range": f"bytes={BIG}-"})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{BIG}"


def test_head_reports_the_exact_length_of_a_4_gib_file(ferry: ServerFactory, big_sparse: Path) -> None:
    server = ferry(big_sparse)
    r = httpx.head(f"{server.url}/files/huge.bin", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(BIG) == "4296015872"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.content == b""


# --- bounded memory ---------------------------------------------------------------------------


@BOTH_TRANSFER_PATHS
def test_server_rss_stays_flat_while_2_gib_download(ferry: ServerFactory, tmp_path: Path) -> None:
    root = tmp_path / "rss"
    root.mkdir()
    size = 2 * GiB
    sparse_file(root / "two.bin", size, {size - 4: b"END!"})
    server = ferry(root, "--chunk-size", "1MiB")
    url = f"{server.url}/files/two.bin"

    # Warm-up: the first download loads code paths, the executor's threads and their buffers.
    with httpx.Client(timeout=TIMEOUT) as client:
        assert len(client.get(url, headers={"Range": "bytes=0-8388607"}).content) == 8 * MiB
    baseline = server.rss_bytes()

    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(server.rss_bytes())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    received = 0
    tail = b""
    try:
        with httpx.stream("GET", url, timeout=TIMEOUT) as r:
            assert r.status_code == 200
            assert r.headers["content-length"] == str(size)
            for chunk in r.iter_raw(1024 * 1024):
                received += len(chunk)
                tail = (tail + chunk)[-4:]
    finally:
        done.set()
        sampler.join()
    samples.append(server.rss_bytes())

    assert received == size
    assert tail == b"END!"
    assert len(samples) > 5
    growth = max(samples) - baseline
    assert growth < 50 * MiB, f"server RSS grew {growth / MiB:.1f} MiB (baseline {baseline / MiB:.1f} MiB)"


# --- descriptors and slow readers -------------------------------------------------------------


@BOTH_TRANSFER_PATHS
def test_50_aborted_downloads_release_their_descriptors(ferry: ServerFactory, tmp_path: Path) -> None:
    root = tmp_path / "abort"
    root.mkdir()
    sparse_file(root / "one.bin", GiB)
    server = ferry(root)
    target = "/files/one.bin"

    # Warm-up so lazily created descriptors (executor threads, loop internals) already exist.
    sock = raw_get(server, target)
    read_head(sock)
    sock.close()
    baseline = settled_fds(server)

    sockets = []
    try:
        for i in range(50):
            sock = raw_get(server, target)
            head, _ = read_head(sock)
            assert head.startswith(b"HTTP/1.1 200"), head
            sock.recv(65536)
            if i % 2:
                # Half of them reset the connection (SO_LINGER 0 → RST), half just close it.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sockets.append(sock)
        during = server.open_fds()
        # Each download in flight holds at least its socket (and its file).
        assert during >= baseline + 50, f"the downloads were not all in flight: {during} vs {baseline}"
    finally:
        for sock in sockets:
            sock.close()

    assert wait_for(lambda: server.open_fds() <= baseline), (
        f"open descriptors {server.open_fds()} did not return to the baseline {baseline}: "
        f"{sorted(os.readlink(f'/proc/{server.pid}/fd/{fd}') for fd in os.listdir(f'/proc/{server.pid}/fd'))}"
    )
    # And the server still serves.
    assert httpx.get(f"{server.url}/healthz").status_code == 200


@BOTH_TRANSFER_PATHS
def test_a_slow_reader_does_not_hold_up_other_clients(ferry: ServerFactory, tmp_path: Path) -> None:
    root = tmp_path / "slow"
    root.mkdir()
    sparse_file(root / "big.bin", GiB)
    small = os.urandom(64 * 1024)
    (root / "small.bin").write_bytes(small)
    server = ferry(root)

    slow = [raw_get(server, "/files/big.bin", rcvbuf=4096) for _ in range(3)]
    try:
        for sock in slow:
            head, _ = read_head(sock)
            assert head.startswith(b"HTTP/1.1 200")
        time.sleep(0.3)  # let the slow connections fill their buffers and block

        def fetch(i: int) -> bytes:
            with httpx.Client(timeout=PATIENCE) as client:
                if i % 5 == 0:
                    assert client.get(f"{server.url}/healthz").status_code == 200
                return client.get(f"{server.url}/files/small.bin").content

        def batch() -> list[bytes]:
            with ThreadPoolExecutor(max_workers=10) as pool:
                return list(pool.map(fetch, range(20)))

        batches, elapsed = quickest(batch, tries=2)
        assert all(body == small for bodies in batches for body in bodies)
        assert elapsed < 5, f"20 small downloads took {elapsed:.1f}s behind a slow reader"

        # The slow readers are still connected and can continue.
        for sock in slow:
            assert sock.recv(65536)
    finally:
        for sock in slow:
            sock.close()


# --- files that change while they are being sent ----------------------------------------------

PATTERN_SIZE = 200 * MiB
BLOCK = MiB


def pattern_block(i: int, tag: bytes = b"orig") -> bytes:
    """1 MiB whose every 16-byte cell names its block: distinct per block and per version."""
    cell = tag + i.to_bytes(4, "big") + b"-ferry-"
    cell += b"\n" * (16 - len(cell))
    return cell * (BLOCK // 16)


def write_pattern(path: Path, size: int, tag: bytes = b"orig") -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(size // BLOCK):
            block = pattern_block(i, tag)
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def modify(path: Path, how: str) -> None:
    if how == "overwrite-middle":
        with path.open("r+b") as f:
            f.seek(PATTERN_SIZE // 2)
            f.write(b"X" * 4096)
    elif how == "overwrite-near-end":
        with path.open("r+b") as f:
            f.seek(PATTERN_SIZE - BLOCK)
            f.write(b"Y" * 100)
    elif how == "append":
        with path.open("ab") as f:
            f.write(b"appended")
    elif how == "truncate":
        os.truncate(path, PATTERN_SIZE // 2)
    else:
        raise AssertionError(how)


def pattern_prefix_sha(length: int, tag: bytes = b"orig") -> str:
    """sha256 of the first `length` bytes of `write_pattern`'s file."""
    digest = hashlib.sha256()
    for i in range(length // BLOCK):
        digest.update(pattern_block(i, tag))
    if length % BLOCK:
        digest.update(pattern_block(length // BLOCK, tag)[: length % BLOCK])
    return digest.hexdigest()


def slow_download(url: str, action: Callable[[], None], *, after: int) -> tuple[int, str, Exception | None]:
    """Download `url`, pausing to run `action` once `after` bytes have arrived.

    The server cannot run ahead of the client by more than its write buffer and the socket
    buffers, so `action` happens while most of the file is still unsent.
    Returns (bytes received, sha256 of them, the error that ended the download or None).
    """
    digest = hashlib.sha256()
    received = 0
    acted = False
    error: Exception | None = None
    try:
        with httpx.stream("GET", url, timeout=TIMEOUT) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw(256 * 1024):
                received += len(chunk)
                digest.update(chunk)
                if not acted and received >= after:
                    action()
                    acted = True
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        error = exc
    assert acted
    return received, digest.hexdigest(), error


@BOTH_TRANSFER_PATHS
@pytest.mark.parametrize("how", ["overwrite-middle", "overwrite-near-end", "append", "truncate"])
def test_file_modified_in_place_never_yields_a_mixed_complete_body(
    ferry: ServerFactory, tmp_path: Path, how: str
) -> None:
    root = tmp_path / "changing"
    root.mkdir()
    path = root / "pattern.bin"
    original = write_pattern(path, PATTERN_SIZE)
    time.sleep(0.05)  # the modification must land in a later mtime tick than the original
    server = ferry(root, "--chunk-size", "1MiB")

    received, sha, error = slow_download(
        f"{server.url}/files/pattern.bin", lambda: modify(path, how), after=16 * MiB
    )

    if received == PATTERN_SIZE and error is None:
        assert sha == original, f"{how}: a full-length body that mixes two versions of the file"
    else:
        # Aborted: the client must be able to tell (short body against Content-Length).
        assert received < PATTERN_SIZE, f"{how}: received {received} bytes, more than the file"
        assert error is not None, f"{how}: a short body without a protocol error"
        # What did arrive is a prefix of the original version.
        assert sha == pattern_prefix_sha(received), f"{how}: the bytes sent before the abort are wrong"
    # The server survives and serves the new version whole.
    r = httpx.get(f"{server.url}/files/pattern.bin", headers={"Range": "bytes=0-15"}, timeout=TIMEOUT)
    assert r.status_code == 206


@BOTH_TRANSFER_PATHS
def test_file_replaced_while_sent_keeps_serving_the_opened_version(
    ferry: ServerFactory, tmp_path: Path
) -> None:
    root = tmp_path / "replaced"
    root.mkdir()
    path = root / "pattern.bin"
    size = 64 * MiB
    original = write_pattern(path, size)
    staged = tmp_path / "staged.bin"
    replacement = write_pattern(staged, size, tag=b"NEW!")
    server = ferry(root, "--chunk-size", "1MiB")
    url = f"{server.url}/files/pattern.bin"

    received, sha, error = slow_download(url, lambda: os.replace(staged, path), after=4 * MiB)

    assert error is None, f"the opened version was not served completely: {error!r}"
    assert received == size
    assert sha == original
    # New requests get the replacement.
    with httpx.stream("GET", url, timeout=TIMEOUT) as r:
        digest = hashlib.sha256()
        for chunk in r.iter_raw():
            digest.update(chunk)
    assert digest.hexdigest() == replacement
