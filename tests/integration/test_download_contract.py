"""The download contract (CONTRACT.md "Downloads", "Listings"), in-process, on both storages.

One app per distinct set of flags is started once for the module and shared by every case that
only reads the tree. Every case runs on a local ROOT and on the same tree planted in a bucket
(FERRY_STORAGE=s3://…, `weed mini`, marker `engine`: tests/support/buckets.py), except those
about what only a disk has (symlinks), marked `disk_only`. The cases where bytes cross a real
socket run again in tests/clients/test_download_contract.py.
"""

from __future__ import annotations

import email.utils
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest

from tests.conftest import CANARY
from tests.support import multipart
from tests.support.buckets import backend_fixture, both_backends, disk_only, module_app_pools, wait_until_past
from tests.support.inprocess import AppPool
from tests.support.servers import Server

DIGITS = bytes(range(256)) * 4  # tests/conftest.py: ROOT/digits.txt
SIZE = len(DIGITS)
HELLO = b"hello, ferry\n"
DATED = b"dated content, mtime fixed in the past\n"
DATED_MTIME = 1_600_000_000  # 2020-09-13T12:26:40Z
MIME_FLAG = ".log=text/plain,.bin=application/x-ferry-bin"

# Extra files, beside the shared awkward tree, that only this module needs.
EXTRA_FILES: dict[str, bytes] = {
    "page.html": b"<!doctype html><p>hi</p>\n",
    "pic.png": b"\x89PNG\r\n\x1a\n",
    "data.json": b"{}\n",
    "archive.tar.gz": b"\x1f\x8b not really gzip\n",
    "app.log": b"log line\n",
    "noext": b"no extension\n",
    "mystery.zzqx": b"unknown extension\n",
    'say "hi"; now.txt': b"quoted name\n",
    "dated.txt": DATED,
}


# --------------------------------------------------------------------------- servers


def add_extra_files(root: Path) -> None:
    for name, data in EXTRA_FILES.items():
        (root / name).write_bytes(data)
    os.utime(root / "dated.txt", (DATED_MTIME, DATED_MTIME))


backend = backend_fixture()
pool = module_app_pools("contract", lambda shared: add_extra_files(shared.root))
pytest_generate_tests = both_backends

Served = Callable[..., Server]


@pytest.fixture
def served(pool: AppPool) -> Served:
    """served("--flag", "value") -> the module's app started with these flags."""
    return pool.get


@pytest.fixture
def http(pool: AppPool) -> httpx.Client:
    return pool.client


def fetch(
    http: httpx.Client, server: Server, path: str, method: str = "GET", **headers: str
) -> httpx.Response:
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    response = http.request(method, server.url + path, headers=sent)
    # Whatever the status, the body framing must be exact.
    if method == "GET" and "content-length" in response.headers:
        assert int(response.headers["content-length"]) == len(response.content)
    return response


def media_type(response: httpx.Response) -> str:
    return response.headers["content-type"].split(";")[0].strip().lower()


# --------------------------------------------------------------------------- multipart/byteranges


def parse_byteranges(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/byteranges body, parsed by python-multipart (not by hand)."""
    params = dict(
        p.strip().split("=", 1) for p in response.headers["content-type"].split(";")[1:] if "=" in p
    )
    boundary = params["boundary"].strip('"')
    parts = multipart.parse_byteranges(response.content, boundary)
    body = response.content
    # RFC 9110 §14.6 / RFC 2046: CRLF framing, the first delimiter at the very start.
    assert body.startswith(b"--" + boundary.encode() + b"\r\n")
    assert body.endswith(b"\r\n--" + boundary.encode() + b"--\r\n")
    return [(part.headers, part.data) for part in parts]


def content_range(value: str) -> tuple[int, int, int]:
    unit, _, rest = value.partition(" ")
    assert unit == "bytes", value
    span, _, size = rest.partition("/")
    first, _, last = span.partition("-")
    return int(first), int(last), int(size)


# --------------------------------------------------------------------------- ranges


SINGLE_RANGES = [
    pytest.param("bytes=0-0", 0, 0, id="first-byte"),
    pytest.param("bytes=0-99", 0, 99, id="closed"),
    pytest.param("bytes=100-199", 100, 199, id="closed-middle"),
    pytest.param("bytes=1023-1023", 1023, 1023, id="last-byte"),
    pytest.param("bytes=100-", 100, 1023, id="open"),
    pytest.param("bytes=0-", 0, 1023, id="open-from-zero"),
    pytest.param("bytes=-100", 924, 1023, id="suffix"),
    pytest.param("bytes=-1", 1023, 1023, id="suffix-one"),
    pytest.param("bytes=-5000", 0, 1023, id="suffix-longer-than-file"),
    pytest.param("bytes=1000-5000", 1000, 1023, id="end-clamped"),
    pytest.param("bytes=1000-99999999999999999999999999", 1000, 1023, id="end-huge-clamped"),
    pytest.param("BYTES=5-9", 5, 9, id="unit-case-insensitive"),
    pytest.param("bytes=0-9,5000-6000", 0, 9, id="partly-unsatisfiable-one-left"),
    pytest.param("bytes=-0,0-4", 0, 4, id="zero-suffix-dropped"),
    pytest.param("bytes=0-9,5-19", 0, 19, id="overlap-coalesced"),
    pytest.param("bytes=0-9,10-19", 0, 19, id="adjacent-coalesced"),
    pytest.param("bytes=10-19,0-9", 0, 19, id="adjacent-out-of-order-coalesced"),
    pytest.param("bytes=0-9,0-9", 0, 9, id="duplicate-coalesced"),
    pytest.param("bytes=-10,1014-", 1014, 1023, id="suffix-and-open-same-bytes"),
    pytest.param("bytes=0-4,2-3,4-9", 0, 9, id="nested-and-touching"),
]


@pytest.mark.parametrize(("header", "first", "last"), SINGLE_RANGES)
def test_single_range_is_a_plain_206(
    served: Served, http: httpx.Client, header: str, first: int, last: int
) -> None:
    r = fetch(http, served(), "/files/digits.txt", range=header)
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert r.content == DIGITS[first : last + 1]
    assert media_type(r) == "text/plain"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "etag" in r.headers and "last-modified" in r.headers


MULTI_RANGES = [
    pytest.param("bytes=0-9,20-29", [(0, 9), (20, 29)], id="two"),
    pytest.param("bytes=0-9, 20-29,\t-10", [(0, 9), (20, 29), (1014, 1023)], id="three-with-ows"),
    pytest.param("bytes=500-599,0-9", [(0, 9), (500, 599)], id="out-of-order"),
    pytest.param("bytes=0-9,5-14,20-29", [(0, 14), (20, 29)], id="partly-coalesced"),
    pytest.param("bytes=0-9,20-29,2000-", [(0, 9), (20, 29)], id="unsatisfiable-part-dropped"),
    pytest.param("bytes=1000-2000,0-0", [(0, 0), (1000, 1023)], id="clamped-part"),
    pytest.param(
        "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(16)),
        [(i * 10, i * 10 + 1) for i in range(16)],
        id="sixteen-is-the-default-max",
    ),
]


@pytest.mark.parametrize(("header", "expected"), MULTI_RANGES)
def test_several_ranges_are_multipart_byteranges(
    served: Served, http: httpx.Client, header: str, expected: list[tuple[int, int]]
) -> None:
    r = fetch(http, served(), "/files/digits.txt", range=header)
    assert r.status_code == 206
    assert media_type(r) == "multipart/byteranges"
    assert "content-range" not in r.headers
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["x-content-type-options"] == "nosniff"
    parts = parse_byteranges(r)
    got = []
    for part_headers, data in parts:
        first, last, size = content_range(part_headers["content-range"])
        assert size == SIZE
        assert part_headers["content-type"].split(";")[0] == "text/plain"
        assert data == DIGITS[first : last + 1]
        got.append((first, last))
    # RFC 9110 §14.6: the order of parts is the server's choice; the bytes are not.
    assert sorted(got) == expected


def test_multipart_boundary_is_unpredictable(served: Served, http: httpx.Client) -> None:
    server = served()
    boundaries = {
        fetch(http, server, "/files/digits.txt", range="bytes=0-0,9-9").headers["content-type"]
        for _ in range(3)
    }
    assert len(boundaries) == 3
    for value in boundaries:
        assert len(value.split("boundary=", 1)[1].strip('"')) >= 16


def test_max_ranges_setting(served: Served, http: httpx.Client) -> None:
    server = served("--max-ranges", "4")
    four = "bytes=0-0,10-10,20-20,30-30"
    r = fetch(http, server, "/files/digits.txt", range=four)
    assert r.status_code == 206
    assert [content_range(h["content-range"])[:2] for h, _ in parse_byteranges(r)] == [
        (0, 0),
        (10, 10),
        (20, 20),
        (30, 30),
    ]
    r = fetch(http, server, "/files/digits.txt", range=four + ",40-40")
    assert r.status_code == 200
    assert r.content == DIGITS
    assert "content-range" not in r.headers


UNSATISFIABLE = [
    pytest.param("digits.txt", "bytes=1024-", SIZE, id="start-at-size"),
    pytest.param("digits.txt", "bytes=5000-6000", SIZE, id="start-past-size"),
    pytest.param("digits.txt", "bytes=-0", SIZE, id="zero-suffix"),
    pytest.param("digits.txt", "bytes=1024-,2000-3000,-0", SIZE, id="all-parts-unsatisfiable"),
    pytest.param("digits.txt", "bytes=99999999999999999999999999-", SIZE, id="huge-start"),
    pytest.param("empty.bin", "bytes=0-", 0, id="empty-open"),
    pytest.param("empty.bin", "bytes=0-0", 0, id="empty-closed"),
    pytest.param("empty.bin", "bytes=-5", 0, id="empty-suffix"),
]


@pytest.mark.parametrize(("name", "header", "size"), UNSATISFIABLE)
def test_unsatisfiable_range_is_416(
    served: Served, http: httpx.Client, name: str, header: str, size: int
) -> None:
    r = fetch(http, served(), f"/files/{name}", range=header)
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{size}"
    assert int(r.headers["content-length"]) == len(r.content)
    if size:
        assert DIGITS[:64] not in r.content


IGNORED_RANGES = [
    pytest.param("items=0-9", id="unknown-unit"),
    pytest.param("bytes 0-9", id="no-equals"),
    pytest.param("bytes=", id="empty-set"),
    pytest.param("bytes=abc", id="not-a-range"),
    pytest.param("bytes=9-0", id="last-before-first"),
    pytest.param("bytes=0-9,x", id="one-invalid-part"),
    pytest.param("bytes=+1-5", id="plus-sign"),
    pytest.param("bytes=0x10-0x20", id="hex"),
    pytest.param("bytes=1-2-3", id="two-dashes"),
    pytest.param("bytes=--5", id="negative-suffix"),
    pytest.param("bytes=0-,0-", id="sum-past-file-overlapping"),
    pytest.param("bytes=0-600,400-1023", id="sum-past-file-coalescable"),
    pytest.param("bytes=-1024,0-0", id="sum-past-file-by-one"),
    pytest.param("bytes=" + ",".join("0-" for _ in range(1000)), id="apache-killer"),
    pytest.param(
        "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(17)), id="more-than-default-max"
    ),
]


@pytest.mark.parametrize("header", IGNORED_RANGES)
def test_ignored_range_gets_the_whole_file(served: Served, http: httpx.Client, header: str) -> None:
    r = fetch(http, served(), "/files/digits.txt", range=header)
    assert r.status_code == 200
    assert r.content == DIGITS
    assert r.headers["content-length"] == str(SIZE)
    assert "content-range" not in r.headers
    assert media_type(r) == "text/plain"


@pytest.mark.parametrize("header", ["bytes=0-9", "bytes=0-9,20-29", "bytes=5000-", "items=0-1"])
def test_head_ignores_range(served: Served, http: httpx.Client, header: str) -> None:
    r = fetch(http, served(), "/files/digits.txt", "HEAD", range=header)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(SIZE)
    assert "content-range" not in r.headers
    assert media_type(r) == "text/plain"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.content == b""


def test_head_matches_get(served: Served, http: httpx.Client) -> None:
    server = served()
    got = fetch(http, server, "/files/hello.txt")
    head = fetch(http, server, "/files/hello.txt", "HEAD")
    assert head.status_code == 200 and head.content == b""
    for name in ("content-length", "content-type", "etag", "last-modified", "content-disposition"):
        assert head.headers[name] == got.headers[name]


# --------------------------------------------------------------------------- preconditions


def http_date(ts: int) -> str:
    return email.utils.formatdate(ts, usegmt=True)


Dated = tuple[Server, str, int]


@pytest.fixture
def dated(served: Served, http: httpx.Client, pool: AppPool) -> Dated:
    """The default server, the current ETag of dated.txt and its Last-Modified (DATED_MTIME on a
    disk; in a bucket, when the object was planted: past by a second, so that it is strong)."""
    server = served()
    r = fetch(http, server, "/files/dated.txt")
    assert r.status_code == 200 and r.content == DATED
    last_modified = pool.mtime("dated.txt")
    wait_until_past(last_modified)
    return server, r.headers["etag"], last_modified


def fill(value: str, etag: str, last_modified: int) -> str:
    """A header value with {etag} and {lm±N} (an HTTP date N seconds from Last-Modified) filled in."""
    dated = re.sub(r"\{lm([+-]\d+)\}", lambda m: http_date(last_modified + int(m[1])), value)
    return dated.replace(ETAG, etag)


def test_last_modified_is_the_file_mtime(served: Served, http: httpx.Client, pool: AppPool) -> None:
    server = served()
    for name in ("dated.txt", "hello.txt", "digits.txt"):
        r = fetch(http, server, f"/files/{name}")
        mtime = pool.mtime(name)
        assert r.headers["last-modified"] == http_date(mtime)
        assert email.utils.parsedate_to_datetime(r.headers["last-modified"]).timestamp() == mtime


def test_etag_is_strong_and_stable(dated: Dated, http: httpx.Client) -> None:
    server, etag, _ = dated
    assert etag.startswith('"') and etag.endswith('"')  # not W/
    assert fetch(http, server, "/files/dated.txt").headers["etag"] == etag
    assert fetch(http, server, "/files/dated.txt", "HEAD").headers["etag"] == etag
    assert fetch(http, server, "/files/dated.txt", range="bytes=0-1").headers["etag"] == etag
    assert fetch(http, server, "/files/hello.txt").headers["etag"] != etag


def lm(offset: int = 0) -> str:
    """An HTTP date `offset` seconds from the file's Last-Modified (filled in by `fill`)."""
    return "{lm" + f"{offset:+d}" + "}"


ETAG = "{etag}"  # replaced by the file's current ETag
WEAK_ETAG = "W/{etag}"

PRECONDITIONS = [
    # If-Match (strong comparison, §13.1.1)
    pytest.param({"if-match": ETAG}, 200, id="if-match-current"),
    pytest.param({"if-match": "*"}, 200, id="if-match-star"),
    pytest.param({"if-match": '"nope", ' + ETAG}, 200, id="if-match-list"),
    pytest.param({"if-match": '"nope"'}, 412, id="if-match-other"),
    pytest.param({"if-match": WEAK_ETAG}, 412, id="if-match-weak-never-matches"),
    # If-Unmodified-Since (§13.1.4), ignored when If-Match is present
    pytest.param({"if-unmodified-since": lm(-3600)}, 412, id="ius-older"),
    pytest.param({"if-unmodified-since": lm()}, 200, id="ius-equal"),
    pytest.param({"if-unmodified-since": lm(3600)}, 200, id="ius-newer"),
    pytest.param({"if-unmodified-since": "not a date"}, 200, id="ius-invalid-ignored"),
    pytest.param({"if-match": ETAG, "if-unmodified-since": lm(-3600)}, 200, id="if-match-wins-over-ius"),
    # If-None-Match (weak comparison, §13.1.2)
    pytest.param({"if-none-match": ETAG}, 304, id="inm-current"),
    pytest.param({"if-none-match": WEAK_ETAG}, 304, id="inm-weak-matches"),
    pytest.param({"if-none-match": "*"}, 304, id="inm-star"),
    pytest.param({"if-none-match": '"a", ' + ETAG}, 304, id="inm-list"),
    pytest.param({"if-none-match": '"other"'}, 200, id="inm-other"),
    # If-Modified-Since (§13.1.3), ignored when If-None-Match is present
    pytest.param({"if-modified-since": lm()}, 304, id="ims-equal"),
    pytest.param({"if-modified-since": lm(3600)}, 304, id="ims-newer"),
    pytest.param({"if-modified-since": lm(-3600)}, 200, id="ims-older"),
    pytest.param({"if-modified-since": "yesterday-ish"}, 200, id="ims-invalid-ignored"),
    pytest.param(
        {"if-none-match": '"other"', "if-modified-since": lm(3600)},
        200,
        id="inm-present-ims-ignored",
    ),
    # §13.2.2 order: 412 before 304
    pytest.param({"if-match": '"nope"', "if-none-match": ETAG}, 412, id="if-match-before-inm"),
    pytest.param(
        {"if-unmodified-since": lm(-3600), "if-modified-since": lm()},
        412,
        id="ius-before-ims",
    ),
    # Preconditions come before Range (§13.2.2 step 5)
    pytest.param({"if-none-match": ETAG, "range": "bytes=0-1"}, 304, id="inm-before-range"),
    pytest.param({"if-match": '"nope"', "range": "bytes=0-1"}, 412, id="if-match-before-range"),
    pytest.param({"if-match": ETAG, "range": "bytes=0-1"}, 206, id="if-match-then-range"),
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(("headers", "status"), PRECONDITIONS)
def test_preconditions(
    dated: Dated, http: httpx.Client, headers: dict[str, str], status: int, method: str
) -> None:
    server, etag, last_modified = dated
    sent = {k: fill(v, etag, last_modified) for k, v in headers.items()}
    r = fetch(http, server, "/files/dated.txt", method, **sent)
    if method == "HEAD" and status == 206:
        status = 200  # Range is for GET only
    assert r.status_code == status
    if status == 304:
        assert r.headers["etag"] == etag
        assert r.content == b""
        assert "content-range" not in r.headers
    elif status == 412:
        assert DATED not in r.content
    elif status == 200:
        assert r.content == (DATED if method == "GET" else b"")
        assert r.headers["content-length"] == str(len(DATED))
    else:
        assert r.content == DATED[:2]


IF_RANGE = [
    pytest.param(ETAG, 206, id="current-strong-etag"),
    pytest.param('"stale"', 200, id="stale-etag"),
    pytest.param(WEAK_ETAG, 200, id="weak-etag"),
    pytest.param(lm(), 206, id="exact-last-modified"),
    pytest.param(lm(-1), 200, id="older-date"),
    pytest.param(lm(1), 200, id="newer-date"),
    pytest.param("garbage", 200, id="not-a-validator"),
]


@pytest.mark.parametrize(("if_range", "status"), IF_RANGE)
def test_if_range(dated: Dated, http: httpx.Client, if_range: str, status: int) -> None:
    server, etag, last_modified = dated
    r = fetch(
        http, server, "/files/dated.txt", range="bytes=0-4", if_range=fill(if_range, etag, last_modified)
    )
    assert r.status_code == status
    if status == 206:
        assert r.content == DATED[:5]
        assert r.headers["content-range"] == f"bytes 0-4/{len(DATED)}"
    else:
        assert r.content == DATED
        assert "content-range" not in r.headers


# --------------------------------------------------------------------------- types and disposition


CONTENT_TYPES = [
    pytest.param("hello.txt", (), "text/plain", id="txt"),
    pytest.param("page.html", (), "text/html", id="html"),
    pytest.param("pic.png", (), "image/png", id="png"),
    pytest.param("data.json", (), "application/json", id="json"),
    pytest.param("archive.tar.gz", (), "application/gzip", id="tar-gz-not-content-encoding"),
    pytest.param("empty.bin", (), "application/octet-stream", id="bin"),
    pytest.param("noext", (), "application/octet-stream", id="no-extension"),
    pytest.param("mystery.zzqx", (), "application/octet-stream", id="unknown-extension"),
    pytest.param("app.log", (), "application/octet-stream", id="log-without-override"),
    pytest.param("app.log", ("--mime-types", MIME_FLAG), "text/plain", id="log-override"),
    pytest.param("empty.bin", ("--mime-types", MIME_FLAG), "application/x-ferry-bin", id="builtin-override"),
    pytest.param("hello.txt", ("--mime-types", MIME_FLAG), "text/plain", id="untouched-by-override"),
]


@pytest.mark.parametrize(("name", "flags", "expected"), CONTENT_TYPES)
def test_content_type(
    served: Served, http: httpx.Client, name: str, flags: tuple[str, ...], expected: str
) -> None:
    r = fetch(http, served(*flags), f"/files/{quote(name)}")
    assert r.status_code == 200
    assert media_type(r) == expected
    assert "content-encoding" not in r.headers
    assert r.headers["x-content-type-options"] == "nosniff"


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\\x00-\x1f\x7f]|\\[\x20-\x7e])*"'
_PARAM = re.compile(rf"\s*;\s*({_TOKEN})\s*=\s*({_TOKEN}|{_QUOTED})")


def parse_disposition(value: str) -> tuple[str, str, str]:
    """(type, filename, decoded filename*) of one well-formed RFC 6266 field, parsed strictly."""
    assert value.isascii() and value.isprintable(), value
    kind = re.match(_TOKEN, value)
    assert kind is not None, value
    params: dict[str, str] = {}
    pos = kind.end()
    while pos < len(value):
        m = _PARAM.match(value, pos)
        assert m is not None, f"malformed parameter at {value[pos:]!r} in {value!r}"
        name, raw = m.group(1).lower(), m.group(2)
        assert name not in params, f"repeated parameter {name} in {value!r}"
        params[name] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        pos = m.end()
    assert set(params) == {"filename", "filename*"}, value
    assert "filename*=UTF-8''" in value, value  # RFC 8187 ext-value: a token, never quoted
    charset, _, rest = params["filename*"].partition("'")
    _language, _, encoded = rest.partition("'")
    assert charset.upper() == "UTF-8", value
    return kind.group().lower(), params["filename"], unquote(encoded, encoding="utf-8", errors="strict")


DISPOSITION_NAMES = [
    pytest.param("hello.txt", id="ascii"),
    pytest.param("résumé 数据.bin", id="non-latin-1"),
    pytest.param('say "hi"; now.txt', id="quote-and-semicolon"),
    pytest.param("100% #1?.txt", id="percent-hash-question"),
]


@pytest.mark.parametrize("name", DISPOSITION_NAMES)
def test_content_disposition_plain_url_leaves_the_name_to_the_url(
    served: Served, http: httpx.Client, name: str
) -> None:
    # The URL's last segment is the exact name: a filename parameter would add nothing for a
    # browser, and rclone (1.72 and later) would take it for the whole path and drop the folder.
    for method in ("GET", "HEAD"):
        r = fetch(http, served(), "/files/" + quote(name), method)
        assert r.status_code == 200
        assert r.headers["content-disposition"] == "attachment"


@pytest.mark.parametrize("name", DISPOSITION_NAMES)
def test_content_disposition_filename(served: Served, http: httpx.Client, name: str) -> None:
    # With a query (here ?download=1; a signed link likewise) the name goes in the header.
    r = fetch(http, served(), "/files/" + quote(name) + "?download=1")
    assert r.status_code == 200
    kind, fallback, star = parse_disposition(r.headers["content-disposition"])
    assert kind == "attachment"
    assert star == name
    assert fallback.isascii() and fallback.isprintable()
    assert '"' not in fallback and "\\" not in fallback
    assert fallback.endswith(Path(name).suffix)
    if name.isascii() and '"' not in name:
        assert fallback == name


def test_content_disposition_unicode_fallback(served: Served, http: httpx.Client) -> None:
    r = fetch(http, served(), "/files/" + quote("résumé 数据.bin") + "?download=1")
    _, fallback, _ = parse_disposition(r.headers["content-disposition"])
    assert fallback.startswith("resume")  # é folded to e, not dropped
    assert r.content == b"unicode name\n"


DISPOSITION_TYPES = [
    pytest.param((), "", "attachment", id="default-attachment"),
    pytest.param((), "?inline=1", "inline", id="inline-param"),
    pytest.param((), "?download=1", "attachment", id="download-param"),
    pytest.param((), "?inline=0", "attachment", id="inline-0-is-default"),
    pytest.param(("--disposition", "inline"), "", "inline", id="setting-inline"),
    pytest.param(("--disposition", "inline"), "?download=1", "attachment", id="setting-inline-download"),
    pytest.param(("--disposition", "inline"), "?inline=1", "inline", id="setting-inline-inline"),
]


@pytest.mark.parametrize(("flags", "query", "expected"), DISPOSITION_TYPES)
def test_content_disposition_type(
    served: Served, http: httpx.Client, flags: tuple[str, ...], query: str, expected: str
) -> None:
    server = served(*flags)
    for method in ("GET", "HEAD"):
        r = fetch(http, server, "/files/hello.txt" + query, method)
        assert r.status_code == 200
        if not query:  # the URL carries the name
            assert r.headers["content-disposition"] == expected
            continue
        kind, fallback, star = parse_disposition(r.headers["content-disposition"])
        assert (kind, fallback, star) == (expected, "hello.txt", "hello.txt")


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        pytest.param("/files/hello.txt", {}, 200, id="200"),
        pytest.param("/files/hello.txt", {"range": "bytes=0-1"}, 206, id="206"),
        pytest.param("/files/digits.txt", {"range": "bytes=0-1,5-6"}, 206, id="206-multipart"),
        pytest.param("/files/empty.bin", {}, 200, id="200-empty"),
        pytest.param("/files/hello.txt", {"range": "bytes=-0"}, 416, id="416"),
    ],
)
def test_common_headers(
    served: Served, http: httpx.Client, path: str, headers: dict[str, str], status: int
) -> None:
    r = fetch(http, served(), path, **headers)
    assert r.status_code == status
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert int(r.headers["content-length"]) == len(r.content)


def test_empty_file(served: Served, http: httpx.Client) -> None:
    r = fetch(http, served(), "/files/empty.bin")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "0"


# --------------------------------------------------------------------------- ops, redirects, listings


def test_healthz(served: Served, http: httpx.Client) -> None:
    r = fetch(http, served(), "/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_root_redirects_to_files(served: Served, http: httpx.Client) -> None:
    server = served()
    r = fetch(http, server, "/")
    assert r.status_code in (301, 302, 303, 307, 308)
    assert r.headers["location"] == "/files/"
    followed = http.get(server.url + "/", follow_redirects=True)
    assert followed.status_code == 200
    assert 'href="hello.txt"' in followed.text


@pytest.mark.parametrize(
    ("path", "location"),
    [
        pytest.param("/files/sub", "/files/sub/", id="dir"),
        pytest.param("/files", "/files/", id="files-root"),
        pytest.param("/files/.git", None, id="hidden-dir-not-redirected"),
        pytest.param("/files/dir-outside", None, id="outside-dir-not-redirected"),
    ],
)
def test_directory_without_slash_redirects(
    served: Served, http: httpx.Client, path: str, location: str | None
) -> None:
    for method in ("GET", "HEAD"):
        r = fetch(http, served(), path, method)
        if location is None:
            assert r.status_code == 404
            assert "location" not in r.headers
        else:
            assert r.status_code == 301
            assert r.headers["location"] == location


HIDDEN_NAMES = {".hidden", ".env", ".git", "link-to-hidden"}
OUTSIDE_NAMES = {"link-outside.txt", "dir-outside"}


def listed_hrefs(html: str) -> set[str]:
    return {part.split('"', 1)[0] for part in html.split('href="')[1:]}


def links_in(backend: str) -> set[str]:
    """The tree's symlink to a file inside ROOT, listed on a disk (a bucket has no symlinks)."""
    return {"link-inside.txt"} if backend == "local" else set()


def test_html_listing(served: Served, http: httpx.Client, backend: str) -> None:
    server = served()
    r = fetch(http, server, "/files/sub/")
    assert r.status_code == 200
    assert media_type(r) == "text/html"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<a href="inner.txt">' in r.text
    assert ".env" not in r.text
    root = fetch(http, server, "/files/")
    assert root.status_code == 200
    hrefs = listed_hrefs(root.text)
    assert {"hello.txt", "sub/", "digits.txt"} | links_in(backend) <= hrefs
    assert quote("résumé 数据.bin") in hrefs
    for name in HIDDEN_NAMES | OUTSIDE_NAMES:
        assert name not in root.text
        assert name + "/" not in hrefs


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        pytest.param("?format=json", {}, id="query"),
        pytest.param("", {"accept": "application/json"}, id="accept"),
    ],
)
def test_json_listing(
    served: Served, http: httpx.Client, backend: str, query: str, headers: dict[str, str]
) -> None:
    server = served()
    r = fetch(http, server, "/files/sub/" + query, **headers)
    assert r.status_code == 200
    assert media_type(r) == "application/json"
    names = {entry["name"] for entry in r.json()["entries"]}
    assert names == {"inner.txt"}
    root = fetch(http, server, "/files/" + query, **headers).json()
    names = {entry["name"] for entry in root["entries"]}
    assert {"hello.txt", "sub", "résumé 数据.bin"} | links_in(backend) <= names
    assert not names & (HIDDEN_NAMES | OUTSIDE_NAMES)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/files/hello.txt/", id="file-with-slash"),
        pytest.param("/files/sub/inner.txt/", id="nested-file-with-slash"),
        pytest.param("/files/missing.txt", id="missing"),
        pytest.param("/files/missing/", id="missing-dir"),
    ],
)
def test_not_found(served: Served, http: httpx.Client, path: str) -> None:
    for method in ("GET", "HEAD"):
        assert fetch(http, served(), path, method).status_code == 404


# --------------------------------------------------------------------------- hidden names and symlinks


HIDDEN_FILES = [
    pytest.param("/files/.hidden", b"hidden\n", id="dotfile"),
    pytest.param("/files/sub/.env", b"SECRET=1\n", id="nested-dotfile"),
    pytest.param("/files/.git/config", b"[core]\n", id="in-dot-dir"),
]


@pytest.mark.parametrize(("path", "content"), HIDDEN_FILES)
def test_hidden_files(served: Served, http: httpx.Client, path: str, content: bytes) -> None:
    for method in ("GET", "HEAD"):
        r = fetch(http, served(), path, method)
        assert r.status_code == 404
        assert content not in r.content
    r = fetch(http, served("--show-hidden"), path)
    assert r.status_code == 200
    assert r.content == content


@disk_only
def test_symlink_to_a_hidden_file_is_hidden(served: Served, http: httpx.Client) -> None:
    test_hidden_files(served, http, "/files/link-to-hidden", b"hidden\n")


def test_show_hidden_lists_hidden_names(served: Served, http: httpx.Client) -> None:
    server = served("--show-hidden")
    names = {e["name"] for e in fetch(http, server, "/files/sub/?format=json").json()["entries"]}
    assert names == {"inner.txt", ".env"}
    assert 'href=".env"' in fetch(http, server, "/files/sub/").text


@disk_only
def test_symlink_inside_root_is_served(served: Served, http: httpx.Client) -> None:
    r = fetch(http, served(), "/files/link-inside.txt")
    assert r.status_code == 200
    assert r.content == HELLO


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/files/link-outside.txt", id="file-link"),
        pytest.param("/files/dir-outside/x.txt", id="dir-link"),
        pytest.param("/files/dir-outside/", id="dir-link-listing"),
    ],
)
@disk_only
def test_symlink_outside_root(served: Served, http: httpx.Client, path: str) -> None:
    for method in ("GET", "HEAD"):
        r = fetch(http, served(), path, method)
        assert r.status_code == 404
        assert CANARY not in r.content
        assert b"x.txt" not in r.content
    followed = fetch(http, served("--follow-symlinks"), path)
    assert followed.status_code == 200
    if path.endswith("/"):
        assert 'href="x.txt"' in followed.text
    else:
        assert followed.content == CANARY
