"""Request limits (ANCHORS.md §3.5, classes 24 and 27; app/transfer/protocol.py) against a real
`ferry serve`: each limit answers its status and closes the connection, and the server keeps
serving afterwards.

The server runs with small limits so every request stays a few KiB (the whole request is read
before the answer, so the close is a clean FIN, not a reset racing the response).
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import PATIENCE, FerryServer, ServerPool
from tests.security.support import (
    TOKEN,
    Exchange,
    Outside,
    assert_healthy,
    assert_no_canary,
    complete_response,
    exchange,
    get,
)
from tests.support.servers import module_pool, wait_for

# Wall-clock bounds (pacing, timeouts): run alone, after the parallel part of `make test`.
pytestmark = [pytest.mark.clients, pytest.mark.serial]

MAX_URL = 1024
MAX_HEADERS = 20
MAX_HEADER_SIZE = 4096
# A deadline is met when the connection closes after it and before what would happen without it
# (the trickle ending, the client's own socket timeout): LATE seconds past a deadline are allowed,
# as a loaded machine may run the server's timer that late.
LATE = 3.0
LIMITS = (
    "--max-url-length",
    str(MAX_URL),
    "--max-headers",
    str(MAX_HEADERS),
    "--max-header-size",
    str(MAX_HEADER_SIZE),
    "--header-timeout",
    "2",
    "--keepalive-timeout",
    "3",
    "--body-timeout",
    "2",
    "--write-token",
    TOKEN,
    "--no-fsync",
)


def _prepare(shared: ServerPool) -> None:
    (shared.root / "uploads").mkdir()


pool = module_pool("limits", _prepare)


@pytest.fixture
def server(served: Callable[..., FerryServer], pool: ServerPool) -> Iterator[FerryServer]:
    running = served(*LIMITS)
    watch = Outside.watch(pool.base, pool.root, pool.cwd)
    yield running
    watch.assert_untouched()
    assert_healthy(running)


def request(target: str = "/healthz", *headers: str, host: str | None = "x", version: str = "1.1") -> bytes:
    lines = [f"GET {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    return ("\r\n".join([*lines, *headers, "", ""])).encode("latin-1")


def assert_refused(answer: Exchange, status: int) -> None:
    """`status`, then the connection closed by the server (recv returned b'' after the response)."""
    assert answer.raw, "no response at all"
    assert answer.status == status, answer.raw[:300]
    assert answer.closed and not answer.reset, "the server must close the connection after refusing"
    assert answer.seconds < 5
    length = next(v for n, v in answer.header_lines() if n == "content-length")
    assert len(answer.body) == int(length)
    assert_no_canary(answer.raw)


# --------------------------------------------------------------------------- sizes


def test_request_line_too_long_is_414(server: FerryServer) -> None:
    assert_refused(exchange(server.port, request("/files/" + "a" * MAX_URL)), 414)
    assert_refused(exchange(server.port, request("/files/hello.txt?" + "q=1&" * 300)), 414)
    # Just under the limit: an ordinary answer (404 for a name nobody has), not 414.
    under = exchange(server.port, request("/files/" + "a" * (MAX_URL - 100), "Connection: close"))
    assert under.status == 404


def test_too_many_header_fields_is_431(server: FerryServer) -> None:
    many = [f"X-Field-{i}: {i}" for i in range(MAX_HEADERS + 5)]
    assert_refused(exchange(server.port, request("/healthz", *many)), 431)
    fine = [f"X-Field-{i}: {i}" for i in range(MAX_HEADERS - 3)]
    assert exchange(server.port, request("/healthz", *fine, "Connection: close")).status == 200


def test_header_fields_too_large_is_431(server: FerryServer) -> None:
    assert_refused(exchange(server.port, request("/healthz", "X-Big: " + "b" * (MAX_HEADER_SIZE + 10))), 431)
    spread = [f"X-Part-{i}: " + "c" * 400 for i in range(12)]  # under the count, over the size
    assert_refused(exchange(server.port, request("/healthz", *spread)), 431)
    ok = exchange(
        server.port, request("/healthz", "X-Big: " + "b" * (MAX_HEADER_SIZE // 2), "Connection: close")
    )
    assert ok.status == 200


# --------------------------------------------------------------------------- Host


def test_http11_without_host_is_400(server: FerryServer) -> None:
    assert_refused(exchange(server.port, request("/healthz", host=None)), 400)
    # HTTP/1.0 never required Host.
    assert exchange(server.port, request("/healthz", host=None, version="1.0")).status == 200


def test_two_hosts_is_400(server: FerryServer) -> None:
    assert_refused(exchange(server.port, request("/healthz", "Host: y")), 400)
    assert_refused(exchange(server.port, request("/healthz", "Host: x")), 400)


# --------------------------------------------------------------------------- framing and bytes


SMUGGLING = [
    pytest.param(
        b"POST /files/uploads/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        id="cl-te",
    ),
    pytest.param(
        b"POST /files/uploads/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        id="te-cl",
    ),
    pytest.param(
        b"PUT /files/uploads/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        id="two-content-lengths",
    ),
    pytest.param(
        b"PUT /files/uploads/a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        id="negative-content-length",
    ),
    pytest.param(
        b"PUT /files/uploads/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1_0\r\n\r\n0123456789",
        id="underscore-content-length",
    ),
    pytest.param(
        b"PUT /files/uploads/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n",
        id="bad-chunk-size",
    ),
    pytest.param(
        b"PUT /files/uploads/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhelloXX0\r\n\r\n",
        id="chunk-without-crlf",
    ),
]


@pytest.mark.parametrize("data", SMUGGLING)
def test_conflicting_or_malformed_framing_is_400(server: FerryServer, pool: ServerPool, data: bytes) -> None:
    answer = exchange(
        server.port, data.replace(b"Host: x\r\n", f"Host: x\r\nAuthorization: Bearer {TOKEN}\r\n".encode())
    )
    assert_refused(answer, 400)
    assert not (pool.root / "uploads" / "a").exists()


BAD_BYTES = [
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", id="nul-in-value"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-\x00A: b\r\n\r\n", id="nul-in-name"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\x00y\r\n\r\n", id="nul-in-host"),
    pytest.param(b"GET /healthz\x00 HTTP/1.1\r\nHost: x\r\n\r\n", id="nul-in-target"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", id="bare-cr-in-value"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n", id="bare-cr-ends-line"),
    pytest.param(b"GET /healthz HTTP/1.1\rHost: x\r\n\r\n", id="bare-cr-after-request-line"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\rX-A: b\r\n\r\n", id="bare-cr-line"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n", id="space-in-name"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", id="space-before-colon"),
]


@pytest.mark.parametrize("data", BAD_BYTES)
def test_nul_and_bare_cr_are_400_and_close(server: FerryServer, data: bytes) -> None:
    assert_refused(exchange(server.port, data), 400)


# --------------------------------------------------------------------------- deadlines


def _trickle(port: int, data: bytes, every: float, give_up: float) -> tuple[bytes, bool, float]:
    """Send `data` one byte every `every` seconds, reading as we go: (answer, closed, seconds)."""
    start = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=give_up) as sock:
        for i in range(len(data) + int(give_up / every)):
            if i < len(data):
                try:
                    sock.send(data[i : i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    pass
            ready, _, _ = select.select([sock], [], [], every)
            while ready:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    return received, True, time.monotonic() - start
                if not chunk:
                    return received, True, time.monotonic() - start
                received += chunk
                ready, _, _ = select.select([sock], [], [], 0)
            if time.monotonic() - start > give_up:
                break
    return received, False, time.monotonic() - start


def test_slowloris_headers_get_408_and_close(server: FerryServer) -> None:
    data = request("/healthz", "User-Agent: slowloris", "Accept: */*")
    received, closed, seconds = _trickle(server.port, data, every=0.3, give_up=8)
    assert closed, f"still open after {seconds:.1f}s"
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert seconds < 2 + LATE, f"closed only after {seconds:.1f}s (header timeout 2s)"
    assert len(data) * 0.3 > 2 + LATE + 1, "the trickle must be slower than the deadline"


def test_idle_connection_is_closed(server: FerryServer) -> None:
    """A connection that never sends a byte does not keep its socket."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        start = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        seconds = time.monotonic() - start
    assert seconds < 2 + LATE, f"idle connection kept {seconds:.1f}s"
    assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received[:200]


def _fast_answers(server: FerryServer) -> float:
    text = get(server.port, "/metrics").body.decode()
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("ferry_fast_path_answers")
    )


@pytest.mark.parametrize("target", ["/healthz", "/files/hello.txt"], ids=["app", "fast-path"])
def test_keep_alive_connection_is_closed_when_idle(server: FerryServer, target: str) -> None:
    """After a complete exchange, a connection kept alive but unused is closed too, after
    FERRY_KEEPALIVE_TIMEOUT (3 s for this server), silently, by the connection's front
    (app/transfer/front.py): after the fast path's answer, and after the app's once FerryProtocol
    has handed the connection back; the front's timer first comes due at the header timeout (2 s)
    and is moved on."""
    fast = target.startswith("/files/")
    if fast:  # the fast path answers once the file's digest is known
        assert wait_for(lambda: b"repr-digest" in get(server.port, target).raw)
    before = _fast_answers(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(request(target))
        first = b""
        while not complete_response(first):
            chunk = sock.recv(65536)
            assert chunk, first
            first += chunk
        assert first.startswith(b"HTTP/1.1 200 ")
        start = time.monotonic()
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        seconds = time.monotonic() - start
    assert rest == b"", rest[:200]  # no 408: a request came and was answered
    assert 2 < seconds < 3 + LATE, f"kept-alive idle connection open {seconds:.1f}s"
    assert _fast_answers(server) - before == (1 if fast else 0)


def test_partial_headers_then_silence_is_408(server: FerryServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /files/hello.txt HTTP/1.1\r\nHost: x\r\nX-Wait: ")
        start = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        seconds = time.monotonic() - start
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"hello, ferry" not in received
    assert seconds < 2 + LATE


def test_stalled_upload_body_is_closed_and_cleaned_up(server: FerryServer, pool: ServerPool) -> None:
    head = (
        f"PUT /files/uploads/stalled.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 1000000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + os.urandom(100_000))
        start = time.monotonic()
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        seconds = time.monotonic() - start
    assert seconds < 2 + LATE, f"a stalled body kept the connection {seconds:.1f}s (body timeout 2s)"
    assert not received.startswith((b"HTTP/1.1 2", b"HTTP/1.1 5")), received[:200]
    deadline = time.monotonic() + PATIENCE
    while True:
        leftovers = [p for p in pool.root.rglob("*") if p.name.startswith(".ferry-upload-")]
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert leftovers == [], "the aborted upload left its temporary file"
    assert not (pool.root / "uploads" / "stalled.bin").exists()


def test_a_body_that_keeps_coming_is_not_cut(server: FerryServer, pool: ServerPool) -> None:
    """The control for the stall: a slow but steady body (a chunk every half second, well under
    the 2 s body timeout however loaded the machine, 3 s in all) is stored."""
    head = (
        f"PUT /files/uploads/steady.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 6000\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        for _ in range(6):
            sock.sendall(b"s" * 1000)
            time.sleep(0.5)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]
    assert (pool.root / "uploads" / "steady.bin").read_bytes() == b"s" * 6000


def test_every_limit_leaves_the_server_serving(server: FerryServer) -> None:
    """All of the above in a row on one server, then ordinary requests still work."""
    for data in [
        request("/files/" + "a" * MAX_URL),
        request("/healthz", *[f"X-{i}: 1" for i in range(MAX_HEADERS + 1)]),
        request("/healthz", host=None),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: \x00\r\n\r\n",
    ]:
        assert exchange(server.port, data).status in (400, 414, 431)
    answer = get(server.port, "/files/hello.txt")
    assert answer.status == 200 and answer.body == b"hello, ferry\n"
