"""The access log and /metrics record the status the client got, against a real `ferry serve`:
an answer of the protocol's own (400 for a malformed upload body) is 400, a stalled body Ferry
closed is 408, a client gone before any answer is 499, a download cut short keeps its 200 (marked
aborted), and none of them is 500."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.clients.test_operations import delta, scrape
from tests.conftest import FerryServer, ServerFactory, wait_for

pytestmark = pytest.mark.clients

TOKEN = "t"
MIB = 1024**2


@pytest.fixture
def server(ferry: ServerFactory, tmp_path: Path) -> FerryServer:
    root = tmp_path / "root"
    root.mkdir()
    (root / "small.txt").write_bytes(b"small\n")
    with (root / "big.bin").open("wb") as f:  # sparse: hashing it takes a moment, storing it nothing
        f.truncate(256 * MIB)
    # No background hashing: `?checksums` on big.bin hashes it during the request.
    flags = ("--write-token", TOKEN, "--log-format", "json", "--no-checksums", "--body-timeout", "1")
    return ferry(root, *flags)


def logged(server: FerryServer, path: str) -> dict[str, object]:
    """The access log line of the one request to `path` (waits for it to be written)."""
    lines: list[dict[str, object]] = []

    def found() -> bool:
        nonlocal lines
        text = server.access_log.read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        return any(line["path"] == path for line in lines)

    assert wait_for(found, 15), f"no access log line for {path}: {lines}"
    (line,) = [line for line in lines if line["path"] == path]
    return line


def raw(server: FerryServer, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    sock.sendall((head.replace("\n", "\r\n") + "\r\n").encode())
    return sock


def test_an_answer_of_the_protocol_is_recorded_as_that_answer(server: FerryServer) -> None:
    before = scrape(server)
    # A malformed chunked body: the HTTP parser answers 400 while Ferry is reading the upload.
    with raw(
        server,
        f"PUT /files/chunked.bin HTTP/1.1\nHost: t\nAuthorization: Bearer {TOKEN}\n"
        "Transfer-Encoding: chunked\n",
    ) as sock:
        sock.sendall(b"5\r\nhello\r\nZZ\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    # A bad cursor: Ferry's own 400.
    assert httpx.get(f"{server.url}/api/search", params={"q": "s", "cursor": "@@"}).status_code == 400

    # A body that stalls: Ferry closes the connection (FERRY_BODY_TIMEOUT) and records 408.
    with raw(
        server,
        f"PUT /files/stalled.bin HTTP/1.1\nHost: t\nAuthorization: Bearer {TOKEN}\nContent-Length: 10\n",
    ) as sock:
        sock.sendall(b"12345")
        assert sock.recv(100) == b""  # closed, nothing answered

    assert logged(server, "/files/chunked.bin")["status"] == 400
    assert logged(server, "/api/search")["status"] == 400
    assert logged(server, "/files/stalled.bin")["status"] == 408
    after = scrape(server)
    assert delta(before, after, 'ferry_http_requests_total{method="PUT",status="408"}') == 1
    assert delta(before, after, 'ferry_http_requests_total{method="PUT",status="400"}') == 1
    assert delta(before, after, 'ferry_http_requests_total{method="GET",status="400"}') == 1
    assert not any(key.endswith('status="500"}') for key in after), after


def test_a_client_gone_before_the_answer_is_499_and_a_cut_download_keeps_its_status(
    server: FerryServer,
) -> None:
    before = scrape(server)
    # An upload abandoned halfway through its body.
    with raw(
        server,
        f"PUT /files/half.bin HTTP/1.1\nHost: t\nAuthorization: Bearer {TOKEN}\nContent-Length: {MIB}\n",
    ) as sock:
        sock.sendall(b"x" * (MIB // 2))
    half = logged(server, "/files/half.bin")
    assert half["status"] == 499 and half["aborted"] is True

    # A request abandoned while its answer was being prepared (the file being hashed).
    with raw(server, "GET /files/big.bin?checksums HTTP/1.1\nHost: t\n"):
        pass
    # A download abandoned after its first bytes: the client got the 200 head, then too little.
    with raw(server, "GET /files/big.bin HTTP/1.1\nHost: t\n") as sock:
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")

    lines = [json.loads(line) for line in server.access_log.read_text().splitlines() if line.startswith("{")]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(line["path"] == "/files/big.bin" for line in lines) < 2:
        time.sleep(0.05)
        lines = [
            json.loads(line) for line in server.access_log.read_text().splitlines() if line.startswith("{")
        ]
    big = [line for line in lines if line["path"] == "/files/big.bin"]
    # The paths match (the query is not logged): the abandoned `?checksums` is the one not 200.
    assert sorted(int(str(line["status"])) for line in big) == [200, 499], big
    assert all(line["aborted"] is True for line in big)
    cut = next(line for line in big if line["status"] == 200)
    assert 0 < int(str(cut["bytes"])) < 256 * MIB

    after = scrape(server)
    assert delta(before, after, 'ferry_http_requests_total{method="PUT",status="499"}') == 1
    assert delta(before, after, 'ferry_http_requests_total{method="GET",status="499"}') == 1
    assert not any(key.endswith('status="500"}') for key in after), after
    assert after["ferry_downloads_in_flight"] == 0
    assert httpx.get(f"{server.url}/files/small.txt").content == b"small\n"
