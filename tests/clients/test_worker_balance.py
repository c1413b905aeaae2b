"""A real `ferry serve --workers 2`: connections that arrive together are spread evenly over the
two forked workers (app/balance.py), where the event loop alone let one worker take them all.

Which worker holds a connection is read from /proc: the server-side sockets of the port
(/proc/net/tcp) against each worker's descriptors. Marked serial: a worker must be scheduled
within app/balance.py's MAX_DEFER_SECONDS to take its share, which a loaded machine may not do.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ServerFactory, wait_for

pytestmark = [pytest.mark.clients, pytest.mark.serial]

MiB = 1024**2
BURST = 8


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _server_sockets(port: int) -> set[int]:
    """Inodes of the established connections whose local end is `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01" and inode:
                inodes.add(inode)
    return inodes


def _holders(port: int, workers: list[int]) -> Counter[int]:
    """How many of the port's connections each worker holds (uvloop keeps two descriptors of
    an accepted socket: counted once)."""
    wanted = _server_sockets(port)
    held: Counter[int] = Counter()
    for pid in workers:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue  # closed meanwhile
            if link.startswith("socket:[") and int(link[8:-1]) in wanted:
                inodes.add(int(link[8:-1]))
        held[pid] = len(inodes)
    return held


def test_downloads_started_together_are_shared_by_the_workers(ferry: ServerFactory, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(8 * MiB))
    server = ferry(root, "--workers", "2")
    started = lambda: server.log.read_text(errors="replace").count("Application startup complete") == 2  # noqa: E731
    assert wait_for(started), server.log.read_text(errors="replace")[-2000:]
    workers = _children(server.pid)
    assert len(workers) == 2, workers
    request = f"GET /files/big.bin HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    for burst in range(3):
        clients = []
        try:
            for _ in range(BURST):  # all connected before either worker serves: one burst
                client = socket.socket()
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing: held
                client.connect(("127.0.0.1", server.port))
                clients.append(client)
            for client in clients:
                client.sendall(request)
            accepted = lambda: sum(_holders(server.port, workers).values()) == BURST  # noqa: E731
            assert wait_for(accepted), _holders(server.port, workers)
            held = _holders(server.port, workers)
            assert max(held.values()) - min(held[pid] for pid in workers) <= 1, (burst, held)
        finally:
            for client in clients:
                client.close()
        gone = lambda: sum(_holders(server.port, workers).values()) == 0  # noqa: E731
        assert wait_for(gone), _holders(server.port, workers)
    # Both still serve: a plain download through each connection the kernel hands out.
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(b"GET /files/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert client.recv(12) == b"HTTP/1.1 200"
