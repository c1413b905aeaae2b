"""No amplification (ANCHORS.md §3.2 classes 9-11, §3.5 classes 25 and 29) against a real
`ferry serve`: Range sets are bounded in count and total size, a huge Range header parses in
linear time, overflowing numbers are just big numbers, listings and searches are paginated with a
maximum page size, and no request makes the server's memory grow by a large file.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import FerryServer, ServerPool, quickest
from tests.security.support import Outside, assert_healthy, assert_no_canary, get, parse_head
from tests.support.raw import read_head
from tests.support.servers import module_pool

pytestmark = pytest.mark.clients

GIB = 1024**3
BIG = GIB  # big.bin: a sparse 1 GiB file
SMALL = 1024  # digits.txt from the shared tree
MANY = 1500  # entries in many/
BIG_HEADERS = ("--max-header-size", "1MiB")
MAX_RANGES = ("--max-header-size", "1MiB", "--max-ranges", "1000")


def _prepare(shared: ServerPool) -> None:
    with (shared.root / "big.bin").open("wb") as f:
        f.truncate(BIG)
    many = shared.root / "many"
    many.mkdir()
    for i in range(MANY):
        (many / f"entry-{i:05d}.txt").write_bytes(b"x")


pool = module_pool("amplification", _prepare)


@pytest.fixture
def outside(pool: ServerPool) -> Iterator[Outside]:
    watch = Outside.watch(pool.base, pool.root, pool.cwd)
    yield watch
    watch.assert_untouched()


def head_only(server: FerryServer, target: str, *headers: str) -> tuple[int, dict[str, str], float]:
    """Send a GET and read only the response head, then hang up: (status, headers, seconds)."""
    lines = [f"GET {target} HTTP/1.1", "Host: x", *headers, "", ""]
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1"))
        head, rest = read_head(sock)
    seconds = time.monotonic() - start
    status_line, fields = parse_head(head)
    assert_no_canary(head + rest)
    return int(status_line.split()[1]), dict(fields), seconds


def one_byte_ranges(count: int, step: int = 2) -> str:
    return "bytes=" + ",".join(f"{i * step}-{i * step}" for i in range(count))


# --------------------------------------------------------------------------- range sets


@pytest.mark.parametrize(
    ("flags", "range_header", "expected"),
    [
        pytest.param((), "bytes=" + ",".join(["0-"] * 1000), 200, id="0-x1000"),
        pytest.param((), "bytes=" + ",".join(["-1073741824"] * 1000), 200, id="whole-suffix-x1000"),
        pytest.param(MAX_RANGES, "bytes=" + ",".join(["0-"] * 1000), 200, id="0-x1000-max-ranges-1000"),
        pytest.param(MAX_RANGES, "bytes=" + ",".join(["0-536870912"] * 3), 200, id="overlapping-halves"),
        pytest.param(BIG_HEADERS, one_byte_ranges(10_000), 200, id="10000-one-byte"),
        pytest.param(MAX_RANGES, one_byte_ranges(10_000), 200, id="10000-one-byte-max-ranges-1000"),
        pytest.param(MAX_RANGES, one_byte_ranges(1001), 200, id="max-ranges-plus-one"),
        pytest.param((), one_byte_ranges(17), 200, id="default-max-ranges-plus-one"),
        pytest.param(BIG_HEADERS, "bytes=" + ",".join(["0-0"] * 10_000), 200, id="same-byte-x10000"),
    ],
)
def test_range_amplification_gets_the_file_once(
    served: Callable[..., FerryServer],
    outside: Outside,
    flags: tuple[str, ...],
    range_header: str,
    expected: int,
) -> None:
    server = served(*flags)
    timings = []
    for _ in range(3):  # the fastest of three: a loaded machine stalls some, a slow path all
        status, fields, seconds = head_only(server, "/files/big.bin", f"Range: {range_header}")
        assert status == expected, fields
        assert int(fields["content-length"]) <= BIG
        timings.append(seconds)
    assert min(timings) < 1.5, f"{len(range_header)} bytes of Range took {min(timings):.2f}s"
    assert_healthy(server)


def test_many_ranges_within_the_limit_stay_smaller_than_the_file(
    served: Callable[..., FerryServer], outside: Outside
) -> None:
    """1,000 one-byte ranges (the highest FERRY_MAX_RANGES) of the 1 GiB file: one multipart
    response whose whole length is far below the file's, sent and read quickly."""
    server = served(*MAX_RANGES)
    ranges = {"Range": one_byte_ranges(1000, step=4096)}
    responses, seconds = quickest(lambda: httpx.get(f"{server.url}/files/big.bin", headers=ranges))
    assert [r.status_code for r in responses] == [206] * len(responses)
    response = responses[-1]
    assert int(response.headers["content-length"]) == len(response.content) < BIG // 1000
    boundary = response.headers["content-type"].partition("boundary=")[2]
    assert response.content.count(f"--{boundary}\r\n".encode()) == 1000
    assert seconds < 3, seconds


@pytest.mark.parametrize("count", [2, 16])
def test_multipart_overhead_is_bounded_by_the_range_count(
    served: Callable[..., FerryServer], outside: Outside, count: int
) -> None:
    """On a small file the multipart framing can outweigh the bytes asked for; FERRY_MAX_RANGES
    (default 16) bounds it: each part costs a fixed few hundred bytes at most."""
    server = served()
    response = httpx.get(f"{server.url}/files/digits.txt", headers={"Range": one_byte_ranges(count)})
    assert response.status_code == 206
    assert len(response.content) <= count + count * 200, len(response.content)


# --------------------------------------------------------------------------- quadratic parsing


def sixty_k(specs: Iterator[str]) -> str:
    """A `bytes=` Range header of as many of `specs` as fit in 60 KiB."""
    header = "bytes="
    for spec in specs:
        if len(header) + len(spec) + 1 > 60 * 1024:
            return header
        header += spec if header.endswith("=") else "," + spec
    raise AssertionError("not enough specs for 60 KiB")


LONG_HEADERS = [
    pytest.param(sixty_k(f"{i * 7}-{i * 7 + 3}" for i in range(10**5)), id="many-ranges"),
    pytest.param(sixty_k(f"{i}-" for i in range(10_000, 10**5)), id="many-open-ranges"),
    pytest.param("bytes=0-0" + "," * 60_000, id="empty-elements"),
    pytest.param("bytes=" + " ," * 30_000 + "0-0", id="whitespace-elements"),
    pytest.param("bytes=" + "1" * 60_000 + "-", id="one-huge-number"),
    pytest.param("bytes=0-" + "9" * 60_000, id="one-huge-last"),
    pytest.param("bytes=-" + "9" * 60_000, id="one-huge-suffix"),
    pytest.param("bytes=" + "-" * 60_000, id="dashes"),
    pytest.param("bytes=" + "0-0,1-1," * 7_500, id="adjacent-merge"),
    pytest.param(sixty_k(f"{i}-{1_000_000 - i}" for i in range(10**5)), id="nested-merge"),
    pytest.param("bytes" + "=" * 60_000, id="equals"),
    pytest.param("x" * 60_000, id="no-unit"),
]


@pytest.mark.parametrize("range_header", LONG_HEADERS)
def test_a_60k_range_header_parses_fast(
    served: Callable[..., FerryServer], outside: Outside, range_header: str
) -> None:
    assert 59_000 <= len(range_header) <= 64 * 1024
    server = served(*BIG_HEADERS)
    timings = []
    for _ in range(3):
        status, fields, seconds = head_only(server, "/files/big.bin", f"Range: {range_header}")
        assert status in (200, 206, 416), fields
        assert int(fields["content-length"]) <= BIG
        timings.append(seconds)
    assert min(timings) < 0.5, f"a 60 KiB Range header took {min(timings):.2f}s"
    assert_healthy(server)


# --------------------------------------------------------------------------- integer overflow

OVERFLOW = [
    "bytes=-9223372036854775808",
    "bytes=-9223372036854775809",
    "bytes=0-18446744073709551615",
    "bytes=0-18446744073709551616",
    "bytes=18-18446744073709551615",
    "bytes=-65535,-9223372036854710273",
    "bytes=9223372036854775807-",
    "bytes=9223372036854775807-9223372036854775808",
    "bytes=18446744073709551615-18446744073709551615",
    "bytes=4294967295-4294967296",
    "bytes=4294967296-",
    "bytes=-4294967296",
    "bytes=123456789012345678901234567890-",
    "bytes=0-123456789012345678901234567890",
    "bytes=-123456789012345678901234567890",
    "bytes=123456789012345678901234567890-123456789012345678901234567891",
    "bytes=123456789012345678901234567891-123456789012345678901234567890",
    "bytes=000000000000000000000000000001-000000000000000000000000000002",
    "bytes=1e3-2e3",
    "bytes=0x10-0x20",
    "bytes=+1-+2",
    "bytes=1 - 2",
    "bytes=-0",
    "bytes=0--1",
    "bytes=--1",
    "bytes=1-0",
    "bytes=\u0661-\u0662",  # Arabic-Indic digits: int() would take them
    "bytes=0-1,-9223372036854775808,9223372036854775807-",
]


@pytest.mark.parametrize("target", ["/files/digits.txt", "/files/big.bin"])
@pytest.mark.parametrize("range_header", OVERFLOW)
def test_integer_overflow_ranges_are_416_or_200(
    served: Callable[..., FerryServer], range_header: str, target: str
) -> None:
    server = served()
    size = SMALL if target.endswith("digits.txt") else BIG
    wire = range_header.encode("utf-8").decode("latin-1")  # the header's bytes, as sent
    if size == SMALL:
        answer = get(server.port, target, f"Range: {wire}")
        status, fields = answer.status, dict(answer.header_lines())
        assert int(fields["content-length"]) == len(answer.body)
    else:
        status, fields, _ = head_only(server, target, f"Range: {wire}")
    assert status in (200, 206, 416), (range_header, status)
    assert int(fields["content-length"]) <= size + 1000
    if status == 416:
        assert fields["content-range"] == f"bytes */{size}"
    if status == 206 and "content-range" in fields:
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", fields["content-range"])
        assert match, fields["content-range"]
        first, last, total = map(int, match.groups())
        assert 0 <= first <= last < total == size
        assert int(fields["content-length"]) == last - first + 1
    if size == SMALL and status == 206 and "content-range" in fields:
        digits = (bytes(range(256)) * 4)[first : last + 1]
        assert answer.body == digits


# --------------------------------------------------------------------------- pagination


@pytest.mark.parametrize(
    "target",
    [
        "/files/many/?limit=100000",
        "/files/many/?limit=100000&format=json",
        "/files/many/?q=entry&limit=100000",
        "/files/many/?limit=1001&format=json",
        "/files/many/?limit=0&format=json",
        "/files/many/?limit=-1&format=json",
        "/files/many/?limit=99999999999999999999999999&format=json",
        "/api/files/many?limit=100000",
        "/api/files/many?limit=1001",
        "/api/files/many?limit=0",
        "/api/search?q=entry&limit=100000",
        "/api/search?q=entry&limit=1001",
        "/api/search?q=entry&limit=99999999999999999999999999",
    ],
)
def test_page_size_is_capped(served: Callable[..., FerryServer], target: str) -> None:
    server = served()
    answer = get(server.port, target)
    assert 400 <= answer.status < 500, (target, answer.status)
    assert b"entry-0" not in answer.body


@pytest.mark.parametrize(
    ("target", "most"),
    [
        ("/files/many/?format=json", 100),
        ("/files/many/?format=json&limit=1000", 1000),
        ("/api/files/many", 100),
        ("/api/search?q=entry", 100),
        ("/api/search?q=entry&limit=1000", 1000),
        ("/files/many/", 200),
        ("/files/many/?q=entry", 200),
    ],
)
def test_pages_are_bounded_and_continue(served: Callable[..., FerryServer], target: str, most: int) -> None:
    server = served()
    responses, seconds = quickest(lambda: httpx.get(f"{server.url}{target}", headers={"Accept": "text/html"}))
    assert seconds < 2
    response = responses[-1]
    assert response.status_code == 200
    shown = len(set(re.findall(rb"entry-\d{5}\.txt", response.content)))
    assert 0 < shown <= most, shown
    if "format=json" in target or target.startswith("/api/"):
        body = response.json()
        assert len(body["entries"]) == most
        assert body["next_cursor"], "more entries than one page: there must be a next page"


def test_walking_every_page_sees_every_entry_once(served: Callable[..., FerryServer]) -> None:
    server = served()
    seen: list[str] = []
    cursor = None
    with httpx.Client(base_url=server.url) as client:
        for _ in range(MANY // 1000 + 2):
            params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/files/many", params=params).json()
            seen += [e["name"] for e in page["entries"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
    assert sorted(seen) == [f"entry-{i:05d}.txt" for i in range(MANY)]


# --------------------------------------------------------------------------- memory


class RssWatch:
    """Samples the server's RSS every 20 ms in a thread; `peak` is the highest seen."""

    def __init__(self, server: FerryServer) -> None:
        self.server = server
        self.baseline = server.rss_bytes()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_bytes())
            time.sleep(0.02)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def drain(server: FerryServer, target: str) -> int:
    """GET `target` and read the whole body as fast as a client can; returns its length."""
    buffer = bytearray(4 << 20)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head, rest = read_head(sock)
        status_line, fields = parse_head(head)
        assert status_line.split()[1] == "200", status_line
        total = len(rest)
        while n := sock.recv_into(buffer):
            total += n
    assert total == int(dict(fields)["content-length"])
    return total


@pytest.mark.parametrize("zero_copy", ["off", "on"])
def test_no_request_makes_memory_grow_by_a_large_file(
    served: Callable[..., FerryServer], outside: Outside, zero_copy: str
) -> None:
    server = served(*MAX_RANGES)
    for _ in range(3):  # warm up: imports, thread pool, index connections
        httpx.get(f"{server.url}/files/many/?format=json")
        httpx.get(f"{server.url}/files/big.bin", headers={"Range": "bytes=0-1048575"})
    with RssWatch(server) as watch:
        assert drain(server, "/files/big.bin") == BIG
        # 128 MiB in 1,000 ranges of 128 KiB
        spread = "bytes=" + ",".join(f"{i * 1048576}-{i * 1048576 + 131071}" for i in range(1000))
        with httpx.stream(
            "GET", f"{server.url}/files/big.bin", headers={"Range": spread}, timeout=60
        ) as response:
            assert response.status_code == 206
            assert sum(len(c) for c in response.iter_raw(1 << 20)) == int(response.headers["content-length"])
        # a reader that never reads: the server must not queue the file for it
        with socket.create_connection(("127.0.0.1", server.port)) as stalled:
            stalled.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            stalled.recv(4096)
            time.sleep(1.0)
        for _ in range(5):
            httpx.get(f"{server.url}/files/many/?format=json&limit=1000")
            httpx.get(f"{server.url}/api/search", params={"q": "entry", "limit": "1000"})
    grown = watch.peak - watch.baseline
    print(f"RSS {watch.baseline / 1024**2:.0f} MiB, peak {watch.peak / 1024**2:.0f} MiB")
    assert grown < 96 * 1024**2, f"RSS grew by {grown / 1024**2:.0f} MiB serving a 1 GiB file"
    assert_healthy(server)
