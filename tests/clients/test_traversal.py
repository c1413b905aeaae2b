"""Path traversal and root escape (ANCHORS.md §3.1, §3.3.15) against a real `ferry serve`.

Every request target is written byte for byte to a raw socket, so neither a client library nor a
proxy normalises `..`, `%2e`, `//` or backslashes away before Ferry sees them. The canary file sits
outside ROOT (and in a sibling directory sharing ROOT's name as a prefix); its bytes must never
appear in any answer, and the server must keep answering afterwards.

One server per configuration (and per `zero_copy` transfer path) is shared by the whole corpus.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import pytest

from tests.conftest import CANARY, FerryServer, ServerPool

pytestmark = pytest.mark.clients

# Bytes from outside ROOT, and from hidden files inside it (tests/conftest.py storage_tree).
OUTSIDE_BYTES = [CANARY, CANARY.strip()[:12]]
HIDDEN_BYTES = [b"SECRET=1", b"[core]", b"hidden\n"]

DEFAULT: tuple[str, ...] = ()
# aiohttp CVE-2024-23334: follow_symlinks=True skipped the root check. Lexical escapes must be
# refused whatever the symlink and hidden-name settings are.
PERMISSIVE = ("--follow-symlinks", "--show-hidden")


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    shared = ServerPool(tmp_path_factory.mktemp("traversal"))
    yield shared
    shared.stop()


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
    request = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    chunks = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(request.encode("latin-1"))
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    assert raw, f"{target!r}: connection closed without a response"
    head, _, _ = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status), headers, raw)


def assert_still_serving(server: FerryServer) -> None:
    assert server.process.poll() is None, "ferry serve exited"
    r = send_raw(server, "/healthz")
    assert r.status == 200
    assert json.loads(r.raw.partition(b"\r\n\r\n")[2]) == {"status": "ok"}


def expand(target: str, pool: ServerPool) -> str:
    """Fill in absolute locations of this run's tree: {outside} is the canary's absolute path."""
    outside = str(pool.base / "secret.txt")
    return target.format(
        outside=outside,
        outside_enc=quote(outside, safe=""),
        root=str(pool.root),
    )


# --------------------------------------------------------------------------- the corpus

# Escapes refused by the lexical gate, whatever FOLLOW_SYMLINKS and SHOW_HIDDEN say.
ESCAPES = [
    # `..` plain and percent-encoded (Apache CVE-2021-41773 / CVE-2021-42013, aiohttp CVE-2024-23334)
    pytest.param("/files/../secret.txt", id="dotdot"),
    pytest.param("/files/%2e%2e/secret.txt", id="enc-dotdot"),
    pytest.param("/files/%2E%2E/secret.txt", id="enc-dotdot-upper"),
    pytest.param("/files/.%2e/secret.txt", id="half-enc-dotdot-1"),
    pytest.param("/files/%2e./secret.txt", id="half-enc-dotdot-2"),
    pytest.param("/files/..%2fsecret.txt", id="enc-slash"),
    pytest.param("/files/..%2Fsecret.txt", id="enc-slash-upper"),
    pytest.param("/files/%2e%2e%2fsecret.txt", id="enc-dotdot-slash"),
    pytest.param("/files/%2e%2e%2f..%2fsecret.txt", id="enc-dotdot-twice"),
    pytest.param("/files/sub/..%2f..%2fsecret.txt", id="from-subdir-enc"),
    pytest.param("/files/sub/../../secret.txt", id="from-subdir"),
    pytest.param("/files/sub%2f..%2f..%2fsecret.txt", id="subdir-all-enc"),
    pytest.param("/files/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", id="etc-passwd-enc"),
    pytest.param("/files/..", id="bare-dotdot"),
    pytest.param("/files/sub/..", id="subdir-dotdot"),
    pytest.param("/files/hello.txt/../secret.txt", id="through-a-file"),
    pytest.param("/files/link-inside.txt/../../secret.txt", id="through-a-symlink"),
    pytest.param("/files/dir-outside/..%2f..%2fsecret.txt", id="through-outside-dir-link"),
    pytest.param("//files/../secret.txt", id="double-leading-slash"),
    pytest.param("/files/....//secret.txt", id="four-dots"),
    pytest.param("/files/..;/secret.txt", id="dotdot-semicolon"),
    pytest.param("/files/sub/..;/..;/secret.txt", id="dotdot-semicolon-twice"),
    # double encoding: decoded once, the result is a literal name
    pytest.param("/files/%252e%252e%252fsecret.txt", id="double-enc"),
    pytest.param("/files/%252e%252e/secret.txt", id="double-enc-dots"),
    pytest.param("/files/..%252fsecret.txt", id="double-enc-slash"),
    pytest.param("/files/%25252e%25252e%25252fsecret.txt", id="triple-enc"),
    # sibling-prefix confusion (Starlette CVE-2023-29159)
    pytest.param("/files/../data_secret/x.txt", id="sibling-prefix"),
    pytest.param("/files/%2e%2e/data_secret/x.txt", id="sibling-prefix-enc"),
    pytest.param("/files/..%2fdata_secret%2fx.txt", id="sibling-prefix-enc-slash"),
    pytest.param("/files/../data/../secret.txt", id="out-and-back-in-and-out"),
    pytest.param("/files/../data/hello.txt", id="out-and-back-in"),
    # backslashes and Windows forms (vert.x CVE-2018-12542, Starlette #981, Werkzeug CVE-2024-49766)
    pytest.param("/files/..%5csecret.txt", id="enc-backslash"),
    pytest.param("/files/%5c..%5csecret.txt", id="enc-backslash-leading"),
    pytest.param("/files/..\\secret.txt", id="raw-backslash"),
    pytest.param("/files/sub\\..\\..\\secret.txt", id="raw-backslash-subdir"),
    pytest.param("/files/..%255csecret.txt", id="double-enc-backslash"),
    pytest.param("/files/C:%5cwindows%5cwin.ini", id="drive-backslash"),
    pytest.param("/files/C:/windows/win.ini", id="drive-slash"),
    pytest.param("/files/%5c%5cserver%5cshare%5csecret.txt", id="unc"),
    pytest.param("/files/CON", id="device-con"),
    pytest.param("/files/nul", id="device-nul"),
    # absolute paths
    pytest.param("/files//etc/passwd", id="abs-etc-passwd"),
    pytest.param("/files/%2fetc%2fpasswd", id="abs-etc-passwd-enc"),
    pytest.param("/files/{outside}", id="abs-canary"),
    pytest.param("/files/{outside_enc}", id="abs-canary-enc"),
    pytest.param("/files/{root}/../secret.txt", id="abs-root-then-dotdot"),
    # NUL and control characters (Caddy 500, http.server dropped connection)
    pytest.param("/files/hello.txt%00", id="nul-suffix"),
    pytest.param("/files/hello.txt%00.png", id="nul-extension"),
    pytest.param("/files/%00../secret.txt", id="nul-then-dotdot"),
    pytest.param("/files/..%00/secret.txt", id="dotdot-nul"),
    pytest.param("/files/a%0ab", id="lf"),
    pytest.param("/files/a%0db", id="cr"),
    pytest.param("/files/%0d%0aSet-Cookie:%20x=1", id="crlf-injection"),
    pytest.param("/files/line%0abreak.txt", id="lf-existing-name"),
    pytest.param("/files/a%09b", id="tab"),
    pytest.param("/files/a%7fb", id="del"),
    # overlong and bogus UTF-8 (IIS-era decoders)
    pytest.param("/files/%c0%ae%c0%ae/secret.txt", id="overlong-dots"),
    pytest.param("/files/%c0%ae%c0%ae%c0%afsecret.txt", id="overlong-dots-slash"),
    pytest.param("/files/..%c0%afsecret.txt", id="overlong-slash"),
    pytest.param("/files/%e0%80%ae%e0%80%ae/secret.txt", id="overlong-3-byte"),
    pytest.param("/files/\xc0\xae\xc0\xae/secret.txt", id="overlong-raw-bytes"),
    pytest.param("/files/%u002e%u002e/secret.txt", id="iis-u-encoding"),
    pytest.param("/files/%ff%fe/secret.txt", id="invalid-utf8"),
    # '.' segments are dropped, and what remains is checked as any other path
    pytest.param("/files/./../secret.txt", id="dot-then-dotdot"),
    pytest.param("/files/sub/./../../secret.txt", id="dot-then-dotdot-subdir"),
    pytest.param("/files/%2e/%2e%2e/secret.txt", id="enc-dot-then-enc-dotdot"),
    pytest.param("/files/./%2e%2e%2fsecret.txt", id="dot-then-enc-dotdot-slash"),
    pytest.param("/files/.//etc/passwd", id="dot-then-absolute"),
    pytest.param("/files/.%2f%2fetc%2fpasswd", id="dot-then-enc-absolute"),
    pytest.param("/files/sub/.//inner.txt", id="dot-then-empty-segment"),
    pytest.param("/files/./{outside}", id="dot-then-abs-canary"),
    pytest.param("/files/hello.txt/.", id="file-trailing-dot"),
    # a file with a trailing slash is not a directory
    pytest.param("/files/hello.txt/", id="file-trailing-slash"),
    # absolute-form and otherwise odd request targets
    pytest.param("http://x/files/../secret.txt", id="absolute-form"),
    pytest.param("http://x/files/%2e%2e/secret.txt", id="absolute-form-enc"),
    pytest.param("../secret.txt", id="relative-target"),
    pytest.param("@evil.example/files/../secret.txt", id="at-target"),
]

# Refused only by policy: symlinks leading outside ROOT and hidden names (default settings).
POLICY = [
    pytest.param("/files/link-outside.txt", id="symlink-file-outside"),
    pytest.param("/files/dir-outside/x.txt", id="symlink-dir-outside"),
    pytest.param("/files/%64ir-outside/x.txt", id="symlink-dir-outside-enc"),
    pytest.param("/files/dir-outside/", id="symlink-dir-outside-listing"),
    pytest.param("/files/dir-outside", id="symlink-dir-outside-redirect"),
    pytest.param("/files/dir-outside/?format=json", id="symlink-dir-outside-json"),
    pytest.param("/files/link-to-hidden", id="symlink-to-hidden"),
    pytest.param("/files/.hidden", id="hidden"),
    pytest.param("/files/%2ehidden", id="hidden-enc"),
    pytest.param("/files/.hidden/", id="hidden-slash"),
    pytest.param("/files/sub/.env", id="hidden-nested"),
    pytest.param("/files/sub/%2eenv", id="hidden-nested-enc"),
    pytest.param("/files/.git/config", id="hidden-dir-file"),
    pytest.param("/files/%2egit%2fconfig", id="hidden-dir-file-enc"),
    pytest.param("/files/.git/", id="hidden-dir-listing"),
    pytest.param("/files/.git", id="hidden-dir-redirect"),
    pytest.param("/files/./.hidden", id="dot-then-hidden"),
    pytest.param("/files/./link-outside.txt", id="dot-then-symlink-file-outside"),
    pytest.param("/files/dir-outside/./x.txt", id="symlink-dir-outside-then-dot"),
]


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


@pytest.mark.parametrize(("target", "body"), DOT_SEGMENTS)
def test_dot_segments_are_resolved(served: Callable[..., FerryServer], target: str, body: bytes) -> None:
    server = served()
    response = send_raw(server, target)
    assert response.status == 200, (target, response.raw[:300])
    assert response.raw.partition(b"\r\n\r\n")[2] == body
    assert "location" not in response.headers


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
    request = "GET /files/./digits.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=16-31\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(request.encode())
        raw = b"".join(iter(lambda: conn.recv(65536), b""))
    head, _, body = raw.partition(b"\r\n\r\n")
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
