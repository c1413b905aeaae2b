"""FERRY_FAST_PATH: the protocol's own answers are the ASGI app's, byte for byte.

Two real servers over one tree, the fast path on and off, get the same raw requests over loopback;
their raw responses must be identical but for the Date field and a multipart boundary (random per
response on both). Each case also says whether the fast path should have answered it, read from
`ferry_fast_path_answers_total`: a case that silently fell back to the app would prove nothing.
The download contract (tests/clients/test_download_contract.py) runs on both paths as well.
"""

from __future__ import annotations

import functools
import re
import socket
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest

from app.http.signing import Link, link_target
from tests.support.servers import PATIENCE, FerryServer, ServerPool, module_pool, wait_for

pytestmark = [pytest.mark.clients]

SMALL = bytes(range(256)) * 256  # 64 KiB
LARGE = bytes(range(256)) * 2048  # 512 KiB: past what the fast path writes at once
FILES = {"small.bin": SMALL, "large.bin": LARGE, "page.html": b"<p>hi</p>\n", "notes.txt": b"notes\n"}


def _prepare(pool: ServerPool) -> None:
    for name, data in FILES.items():
        (pool.root / name).write_bytes(data)


pool = module_pool("fast", _prepare)


def _request(target: str, *fields: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: 127.0.0.1", "User-Agent: ferry-tests", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _exchange(server: FerryServer, raw: bytes) -> bytes:
    """Send the raw request(s); everything the server sent until it closed the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE) as sock:
        sock.sendall(raw)
        received = bytearray()
        while chunk := sock.recv(1 << 16):
            received += chunk
    return bytes(received)


def _normal(response: bytes) -> bytes:
    response = re.sub(rb"\r\ndate: [^\r]*", b"\r\ndate: -", response)
    for boundary in set(re.findall(rb"boundary=([0-9A-Za-z'()+_,./:=?-]+)", response)):
        response = response.replace(boundary, b"BOUNDARY")
    return response


def _fast_answers(server: FerryServer) -> float:
    text = httpx.get(server.url + "/metrics", timeout=PATIENCE).text
    found = re.search(r"^ferry_fast_path_answers_total (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


@pytest.fixture(scope="module")
def servers(pool: ServerPool) -> tuple[FerryServer, FerryServer]:
    """(fast path on, off), each once every file's digest is known (so both send the same fields)."""
    fast, slow = pool.get("auto", "--fast-path", "on"), pool.get("auto", "--fast-path", "off")
    for server in (fast, slow):
        for name in [*FILES, "résumé 数据.bin", "link-inside.txt"]:
            assert wait_for(functools.partial(_described, f"{server.url}/files/{name}"))
    return fast, slow


def _described(url: str, headers: dict[str, str] | None = None) -> bool:
    return "repr-digest" in httpx.head(url, headers=headers, timeout=PATIENCE).headers


def _etag(server: FerryServer, name: str) -> str:
    return httpx.head(f"{server.url}/files/{name}", timeout=PATIENCE).headers["etag"]


CLOSE = "Connection: close"
KEEP = "Connection: keep-alive"  # HTTP/1.0's (RFC 9112 §9.3)
# (id, request(s) with {etag} for small.bin's, answers the fast path should write)
CASES = [
    ("whole", _request("/files/small.bin", CLOSE), 1),
    ("head", _request("/files/small.bin", CLOSE, method="HEAD"), 1),
    ("tiny", _request("/files/notes.txt", CLOSE), 1),
    ("range", _request("/files/small.bin", "Range: bytes=100-199", CLOSE), 1),
    ("suffix", _request("/files/small.bin", "Range: bytes=-10", CLOSE), 1),
    ("range-from-a-page", _request("/files/small.bin", "Range: bytes=4096-8191", CLOSE), 1),  # sendfile
    ("open-range-of-large", _request("/files/large.bin", "Range: bytes=524000-", CLOSE), 1),
    ("multipart", _request("/files/small.bin", "Range: bytes=0-9,100-109", CLOSE), 1),
    ("unsatisfiable", _request("/files/small.bin", "Range: bytes=70000-", CLOSE), 1),
    ("ignored-range", _request("/files/small.bin", "Range: items=0-9", CLOSE), 1),
    ("if-none-match", _request("/files/small.bin", "If-None-Match: {etag}", CLOSE), 1),
    ("if-none-match-star-head", _request("/files/small.bin", "If-None-Match: *", CLOSE, method="HEAD"), 1),
    ("if-match-fails", _request("/files/small.bin", 'If-Match: "other"', CLOSE), 1),
    (
        "if-modified-since",
        _request("/files/small.bin", "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT", CLOSE),
        1,
    ),
    (
        "if-unmodified-since",
        _request("/files/small.bin", "If-Unmodified-Since: Sat, 01 Jan 2000 00:00:00 GMT", CLOSE),
        1,
    ),
    ("if-range-hit", _request("/files/small.bin", "Range: bytes=5-9", "If-Range: {etag}", CLOSE), 1),
    ("if-range-miss", _request("/files/small.bin", "Range: bytes=5-9", 'If-Range: "old"', CLOSE), 1),
    ("download", _request("/files/notes.txt?download=1", CLOSE), 1),
    ("inline", _request("/files/notes.txt?inline=1", CLOSE), 1),
    ("active-type", _request("/files/page.html", CLOSE), 1),
    ("http-1.0", _request("/files/notes.txt", version="1.0"), 1),
    (
        "http-1.0-keep-alive",
        _request("/files/notes.txt", KEEP, version="1.0")
        + _request("/files/small.bin", KEEP, "Range: bytes=0-9", version="1.0")
        + _request("/files/small.bin", KEEP, method="HEAD", version="1.0")
        + _request("/files/notes.txt", version="1.0"),
        4,
    ),
    (
        "http-1.0-keep-alive-large",
        _request("/files/large.bin", KEEP, version="1.0") + _request("/files/notes.txt", version="1.0"),
        2,
    ),
    (
        "http-1.0-keep-alive-app",
        _request("/files/sub/", KEEP, version="1.0")
        + _request("/files/nothing.bin", KEEP, version="1.0")
        + _request("/files/notes.txt", version="1.0"),
        0,  # the first goes to the app; what follows waits its turn there
    ),
    ("http-1.0-keep-alive-and-close", _request("/files/notes.txt", KEEP, CLOSE, version="1.0"), 1),
    (
        "keep-alive-pipelined",
        _request("/files/notes.txt")
        + _request("/files/small.bin", "Range: bytes=0-0")
        + _request("/files/notes.txt", CLOSE),
        3,
    ),
    (
        "pipelined-sent-and-copied",  # sendfile (whole files, a range from a page), copies between
        _request("/files/small.bin")
        + _request("/files/small.bin", "Range: bytes=8192-")
        + _request("/files/notes.txt")
        + _request("/files/small.bin", "Range: bytes=1-1")
        + _request("/files/small.bin", CLOSE),
        5,
    ),
    (
        "pipelined-fast-then-the-app",
        _request("/files/notes.txt")
        + _request("/files/sub/")
        + _request("/files/small.bin", "Range: bytes=0-0")
        + _request("/files/notes.txt", CLOSE),
        1,  # the connection's front answers the first; the rest wait their turn behind the listing
    ),
    (
        "pipelined-behind-a-stream",
        _request("/files/large.bin") + _request("/files/notes.txt") + _request("/files/notes.txt", CLOSE),
        3,  # the first is streamed; what follows waits its turn
    ),
    (
        "pipelined-stream-behind-queued-answers",  # the stream waits for what the transport holds
        _request("/files/notes.txt") + _request("/files/large.bin") + _request("/files/notes.txt", CLOSE),
        3,
    ),
    (
        "pipelined-behind-the-app",
        _request("/files/sub/") + _request("/files/large.bin") + _request("/files/notes.txt", CLOSE),
        0,  # the first goes to the app; what follows waits its turn there
    ),
    ("large", _request("/files/large.bin", CLOSE), 1),  # streamed (spans.py SpanStream)
    ("large-range", _request("/files/large.bin", "Range: bytes=1000-400000", CLOSE), 1),
    ("large-keep-alive", _request("/files/large.bin") + _request("/files/large.bin", CLOSE), 2),
    ("large-multipart", _request("/files/large.bin", "Range: bytes=0-199999,300000-", CLOSE), 0),
    ("large-head", _request("/files/large.bin", CLOSE, method="HEAD"), 1),
    ("missing", _request("/files/nothing.bin", CLOSE), 0),
    ("hidden", _request("/files/.hidden", CLOSE), 0),
    ("outside", _request("/files/%2e%2e/secret.txt", CLOSE), 0),
    ("directory", _request("/files/sub", CLOSE), 0),
    ("listing", _request("/files/sub/", CLOSE), 0),
    ("meta4", _request("/files/notes.txt?meta4", CLOSE), 0),
    ("unknown-query", _request("/files/notes.txt?x=1", CLOSE), 0),
    ("want-digest", _request("/files/notes.txt", "Want-Repr-Digest: sha-512=1", CLOSE), 0),
    ("with-body", _request("/files/notes.txt", "Content-Length: 2", CLOSE) + b"hi", 0),
    ("unicode-name", _request("/files/r%C3%A9sum%C3%A9%20%E6%95%B0%E6%8D%AE.bin", CLOSE), 1),
    ("symlink-inside", _request("/files/link-inside.txt", CLOSE), 1),
    ("symlink-outside", _request("/files/link-outside.txt", CLOSE), 0),
]


@pytest.mark.parametrize(("raw", "answered"), [pytest.param(r, a, id=i) for i, r, a in CASES])
def test_the_fast_path_answers_as_the_app_does(
    servers: tuple[FerryServer, FerryServer], raw: bytes, answered: int
) -> None:
    fast, slow = servers
    raw = raw.replace(b"{etag}", _etag(fast, "small.bin").encode())
    assert _etag(fast, "small.bin") == _etag(slow, "small.bin")
    before = _fast_answers(fast)
    from_fast, from_app = _exchange(fast, raw), _exchange(slow, raw)
    assert _fast_answers(fast) - before == answered
    assert from_fast.startswith(b"HTTP/1.")
    assert _normal(from_fast) == _normal(from_app)
    assert _fast_answers(slow) == 0


def _on_each(
    servers: tuple[FerryServer, FerryServer], send: Callable[[socket.socket], None]
) -> list[tuple[bytes, float]]:
    """On a new connection to each server: `send`, then everything until the server closes
    (dates and boundaries made comparable), with the fast answers that server counted meanwhile."""
    found = []
    for server in servers:
        before = _fast_answers(server)
        with socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE) as sock:
            send(sock)
            received = bytearray()
            while chunk := sock.recv(1 << 16):
                received += chunk
        found.append((_normal(bytes(received)), _fast_answers(server) - before))
    return found


@pytest.mark.parametrize("cut", [5, 30, -2], ids=["in-the-request-line", "in-a-field", "before-the-end"])
def test_a_head_that_arrives_in_pieces_is_answered_as_the_app_does(
    servers: tuple[FerryServer, FerryServer], cut: int
) -> None:
    """The first piece goes on to FerryProtocol with the rest, which answers (by the fast path)."""
    raw = _request("/files/small.bin") + _request("/files/notes.txt", "Range: bytes=1-2", CLOSE)
    cut = len(_request("/files/small.bin")) + cut if cut < 0 else cut

    def send(sock: socket.socket) -> None:
        sock.sendall(raw[:cut])
        time.sleep(0.2)
        sock.sendall(raw[cut:])

    (from_fast, answered), (from_app, _) = _on_each(servers, send)
    assert from_fast == from_app
    assert from_fast.count(b"HTTP/1.1 20") == 2 and from_fast.endswith(b"ot")
    assert answered == 2


def test_a_client_reading_late_gets_every_pipelined_answer_in_order(
    servers: tuple[FerryServer, FerryServer],
) -> None:
    """Sixty-four 200 KiB ranges asked at once, read only after a pause: past the socket buffers
    and the transport's write buffer the front holds the rest (reading paused) until the client
    reads, then answers them; ranges from a page and from mid-page alike."""
    span = 200 * 1024
    starts = [(i * 4096 + (i % 2) * 100) % (len(LARGE) - span) for i in range(64)]
    raw = b"".join(_request("/files/large.bin", f"Range: bytes={a}-{a + span - 1}") for a in starts)
    raw += _request("/files/notes.txt", CLOSE)

    def send(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.sendall(raw)
        time.sleep(0.5)  # the answers fill the socket buffers and the transport's

    (from_fast, answered), (from_app, _) = _on_each(servers, send)
    assert from_fast == from_app
    assert from_fast.count(b"HTTP/1.1 206") == 64 and from_fast.endswith(b"notes\n") and answered == 65
    for a in starts[:3]:
        assert LARGE[a : a + span] in from_fast


def _one_connection(server: FerryServer, requests: list[bytes | tuple[bytes, bytes]]) -> list[bytes]:
    """Each request sent once the answer to the one before it has been read, on one connection
    (a pair: sent in two pieces, a moment apart)."""
    answers = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE) as sock:
        reader = sock.makefile("rb")
        for raw in requests:
            for piece in raw if isinstance(raw, tuple) else (raw,):
                sock.sendall(piece)
                time.sleep(0.1)
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += reader.readline()
            length = re.search(rb"\r\ncontent-length: (\d+)", head, re.IGNORECASE)
            assert length is not None, head
            answers.append(head + reader.read(int(length[1])))
    return answers


_PIECES = _request("/files/small.bin", "Range: bytes=1-2")


@pytest.mark.parametrize(
    "first",
    [
        _request("/files/"),  # a listing: the app's
        _request("/files/small.bin", "Want-Repr-Digest: sha-512=5"),  # the app's
        _request("/files/small.bin", "Content-Length: 5") + b"hello",  # FerryProtocol's (a body)
        (_PIECES[:20], _PIECES[20:]),  # FerryProtocol's (a head in pieces)
    ],
    ids=["listing", "digest-wanted", "with-a-body", "head-in-pieces"],
)
def test_the_front_takes_a_connection_back_once_the_app_is_done_with_it(
    servers: tuple[FerryServer, FerryServer], first: bytes | tuple[bytes, bytes]
) -> None:
    """After a request the front hands to FerryProtocol (and the app), the next one on the same
    connection reaches the front again: a 512 KiB file, which only the front sends by the fast
    path (FerryProtocol leaves it to the app), counts as a fast answer."""
    fast, _ = servers
    before = _fast_answers(fast)
    answers = _one_connection(
        fast, [first, _request("/files/large.bin"), _request("/files/large.bin", "Range: bytes=1-")]
    )
    assert answers[0].startswith(b"HTTP/1.1 20"), answers[0][:200]
    assert answers[1].startswith(b"HTTP/1.1 200") and answers[1].endswith(LARGE)
    assert answers[2].startswith(b"HTTP/1.1 206") and answers[2].endswith(LARGE[1:])
    assert _fast_answers(fast) - before >= 2


@pytest.mark.parametrize("path", ["on", "off"])
def test_an_http_1_0_client_asking_for_keep_alive_keeps_its_connection(
    servers: tuple[FerryServer, FerryServer], path: str
) -> None:
    """As ApacheBench's `ab -k` does: each request on the same connection once the answer
    before it is read (a small file, a listing, a 404, a streamed file), each answer saying
    `connection: keep-alive`; the last request does not ask, and its answer says close."""
    server = servers[0 if path == "on" else 1]
    answers = _one_connection(
        server,
        [
            _request("/files/notes.txt", KEEP, version="1.0"),
            _request("/files/sub/", KEEP, version="1.0"),
            _request("/files/nothing.bin", KEEP, version="1.0"),
            _request("/files/large.bin", KEEP, version="1.0"),
            _request("/files/notes.txt", version="1.0"),
        ],
    )
    statuses = [answer.split(b"\r\n", 1)[0] for answer in answers]
    assert statuses == [b"HTTP/1.1 200 OK"] * 2 + [b"HTTP/1.1 404 Not Found"] + [b"HTTP/1.1 200 OK"] * 2
    heads = [answer.split(b"\r\n\r\n", 1)[0].lower() for answer in answers]
    assert [re.findall(rb"\r\nconnection: ([^\r]*)", head) for head in heads] == [[b"keep-alive"]] * 4 + [
        [b"close"]
    ]
    assert all(b"transfer-encoding" not in head for head in heads)
    assert answers[3].endswith(LARGE) and answers[4].endswith(b"notes\n")


@pytest.mark.parametrize("path", ["on", "off"])
def test_apachebench_keeps_its_connections_alive(servers: tuple[FerryServer, FerryServer], path: str) -> None:
    """ApacheBench (`ab -k`, HTTP/1.0 with keep-alive; `make tools` installs it) gets every
    answer whole, each of its four connections kept for all its requests."""
    server = servers[0 if path == "on" else 1]
    out = subprocess.run(
        ["ab", "-k", "-n", "200", "-c", "4", "-s", str(int(PATIENCE)), f"{server.url}/files/small.bin"],
        capture_output=True,
        text=True,
        timeout=PATIENCE * 4,
        check=True,
    ).stdout
    found = {
        key: int(value)
        for key, value in re.findall(
            r"^(Complete requests|Failed requests|Keep-Alive requests|Total transferred):\s+(\d+)",
            out,
            re.MULTILINE,
        )
    }
    assert found["Complete requests"] == 200 and found["Failed requests"] == 0, out
    assert found["Keep-Alive requests"] == 200, out
    assert found["Total transferred"] > 200 * len(SMALL) and "Non-2xx" not in out, out


def test_the_fast_path_logs_as_the_app_does(servers: tuple[FerryServer, FerryServer]) -> None:
    """The same access line (all but the duration) for the same request."""
    raw = _request("/files/small.bin", "Range: bytes=0-99", CLOSE).replace(b"ferry-tests", b"ferry-logged")
    lines = []
    for server in servers:
        _exchange(server, raw)
        # Found by its user agent, not by its place: a line of an earlier request may land after
        # it (lines are written at the end of the loop's turn).
        assert wait_for(functools.partial(_has_logged, server)), server.access_log.read_text()[-2000:]
        lines.append(re.sub(r"^127.0.0.1:\d+ |(?<= )[0-9.]+ms ", "-", _logged(server)[0]))  # port, duration
    fast, slow = lines
    assert fast == slow
    assert '"GET /files/small.bin" 206 100 range="bytes=0-99" -ua="ferry-logged"' in fast


def _logged(server: FerryServer) -> list[str]:
    return [line for line in server.access_log.read_text().splitlines() if '"ferry-logged"' in line]


def _has_logged(server: FerryServer) -> bool:
    return bool(_logged(server))


def test_a_file_changed_between_requests_is_answered_anew(servers: tuple[FerryServer, FerryServer]) -> None:
    """The fast path keeps answers per file version: a new version gets its own."""
    fast, _ = servers
    path = fast.root / "changing.txt"
    path.write_bytes(b"one\n")
    url = f"{fast.url}/files/changing.txt"
    assert httpx.get(url, timeout=PATIENCE).content == b"one\n"
    first = httpx.get(url, timeout=PATIENCE)
    path.write_bytes(b"two!\n")  # another size: another version whatever the clock's grain
    second = httpx.get(url, timeout=PATIENCE)
    assert second.content == b"two!\n"
    assert second.headers["etag"] != first.headers["etag"]
    assert second.headers["content-length"] == "5"


READ, KEY = "read-token-0123456789", "signing-key-0123456789"
GUARDS = {
    "token": ("--download-auth", "token", "--read-tokens", READ),
    "signed": ("--download-auth", "signed", "--signing-keys", KEY),
}


def _link(path: str, *, prefix: bool = False, expires_in: int = 3600) -> str:
    link = Link(path, expires=int(time.time()) + expires_in, prefix=prefix)
    return link_target(KEY.encode(), link)


@pytest.fixture(scope="module")
def guarded(pool: ServerPool) -> dict[str, tuple[FerryServer, FerryServer]]:
    """Per download mode, (fast path on, off), each once the files' digests are known."""
    found = {}
    for mode, flags in GUARDS.items():
        pair = pool.get("auto", *flags, "--fast-path", "on"), pool.get("auto", *flags, "--fast-path", "off")
        for server in pair:
            for path in ("/notes.txt", "/sub/inner.txt"):
                if mode == "token":
                    url, headers = f"{server.url}/files{path}", {"authorization": f"Bearer {READ}"}
                else:
                    url, headers = server.url + _link(path), {}
                assert wait_for(functools.partial(_described, url, headers))
        found[mode] = pair
    return found


GUARDED_CASES = [
    ("token", lambda: _request("/files/notes.txt", f"Authorization: Bearer {READ}", CLOSE), 1),
    (
        "token",
        lambda: _request("/files/notes.txt", "Range: bytes=1-2", f"Authorization: bearer {READ}", CLOSE),
        1,
    ),
    ("token", lambda: _request("/files/notes.txt", CLOSE), 0),
    ("token", lambda: _request("/files/notes.txt", "Authorization: Bearer wrong", CLOSE), 0),
    ("signed", lambda: _request(_link("/notes.txt"), CLOSE), 1),
    (
        "signed",
        lambda: _request(_link("/sub/", prefix=True).replace("/files/sub/?", "/files/sub/inner.txt?"), CLOSE),
        1,
    ),
    ("signed", lambda: _request(_link("/notes.txt") + "&download=1", CLOSE), 1),
    ("signed", lambda: _request(_link("/notes.txt").replace("sig=", "sig=x"), CLOSE), 0),
    ("signed", lambda: _request(_link("/notes.txt", expires_in=-10), CLOSE), 0),
    ("signed", lambda: _request("/files/notes.txt", CLOSE), 0),
]


@pytest.mark.parametrize(
    ("mode", "raw", "answered"),
    [pytest.param(m, r, a, id=f"{m}-{i}") for i, (m, r, a) in enumerate(GUARDED_CASES)],
)
def test_tokens_and_signed_links_are_checked_by_the_same_code(
    guarded: dict[str, tuple[FerryServer, FerryServer]], mode: str, raw: Callable[[], bytes], answered: int
) -> None:
    fast, slow = guarded[mode]
    request = raw()
    before = _fast_answers(fast)
    from_fast, from_app = _exchange(fast, request), _exchange(slow, request)
    assert _fast_answers(fast) - before == answered
    assert _normal(from_fast) == _normal(from_app)
