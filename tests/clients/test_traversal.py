"""Path traversal and root escape (ANCHORS.md §3.1, §3.3.15) against a real `ferry serve`.

Every request target is written byte for byte to a raw socket, so neither a client library nor a
proxy normalises `..`, `%2e`, `//` or backslashes away before Ferry sees them. The canary file sits
outside ROOT (and in a sibling directory sharing ROOT's name as a prefix); its bytes must never
appear in any answer, and the server must keep answering afterwards.

One server per configuration is shared by the whole corpus (tests/support/traversal.py); the
refusals send no file bytes, so only the cases that serve a file run on both transfer paths.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from tests.conftest import CANARY, FerryServer, ServerPool
from tests.support.raw import get, parse_head, status_of
from tests.support.servers import BOTH_TRANSFER_PATHS, module_pool
from tests.support.traversal import ESCAPES, HIDDEN_BYTES, OUTSIDE_BYTES, POLICY, expand

pytestmark = pytest.mark.clients

DEFAULT: tuple[str, ...] = ()
# aiohttp CVE-2024-23334: follow_symlinks=True skipped the root check. Lexical escapes must be
# refused whatever the symlink and hidden-name settings are.
PERMISSIVE = ("--follow-symlinks", "--show-hidden")


# --------------------------------------------------------------------------- servers


pool = module_pool("traversal")


@pytest.fixture
def served(pool: ServerPool, zero_copy: str) -> Callable[..., FerryServer]:
    def get(*flags: str) -> FerryServer:
        return pool.get(zero_copy, *flags)

    return get


# --------------------------------------------------------------------------- raw HTTP


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    raw: bytes


def send_raw(server: FerryServer, target: str, host: str = "x", method: str = "GET") -> RawResponse:
    """Send one request with `target` exactly as given (latin-1 bytes) and read until close."""
    answer = get(server.port, target, method=method, host=host)
    assert answer.raw, f"{target!r}: connection closed without a response"
    status_line, fields = parse_head(answer.head)
    return RawResponse(status_of(status_line), dict(fields), answer.raw)


def assert_still_serving(server: FerryServer) -> None:
    assert server.process.poll() is None, "ferry serve exited"
    r = send_raw(server, "/healthz")
    assert r.status == 200
    assert json.loads(r.raw.partition(b"\r\n\r\n")[2]) == {"status": "ok"}


def check_refused(server: FerryServer, target: str, forbidden: list[bytes]) -> None:
    response = send_raw(server, target)
    assert response.status in (400, 404), f"{target!r} -> {response.status}"
    for data in forbidden:
        assert data not in response.raw, f"{target!r} leaked {data!r}"
    assert "location" not in response.headers
    assert_still_serving(server)


@pytest.mark.parametrize("flags", [DEFAULT, PERMISSIVE], ids=["default", "permissive"])
@pytest.mark.parametrize("target", ESCAPES)
def test_escape_is_refused(
    served: Callable[..., FerryServer], pool: ServerPool, target: str, flags: tuple[str, ...]
) -> None:
    forbidden = OUTSIDE_BYTES if flags else OUTSIDE_BYTES + HIDDEN_BYTES
    check_refused(served(*flags), expand(target, pool), forbidden)


@pytest.mark.parametrize("target", POLICY)
def test_policy_refusal(served: Callable[..., FerryServer], target: str) -> None:
    check_refused(served(), target, OUTSIDE_BYTES + HIDDEN_BYTES + [b"x.txt"])


def test_corpus_is_large_enough() -> None:
    assert len(ESCAPES) + len(POLICY) >= 40


@pytest.mark.parametrize("method", ["HEAD", "GET"])
@pytest.mark.parametrize(
    "target",
    ["/files/../secret.txt", "/files/%2e%2e/data_secret/x.txt", "/files/link-outside.txt", "/files/.hidden"],
)
def test_head_is_refused_too(served: Callable[..., FerryServer], target: str, method: str) -> None:
    server = served()
    response = send_raw(server, target, method=method)
    assert response.status == 404
    body = response.raw.partition(b"\r\n\r\n")[2]
    if method == "HEAD":
        assert body == b""
    else:
        assert response.headers["content-length"] == str(len(body))
    for data in OUTSIDE_BYTES + HIDDEN_BYTES:
        assert data not in response.raw
    assert_still_serving(server)


@BOTH_TRANSFER_PATHS
def test_the_tree_really_holds_the_canary(pool: ServerPool, served: Callable[..., FerryServer]) -> None:
    """The corpus means something only if the canary is where the targets point."""
    assert (pool.base / "secret.txt").read_bytes() == CANARY
    assert (pool.base / "data_secret" / "x.txt").read_bytes() == CANARY
    assert (pool.root / "link-outside.txt").resolve() == pool.base / "secret.txt"
    ok = send_raw(served(), "/files/hello.txt")
    assert ok.status == 200 and ok.raw.endswith(b"hello, ferry\n")
    followed = send_raw(served(*PERMISSIVE), "/files/link-outside.txt")
    assert followed.status == 200 and followed.raw.endswith(CANARY)


# --------------------------------------------------------------------------- '.' segments

# A '.' segment names the directory it stands in (RFC 3986 §5.2.4), as nginx and http.server
# resolve it; Go's URL escaping writes a first segment holding ':' as './colon:name', and rclone
# asks for exactly that. The content is served at the URL asked for (no redirect to follow).
DOT_SEGMENTS = [
    pytest.param("/files/./hello.txt", b"hello, ferry\n", id="dot-segment"),
    pytest.param("/files/%2e/hello.txt", b"hello, ferry\n", id="enc-dot-segment"),
    pytest.param("/files/%2E/hello.txt", b"hello, ferry\n", id="enc-dot-segment-upper"),
    pytest.param("/files/sub/./inner.txt", b"inner\n", id="dot-segment-subdir"),
    pytest.param("/files/./sub/././inner.txt", b"inner\n", id="dot-segments"),
    pytest.param("/files/./100%25%20%231%3F.txt", b"percent\n", id="dot-then-escaped-name"),
]


@BOTH_TRANSFER_PATHS
@pytest.mark.parametrize(("target", "body"), DOT_SEGMENTS)
def test_dot_segments_are_resolved(served: Callable[..., FerryServer], target: str, body: bytes) -> None:
    server = served()
    response = send_raw(server, target)
    assert response.status == 200, (target, response.raw[:300])
    assert response.raw.partition(b"\r\n\r\n")[2] == body
    assert "location" not in response.headers


@BOTH_TRANSFER_PATHS
def test_dot_segments_keep_head_and_ranges(served: Callable[..., FerryServer]) -> None:
    server = served()
    plain, dotted = (
        send_raw(server, "/files/digits.txt", method="HEAD"),
        send_raw(server, "/files/./digits.txt", method="HEAD"),
    )
    assert dotted.status == 200 and dotted.raw.endswith(b"\r\n\r\n")
    for name in (
        "content-length",
        "etag",
        "last-modified",
        "accept-ranges",
        "content-type",
        "content-disposition",
    ):
        assert dotted.headers.get(name) == plain.headers.get(name), name
    ranged = get(server.port, "/files/./digits.txt", "Range: bytes=16-31")
    head, body = ranged.head, ranged.body
    assert head.startswith(b"HTTP/1.1 206 "), head
    assert b"content-range: bytes 16-31/1024" in head.lower()
    assert body == bytes(range(16, 32))


@pytest.mark.parametrize(
    ("target", "listed"),
    [
        pytest.param("/files/.", "hello.txt", id="bare-dot-is-root"),
        pytest.param("/files/./", "hello.txt", id="dot-slash-is-root"),
        pytest.param("/files/sub/.", "inner.txt", id="trailing-dot-is-the-directory"),
        pytest.param("/files/./sub/", "inner.txt", id="dot-then-directory"),
    ],
)
def test_dot_segments_list_the_directory(
    served: Callable[..., FerryServer], target: str, listed: str
) -> None:
    response = send_raw(served(), target + "?format=json")
    assert response.status == 200, response.raw[:300]
    names = [e["name"] for e in json.loads(response.raw.partition(b"\r\n\r\n")[2])["entries"]]
    assert listed in names


def test_a_dotted_directory_without_its_slash_redirects_to_the_plain_path(
    served: Callable[..., FerryServer],
) -> None:
    response = send_raw(served(), "/files/./sub")
    assert response.status == 301
    assert response.headers["location"] == "/files/sub/"


# --------------------------------------------------------------------------- slash-redirects

# (target, Host header). Python CVE-2021-28861, Tornado CVE-2023-28370: a directory redirect must
# never produce a protocol-relative `//host` (or `/\host`) Location.
REDIRECT_TARGETS = [
    pytest.param("/files//evil.example/x", "x", id="double-slash"),
    pytest.param("/files//evil.example/%2e%2e%2fsub", "x", id="double-slash-enc-dotdot"),
    pytest.param("//evil.example/%2e%2e%2ffiles/sub", "x", id="leading-double-slash"),
    pytest.param("//evil.example/..%2ffiles%2fsub", "x", id="leading-double-slash-enc"),
    pytest.param("///evil.example/files/sub", "x", id="triple-slash"),
    pytest.param("/files/%2fevil.example%2f..%2fsub", "x", id="enc-leading-slash"),
    pytest.param("/files/%2f%2fevil.example", "x", id="enc-double-slash"),
    pytest.param("/files/%2F%2Fevil.example/sub", "x", id="enc-double-slash-upper"),
    pytest.param("/files/\\evil.example/sub", "x", id="raw-backslash"),
    pytest.param("/files/%5c%5cevil.example/sub", "x", id="enc-backslash"),
    pytest.param("/\\evil.example/files/sub", "x", id="slash-backslash"),
    pytest.param("/files//sub", "x", id="empty-segment-dir"),
    pytest.param("/files/sub", "evil.example", id="dir-evil-host"),
    pytest.param("http://evil.example/files/sub", "x", id="absolute-form-dir"),
    pytest.param("/files/sub?next=//evil.example", "x", id="query"),
    pytest.param("/healthz/", "x", id="framework-trailing-slash"),
]


@pytest.mark.parametrize(("target", "host"), REDIRECT_TARGETS)
def test_redirects_stay_same_origin(served: Callable[..., FerryServer], target: str, host: str) -> None:
    server = served()
    response = send_raw(server, target, host=host)
    assert response.status < 500
    location = response.headers.get("location")
    if location is not None:
        assert not location.startswith(("//", "/\\", "\\")), location
        parts = urlsplit(location)
        assert parts.netloc in ("", host), location
        assert "evil.example" not in parts.netloc or host == "evil.example", location
    assert_still_serving(server)


@pytest.mark.parametrize(
    ("target", "host"),
    [
        pytest.param("/files/sub", "x", id="plain"),
        pytest.param("/files/sub", "evil.example", id="evil-host"),
        pytest.param("http://evil.example/files/sub", "x", id="absolute-form"),
    ],
)
def test_directory_redirect_is_a_relative_path(
    served: Callable[..., FerryServer], target: str, host: str
) -> None:
    response = send_raw(served(), target, host=host)
    assert response.status == 301
    assert response.headers["location"] == "/files/sub/"
