"""Fair use (issue 7, "Fair use") against a real `ferry serve`: FERRY_MAX_CONNECTIONS_PER_IP caps
concurrent downloads per client address with 429 + Retry-After, and FERRY_RATE_LIMIT paces each
download after FERRY_RATE_LIMIT_AFTER bytes, each download on its own.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FerryServer, ServerFactory, build_storage_tree, quickest, wait_for
from tests.security.support import Outside, assert_healthy, assert_no_canary, parse_head
from tests.support.raw import read_head

# Wall-clock bounds (pacing, timeouts): run alone, after the parallel part of `make test`.
pytestmark = [pytest.mark.clients, pytest.mark.serial]

MIB = 1024**2
BIG = 64 * MIB  # far more than loopback socket buffers hold: a download that is not read stays open


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    tree = build_storage_tree(tmp_path)
    with (tree / "big.bin").open("wb") as f:
        f.truncate(BIG)
    (tree / "eight.bin").write_bytes(bytes(range(256)) * (8 * MIB // 256))
    watch = Outside.watch(tmp_path, tree, tmp_path / "cwd")
    yield tree
    watch.assert_untouched()


class Stalled:
    """A download whose head has arrived and whose body the client does not read (yet)."""

    def __init__(
        self, server: FerryServer, target: str = "/files/big.bin", source: str | None = None
    ) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", server.port), timeout=10, source_address=(source, 0) if source else None
        )
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head, self.body_start = read_head(self.sock)
        received = head + b"\r\n\r\n" + self.body_start
        status_line, fields = parse_head(head)
        self.status = int(status_line.split()[1])
        self.headers = dict(fields)
        self.raw = received

    def finish(self) -> int:
        """Read the rest of the body; returns its whole length."""
        total = len(self.body_start)
        buffer = bytearray(4 << 20)
        while n := self.sock.recv_into(buffer):
            total += n
        self.sock.close()
        return total

    def close(self) -> None:
        self.sock.close()


def _wait_for_status(server: FerryServer, status: int, timeout: float = 5) -> Stalled:
    deadline = time.monotonic() + timeout
    while True:
        attempt = Stalled(server)
        if attempt.status == status or time.monotonic() > deadline:
            return attempt
        attempt.close()
        time.sleep(0.1)


def test_third_concurrent_download_from_one_address_is_429(ferry: ServerFactory, root: Path) -> None:
    server = ferry(root, "--max-connections-per-ip", "2")
    first, second = Stalled(server), Stalled(server)
    assert (first.status, second.status) == (200, 200)
    third = Stalled(server)
    assert third.status == 429, third.raw[:300]
    retry_after = third.headers.get("retry-after", "")
    assert retry_after.isdigit() and int(retry_after) >= 1, third.headers
    assert_no_canary(third.raw)
    third.close()
    # What does not send a body takes no slot: HEAD, 304, 416, listings, health.
    with httpx.Client(base_url=server.url) as client:
        assert client.head("/files/big.bin").status_code == 200
        etag = client.head("/files/hello.txt").headers["etag"]
        assert client.get("/files/hello.txt", headers={"If-None-Match": etag}).status_code == 304
        assert client.get("/files/hello.txt", headers={"Range": "bytes=999-"}).status_code == 416
        assert client.get("/files/?format=json").status_code == 200
    assert_healthy(server)
    # Another address has slots of its own (127.0.0.2 is loopback too).
    other = Stalled(server, source="127.0.0.2")
    assert other.status == 200
    other.close()
    # One download finishes: a new one is accepted.
    assert first.finish() == BIG
    fourth = _wait_for_status(server, 200)
    assert fourth.status == 200, fourth.raw[:300]
    # One is abandoned mid-body: its slot comes back too.
    second.close()
    fifth = _wait_for_status(server, 200)
    assert fifth.status == 200, fifth.raw[:300]
    assert fourth.finish() == BIG
    assert fifth.finish() == BIG
    assert_healthy(server)


def test_without_the_setting_there_is_no_cap(ferry: ServerFactory, root: Path) -> None:
    server = ferry(root)
    downloads = [Stalled(server) for _ in range(6)]
    assert [d.status for d in downloads] == [200] * 6
    for d in downloads:
        d.close()


class Timed(threading.Thread):
    """Download a file, noting when the first MiB and the whole body had arrived."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.first_mib: float | None = None
        self.total = 0.0
        self.body = bytearray()
        self.started = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.started = time.monotonic()
            with httpx.stream("GET", self.url, timeout=30) as response:
                assert response.status_code == 200
                for chunk in response.iter_raw(64 * 1024):
                    self.body += chunk
                    if self.first_mib is None and len(self.body) >= MIB:
                        self.first_mib = time.monotonic() - self.started
            self.total = time.monotonic() - self.started
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.parametrize("zero_copy", ["off", "on"])
def test_rate_limit_paces_each_download_after_the_free_part(ferry: ServerFactory, root: Path) -> None:
    """--rate-limit 2MiB --rate-limit-after 1MiB: the first MiB at once, the other 7 MiB at
    2 MiB/s (~3.5 s); a second download started meanwhile is paced on its own, not sharing."""
    server = ferry(root, "--rate-limit", "2MiB", "--rate-limit-after", "1MiB")
    url = f"{server.url}/files/eight.bin"
    first = Timed(url)
    first.start()
    wait_for(lambda: first.first_mib is not None or first.error is not None)
    second = Timed(url)
    second.start()
    first.join(30)
    second.join(30)
    expected = (root / "eight.bin").read_bytes()
    for download in (first, second):
        assert download.error is None, download.error
        assert bytes(download.body) == expected
        assert download.first_mib is not None
        # The free MiB came at once: in less time than two paced ones took (relative, as a loaded
        # machine slows both).
        paced_mib = (download.total - download.first_mib) / 7
        assert download.first_mib < 2 * paced_mib, (download.first_mib, paced_mib)
        assert download.total >= 3.0, f"8 MiB in {download.total:.2f}s: not paced"
        # Independent pacing: sharing one 2 MiB/s budget would take two downloads 7+ s.
        assert download.total < 6.0, f"8 MiB in {download.total:.2f}s: paced together, not each"
    assert second.started < first.started + first.total / 2, "the second download did not overlap the first"
    assert_healthy(server)


def test_small_downloads_are_not_paced(ferry: ServerFactory, root: Path) -> None:
    server = ferry(root, "--rate-limit", "2MiB", "--rate-limit-after", "1MiB")
    first_mib = {"Range": "bytes=0-1048575"}
    responses, seconds = quickest(lambda: httpx.get(f"{server.url}/files/eight.bin", headers=first_mib))
    assert all(r.status_code == 206 and len(r.content) == MIB for r in responses)
    assert seconds < 0.75
