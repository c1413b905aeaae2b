"""The zero-copy path (FERRY_ZERO_COPY) against a real server: sendfile really carries the bytes,
cold files do not stall the event loop, and slow readers cost bounded memory."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import FerryServer, ServerFactory

pytestmark = pytest.mark.clients


def _syscalls(server: FerryServer, action: object) -> dict[str, int]:
    """Count the file-transfer syscalls the server makes while `action()` runs (strace -c)."""
    out = server.log.with_suffix(".strace")
    tracer = subprocess.Popen(
        [
            "strace",
            "-f",
            "-c",
            "-o",
            str(out),
            "-e",
            "trace=sendfile,pread64,preadv,preadv2",
            "-p",
            str(server.pid),
        ],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attach to every thread first
    try:
        action()  # type: ignore[operator]
        time.sleep(0.2)
    finally:
        tracer.terminate()
        tracer.wait(timeout=10)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        if fields and fields[-1] in ("sendfile", "pread64", "preadv", "preadv2"):
            counts[fields[-1]] = int(fields[3])  # % time, seconds, usecs/call, calls, [errors,] syscall
    return counts


@pytest.mark.parametrize("mode", ["on", "off"])
def test_zero_copy_mode_decides_whether_sendfile_carries_the_bytes(
    ferry: ServerFactory, tmp_path: Path, mode: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(3 * 1024 * 1024 + 17)
    (root / "f.bin").write_bytes(data)
    server = ferry(root, "--zero-copy", mode, "--chunk-size", "1MiB")
    url = f"{server.url}/files/f.bin"
    bodies: list[bytes] = []

    def downloads() -> None:
        with httpx.Client() as client:
            bodies.append(client.get(url).content)
            bodies.append(client.get(url, headers={"Range": "bytes=100-2000000"}).content)
            bodies.append(client.get(url, headers={"Range": "bytes=0-9,-10"}).content)

    counts = _syscalls(server, downloads)
    assert bodies[0] == data
    assert bodies[1] == data[100:2000001]
    assert data[:10] in bodies[2] and data[-10:] in bodies[2]
    if mode == "on":
        # whole file (3 chunks + the checked last byte), one range, two multipart parts
        assert counts.get("sendfile", 0) >= 5
    else:
        assert counts.get("sendfile", 0) == 0


def test_cold_file_is_read_off_the_event_loop(ferry: ServerFactory, tmp_path: Path, zero_copy: str) -> None:
    """Pages not in the page cache are read (or sendfile'd) by worker threads; the event-loop thread
    only ever touches cached pages, so other clients never wait behind the disk."""
    root = tmp_path / "root"
    root.mkdir()
    path = root / "cold.bin"
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(64):
            chunk = block[i:] + block[:i]
            f.write(chunk)
            digest.update(chunk)
        f.flush()
        os.fsync(f.fileno())
    server = ferry(root)
    with path.open("rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    trace = tmp_path / "cold.strace"
    tracer = subprocess.Popen(
        [
            "strace",
            "-f",
            "-T",
            "-o",
            str(trace),
            "-e",
            "trace=pread64,preadv2,sendfile",
            "-p",
            str(server.pid),
        ],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    latencies: list[float] = []
    try:
        received = hashlib.sha256()
        with httpx.Client(timeout=60) as client:
            with client.stream("GET", f"{server.url}/files/cold.bin") as response:
                for piece in response.iter_raw():
                    received.update(piece)
                    started = time.monotonic()
                    assert client.get(f"{server.url}/healthz").status_code == 200
                    latencies.append(time.monotonic() - started)
    finally:
        time.sleep(0.2)
        tracer.terminate()
        tracer.wait(timeout=10)
    assert received.hexdigest() == digest.hexdigest()
    calls = [
        (int(m["tid"]), m["call"], float(m["secs"]))
        for m in re.finditer(
            r"^(?P<tid>\d+) +(?P<call>pread64|preadv2|sendfile)\(.*<(?P<secs>[\d.]+)>$",
            trace.read_text(),
            re.M,
        )
    ]
    bulk = "sendfile" if zero_copy == "on" else "pread64"
    in_threads = [c for c in calls if c[0] != server.pid and c[1] == bulk]
    on_loop = [c for c in calls if c[0] == server.pid]
    assert in_threads, "no file bytes were read by a worker thread although the file was cold"
    slowest = max((secs for _, _, secs in on_loop), default=0.0)
    assert slowest < 0.005, f"the event-loop thread spent {slowest * 1000:.1f} ms in one file read"
    assert max(latencies) < 2.0


def test_slow_readers_cost_bounded_memory(ferry: ServerFactory, tmp_path: Path, zero_copy: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with (root / "big.bin").open("wb") as f:
        f.truncate(1024**3)
    server = ferry(root, "--chunk-size", "1MiB", "--write-buffer", "256KiB")
    httpx.get(f"{server.url}/files/big.bin", headers={"Range": "bytes=0-1048575"})  # warm up
    baseline = server.rss_bytes()
    readers = []
    for _ in range(24):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        readers.append(sock)
    try:
        time.sleep(2.0)  # every response has filled whatever it is allowed to queue
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        growth = server.rss_bytes() - baseline
        # At most one chunk plus the write buffer per connection, with room for interpreter noise.
        assert growth < 24 * (1024**2 + 256 * 1024) + 32 * 1024**2, f"RSS grew {growth / 2**20:.1f} MiB"
    finally:
        for sock in readers:
            sock.close()


def test_workers_share_the_port(ferry: ServerFactory, storage_tree: Path) -> None:
    server = ferry(storage_tree, "--workers", "2")
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    # uvicorn's supervisor spawns one Python process per worker (multiprocessing spawn).
    workers = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children]
    with httpx.Client() as client:
        for _ in range(20):
            response = client.get(f"{server.url}/files/hello.txt", headers={"Connection": "close"})
            assert response.content == b"hello, ferry\n"
