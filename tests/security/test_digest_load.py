"""Digests on demand and SHA256SUMS cannot be turned into a CPU or memory amplifier, against a real
`ferry serve`: a flood of `Want-Repr-Digest: sha-512` hashes a file once and never holds up an
upload, a HEAD never hashes, and parallel `?checksums=all` on a 100,000-file tree streams within a
bounded memory, refusing the excess with 503 + Retry-After rather than queueing it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FerryServer, ServerFactory, wait_for
from tests.support.raw import read_head

pytestmark = pytest.mark.clients

MiB = 1024**2
BIG = 192 * MiB  # within the default FERRY_HASH_ON_DEMAND_MAX (256 MiB)
PAST = time.time() - 3600
TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHA512 = {"Want-Repr-Digest": "sha-512=10"}


def read_bytes(server: FerryServer) -> int:
    """Bytes the server process has read by system call so far (rchar: page cache included)."""
    for line in Path(f"/proc/{server.pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def on_demand_bytes(server: FerryServer) -> float | None:
    """ferry_on_demand_hash_bytes_total, None if /metrics lacks it."""
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("ferry_on_demand_hash_bytes_total "):
            return float(line.split()[1])
    return None


@pytest.fixture
def big_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    with (root / "big.bin").open("wb") as f:
        f.truncate(BIG)  # sparse: quick to make, as costly to hash as any other
    os.utime(root / "big.bin", (PAST, PAST))
    (root / "in").mkdir()
    return root


def expected_sha512() -> str:
    digest = hashlib.sha512()
    zeros = bytes(MiB)
    for _ in range(BIG // MiB):
        digest.update(zeros)
    return f"sha-512=:{base64.b64encode(digest.digest()).decode()}:"


def timed_put(server: FerryServer, name: str, data: bytes) -> float:
    start = time.monotonic()
    response = httpx.put(f"{server.url}/files/in/{name}", content=data, headers=AUTH, timeout=120)
    assert response.status_code == 201, response.text
    return time.monotonic() - start


def test_a_head_never_hashes_for_an_unknown_algorithm(ferry: ServerFactory, big_root: Path) -> None:
    server = ferry(big_root, "--no-checksums")
    url = f"{server.url}/files/big.bin"
    before_read, before_hashed = read_bytes(server), on_demand_bytes(server)
    for want in ("sha-512=10", "sha-256=10", "sha-512=10, sha-256=5"):
        head = httpx.head(url, headers={"Want-Repr-Digest": want}, timeout=60)
        assert head.status_code == 200 and "repr-digest" not in head.headers  # nothing known yet
    assert read_bytes(server) - before_read < BIG // 4  # the file was not read
    assert before_hashed is not None and on_demand_bytes(server) == before_hashed


def test_a_flood_of_sha512_requests_hashes_once_and_spares_uploads(
    ferry: ServerFactory, big_root: Path
) -> None:
    server = ferry(big_root, "--no-checksums", "--write-token", TOKEN)
    upload = os.urandom(4 * MiB)
    baseline = min(timed_put(server, f"idle-{i}.bin", upload) for i in range(3))
    url = f"{server.url}/files/big.bin"
    before_read, before_hashed = read_bytes(server), on_demand_bytes(server)
    answers: list[httpx.Response] = []
    errors: list[BaseException] = []
    start = threading.Barrier(13)

    def client(method: str) -> None:
        try:
            start.wait(30)
            with httpx.Client(timeout=120) as http:
                for _ in range(3):
                    # A one-byte range: the digest is of the whole file all the same (RFC 9530).
                    answers.append(http.request(method, url, headers={**SHA512, "Range": "bytes=0-0"}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=("GET" if i % 2 else "HEAD",)) for i in range(12)]
    for t in threads:
        t.start()
    start.wait(30)
    loaded = timed_put(server, "busy.bin", upload)
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert loaded < 10 * baseline + 4.0, (loaded, baseline)  # was 0.03 s → 13 s (17 s here)
    # Hashed once: what the process read says at most one file's worth, and so does the metric.
    assert read_bytes(server) - before_read < 2 * BIG
    after_hashed = on_demand_bytes(server)
    assert before_hashed is not None and after_hashed is not None and after_hashed - before_hashed <= BIG
    assert len(answers) == 36
    assert all(r.status_code == (206 if r.request.method == "GET" else 200) for r in answers)
    # A digest sent is right; at least the first GET (an idle pool) waited for it.
    wanted = expected_sha512()
    sent = [r.headers["repr-digest"] for r in answers if "sha-512" in r.headers.get("repr-digest", "")]
    assert sent and all(wanted in field for field in sent)
    # Remembered: a HEAD now answers with it, without hashing again.
    assert wanted in httpx.head(url, headers=SHA512).headers["repr-digest"]
    assert on_demand_bytes(server) == after_hashed


# -- SHA256SUMS of a large tree ------------------------------------------------------------------

FOLDERS, PER_FOLDER = 100, 1000  # 100,000 empty files: their digest is a constant
EMPTY = hashlib.sha256(b"").hexdigest()
PARALLEL = 16


@pytest.fixture
def many_root(tmp_path: Path) -> Path:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(FOLDERS):
        folder = root / f"d{i:03d}"
        folder.mkdir()
        for j in range(PER_FOLDER):
            os.close(os.open(folder / f"f{j:04d}", os.O_CREAT | os.O_WRONLY, 0o644))
    return root


def expected_sums() -> str:
    return "".join(f"{EMPTY}  d{i:03d}/f{j:04d}\n" for i in range(FOLDERS) for j in range(PER_FOLDER))


class PeakRss:
    """The largest RSS of a process seen while running, sampled every 10 ms."""

    def __init__(self, sample: Callable[[], int]) -> None:
        self.sample = sample
        self.peak = sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.sample())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class StalledReader:
    """A raw GET whose client reads the response head, then stops reading (a tiny receive
    window), so the server's side of the body stalls until `rest_of_body`."""

    def __init__(self, port: int, target: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(60)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        self.head, self.buffer = read_head(self.sock)

    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def rest_of_body(self) -> bytes:
        chunks = [self.buffer]
        while chunk := self.sock.recv(1 << 16):
            chunks.append(chunk)
        body = b"".join(chunks)
        if b"transfer-encoding: chunked" in self.head.lower():
            body = dechunk(body)
        return body

    def close(self) -> None:
        self.sock.close()


def dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    rest = data
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(rest[:size])
        rest = rest[size + 2 :]


@pytest.fixture
def sums_server(ferry: ServerFactory, many_root: Path) -> Iterator[FerryServer]:
    server = ferry(many_root)
    url = f"{server.url}/files/?checksums=all"
    expected = expected_sums()
    # The start-up scan indexes the tree in the background: wait until the list is whole.
    assert wait_for(lambda: httpx.get(url, timeout=120).text == expected, 180)
    yield server


def test_parallel_sha256sums_stream_within_bounded_memory(sums_server: FerryServer) -> None:
    server = sums_server
    url = f"{server.url}/files/?checksums=all"
    expected = expected_sums()
    baseline = max(server.rss_bytes() for _ in range(3))
    # Two clients that stop reading hold both generations of this worker: every other request
    # is refused at once with 503 + Retry-After, not queued behind them.
    holders = [StalledReader(server.port, "/files/?checksums=all") for _ in range(2)]
    try:
        for holder in holders:
            assert holder.status() == 200
        refused_now = [httpx.get(url, timeout=60) for _ in range(PARALLEL - 2)]
        assert all(r.status_code == 503 and int(r.headers["retry-after"]) >= 1 for r in refused_now)
        for holder in holders:
            assert holder.rest_of_body() == expected.encode()  # a stalled list resumes whole
    finally:
        for holder in holders:
            holder.close()
    results: list[tuple[int, str, str | None]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(PARALLEL)

    def client() -> None:
        try:
            start.wait(30)
            r = httpx.get(url, timeout=300)
            results.append((r.status_code, r.text, r.headers.get("retry-after")))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(PARALLEL)]
    with PeakRss(server.rss_bytes) as rss:
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    assert not errors, errors
    growth = rss.peak - baseline
    assert growth < 64 * MiB, f"RSS grew by {growth / MiB:.0f} MiB"  # was ~450 MiB
    statuses = sorted(status for status, _, _ in results)
    assert len(results) == PARALLEL and set(statuses) <= {200, 503}, statuses
    assert all(text == expected for status, text, _ in results if status == 200)  # whole, in order
    refused = [after for status, _, after in results if status == 503]
    assert all(after is not None and int(after) >= 1 for after in refused), statuses
    assert 200 in statuses
    assert httpx.get(url, timeout=120).text == expected  # and it serves on
