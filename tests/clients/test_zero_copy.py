"""The zero-copy path (FERRY_ZERO_COPY) against a real server: sendfile really carries the bytes,
cold files do not stall the event loop, and slow readers cost bounded memory."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import PATIENCE, FerryServer, ServerFactory, wait_for
from tests.support.servers import BOTH_TRANSFER_PATHS

pytestmark = pytest.mark.clients


@dataclass(frozen=True)
class Call:
    name: str
    args: str
    result: int


class Trace:
    """strace following every thread of the server, each thread into a file of its own (so no call
    is split across lines by another thread's), started once strace says it has attached."""

    CALL = re.compile(r"^(?P<name>pread64|preadv2?|sendfile)\((?P<args>.*)\)\s+= (?P<result>-?\d+)", re.M)

    def __init__(self, server: FerryServer, prefix: Path) -> None:
        self.server = server
        self.prefix = prefix
        messages = prefix.with_name(prefix.name + ".messages")
        with messages.open("wb") as stderr:
            self.process = subprocess.Popen(
                ["strace", "-f", "-ff", "-s", "0", "-o", str(prefix)]
                + ["-e", "trace=sendfile,pread64,preadv,preadv2", "-p", str(server.pid)],
                stderr=stderr,
            )
        attached = f"Process {server.pid} attached"
        wait_for(lambda: attached in messages.read_text() or self.process.poll() is not None)
        assert attached in messages.read_text(), messages.read_text()

    def calls(self) -> dict[int, list[Call]]:
        """The traced calls so far, in order, by thread id."""
        found: dict[int, list[Call]] = {}
        for path in self.prefix.parent.glob(self.prefix.name + ".*"):
            tid = path.suffix[1:]
            if tid.isdigit():
                found[int(tid)] = [
                    Call(m["name"], m["args"], int(m["result"])) for m in self.CALL.finditer(path.read_text())
                ]
        return found

    def bytes_moved(self) -> int:
        """File bytes read or sent by the traced calls (1-byte page-cache probes included)."""
        return sum(c.result for calls in self.calls().values() for c in calls if c.result > 0)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=PATIENCE)


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
    trace = Trace(server, tmp_path / "mode.strace")
    try:
        with httpx.Client() as client:
            bodies.append(client.get(url).content)
            bodies.append(client.get(url, headers={"Range": "bytes=100-2000000"}).content)
            bodies.append(client.get(url, headers={"Range": "bytes=0-9,-10"}).content)
        # strace writes a call once it has seen it return: wait until every byte sent is accounted for.
        wait_for(lambda: trace.bytes_moved() >= len(data) + 2_000_000 - 100 + 1 + 20)
    finally:
        trace.stop()
    assert bodies[0] == data
    assert bodies[1] == data[100:2000001]
    assert data[:10] in bodies[2] and data[-10:] in bodies[2]
    calls = [c for thread in trace.calls().values() for c in thread]
    assert sum(c.result for c in calls if c.result > 0) >= len(data), "the trace missed file reads"
    sendfiles = [c for c in calls if c.name == "sendfile"]
    if mode == "on":
        # whole file (3 chunks + the checked last byte), one range, two multipart parts
        assert len(sendfiles) >= 5
    else:
        assert sendfiles == []


def _span(call: Call) -> tuple[int, int, int]:
    """(file descriptor, first byte, bytes asked for) of a pread64, preadv2 or sendfile."""
    fields = [field.strip() for field in call.args.split(",")]
    if call.name == "sendfile":  # out_fd, in_fd, [offset] => [new offset], count
        offset = re.match(r"\[(\d+)\]", fields[2])
        assert offset is not None, call
        return int(fields[1]), int(offset[1]), int(fields[-1])
    if call.name == "pread64":  # fd, buffer, count, offset
        return int(fields[0]), int(fields[-1]), int(fields[-2])
    size = re.search(r"iov_len=(\d+)", call.args)  # fd, [iovec], count, offset, flags
    return int(fields[0]), int(call.args.rsplit(",", 2)[1]), int(size[1]) if size else 0


def _descriptors_of(server: FerryServer, path: Path) -> set[int]:
    """The server's open descriptors of `path`."""
    found = set()
    for fd in os.listdir(f"/proc/{server.pid}/fd"):
        try:
            if os.readlink(f"/proc/{server.pid}/fd/{fd}") == str(path):
                found.add(int(fd))
        except FileNotFoundError:
            pass  # closed meanwhile
    return found


@BOTH_TRANSFER_PATHS
def test_cold_file_is_read_off_the_event_loop(ferry: ServerFactory, tmp_path: Path, zero_copy: str) -> None:
    """Pages not in the page cache are read (or sendfile'd) by worker threads; the event-loop thread
    only ever touches cached pages, so other clients never wait behind the disk.

    What is checked is which thread makes which call, not how long calls take (a loaded machine
    stretches every call): on the event-loop thread, file bytes are only read with RWF_NOWAIT (which
    fails rather than wait for the disk) or sent with sendfile after such a read found the first and
    last byte of the span cached; bytes of the cold file go through worker threads."""
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
    size = path.stat().st_size
    server = ferry(root)
    with path.open("rb") as cold:
        os.posix_fadvise(cold.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    trace = Trace(server, tmp_path / "cold.strace")
    try:
        received = hashlib.sha256()
        with httpx.Client(timeout=PATIENCE) as client:
            with client.stream("GET", f"{server.url}/files/cold.bin") as response:
                opened = _descriptors_of(server, path)  # the download's own, not the index's
                for piece in response.iter_raw():
                    received.update(piece)
                    assert client.get(f"{server.url}/healthz").status_code == 200
        wait_for(lambda: trace.bytes_moved() >= size)
    finally:
        trace.stop()
    assert received.hexdigest() == digest.hexdigest()
    threads = trace.calls()
    on_loop = threads.pop(server.pid, [])
    bulk = "sendfile" if zero_copy == "on" else "pread64"
    in_threads = [c for calls in threads.values() for c in calls if c.name == bulk and c.result > 0]
    assert in_threads, "no file bytes were read by a worker thread although the file was cold"
    assert (
        sum(c.result for calls in threads.values() for c in calls if c.result > 0)
        + sum(c.result for c in on_loop if c.result > 0)
        >= size
    ), "the trace missed file reads"
    cached: list[tuple[int, int, int]] = []  # (fd, start, stop) found in the page cache
    assert opened, "the download's file was not open in the server"
    for call in on_loop:
        fd, offset, count = _span(call)
        if fd not in opened:
            continue
        if call.name == "sendfile":
            for byte in (offset, offset + count - 1):
                assert any(f == fd and start <= byte < stop for f, start, stop in cached), (
                    f"the event-loop thread sent byte {byte} without finding it cached first: {call}"
                )
            continue
        assert call.name == "preadv2" and "RWF_NOWAIT" in call.args, (
            f"the event-loop thread read the file with a call that may wait for the disk: {call}"
        )
        if call.result > 0:
            cached.append((fd, offset, offset + call.result))


@BOTH_TRANSFER_PATHS
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


@BOTH_TRANSFER_PATHS
def test_workers_share_the_port(ferry: ServerFactory, storage_tree: Path) -> None:
    server = ferry(storage_tree, "--workers", "2")
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    # Two workers forked from the parent that loaded Ferry (they share its loaded modules; the
    # parent is now the overseer, app/overseer.py), and no other process (a spawned worker runs
    # `-c ...spawn_main`, and spawning adds multiprocessing's resource tracker).
    command = b"".join(os.fsencode(str(arg)) + b"\0" for arg in server.process.args)  # type: ignore[union-attr]
    workers = [pid for pid in children if Path(f"/proc/{pid}/cmdline").read_bytes() == command]
    assert len(workers) == len(children) == 2, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children]
    with httpx.Client() as client:
        for _ in range(20):
            response = client.get(f"{server.url}/files/hello.txt", headers={"Connection": "close"})
            assert response.content == b"hello, ferry\n"
