"""Header and response injection (ANCHORS.md §3.3, classes 14-17) against a real `ferry serve`.

File names with quotes, semicolons, percent signs that look like CR/LF, and characters outside
Latin-1 (or C1 controls and bidi overrides) must never make a second header line or a broken
Content-Disposition; every response head is read off a raw socket and parsed strictly. Directory
redirects never leave the origin; the HTML listing carries a strict Content-Security-Policy;
stored HTML, SVG and XML are attachments whatever is asked; CORS is off unless configured.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest

from tests.conftest import FerryServer, ServerPool
from tests.security.support import (
    AUTH,
    TOKEN,
    Exchange,
    Outside,
    assert_healthy,
    assert_no_canary,
    get,
)
from tests.support.servers import module_pool

pytestmark = pytest.mark.clients

# Names that can be asked for (the path gate refuses control characters and backslashes in URLs).
TRICKY_NAMES = [
    'quote"inside.txt',
    'a"; filename="evil.html',
    "x; filename*=UTF-8''evil.html",
    "semi;colon;.txt",
    "inj%0d%0aSet-Cookie%3a x=1.txt",
    "%0d%0a.txt",
    "%22quoted%22.txt",
    "equals=sign,comma.txt",
    "paren(1) [2] {3}.txt",
    "tab\u2409symbol.txt",
    "日本語のファイル.txt",
    "emoji-😀.bin",
    "Ωmega.txt",
    "ünïcödé.txt",
    "nel\u0085c1-control.txt",
    "csi\u009bc1-control.txt",
    "line\u2028separator.txt",
    "rlo\u202etxt.exe",
    "zero\u200bwidth.txt",
    "bom\ufeff.txt",
    "'single' `back`.txt",
    " leading-space.txt",
    "trailing-space.txt ",
    "<img src=x onerror=alert(1)>.txt",
    "&lt;entity&gt;.txt",
]
# Names Linux allows that no URL can reach: they must neither be listed nor reach a header.
UNREACHABLE_NAMES = ["crlf\r\nSet-Cookie: x=1.txt", "lf\nLocation: http:evil.example", "bell\x07.txt"]

EVIL_DIRS = ["evil.example", "%2F%2Fevil.example", "@evil.example", "\\evil.example", "%5Cevil.example"]
# Each name and the active type it is served as (override.page only on the INLINE server, whose
# --mime-types makes .page text/html).
ACTIVE = {
    "page.html": "text/html",
    "page.htm": "text/html",
    "PAGE.HTML": "text/html",
    "img.svg": "image/svg+xml",
    "img.SVG": "image/svg+xml",
    "data.xml": "text/xml",
    "style.xsl": "application/xml",
    "override.page": "text/html",
}
ACTIVE_BODY = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(document.domain)'/>\n"

INLINE = ("--disposition", "inline", "--mime-types", ".page=text/html", "--write-token", TOKEN, "--no-fsync")
CORS = ("--cors-origins", "https://a.example")


def _prepare(shared: ServerPool) -> None:
    root = shared.root
    for name in TRICKY_NAMES + UNREACHABLE_NAMES:
        (root / name).write_bytes(b"tricky name\n")
    for name in EVIL_DIRS:
        (root / name).mkdir()
        (root / name / "inside.txt").write_bytes(b"inside\n")
    for name in ACTIVE:
        (root / name).write_bytes(ACTIVE_BODY)


pool = module_pool("headers", _prepare)


@pytest.fixture
def outside(pool: ServerPool) -> Iterator[Outside]:
    watch = Outside.watch(pool.base, pool.root, pool.cwd)
    yield watch
    watch.assert_untouched()


def clean_head(answer: Exchange) -> dict[str, list[str]]:
    """The response head as {name: [values]}, after checking it is well formed: visible ASCII,
    SP and HTAB only, CRLF line ends, one field per line, no cookies or redirects smuggled in."""
    head = answer.head
    assert all(0x20 <= b <= 0x7E or b in b"\t\r\n" for b in head), f"raw bytes in the head: {head!r}"
    assert b"\n" not in head.replace(b"\r\n", b""), f"bare LF in the head: {head!r}"
    assert b"\r" not in head.replace(b"\r\n", b""), f"bare CR in the head: {head!r}"
    fields: dict[str, list[str]] = {}
    for name, value in answer.header_lines():
        fields.setdefault(name, []).append(value)
    assert "set-cookie" not in fields, head
    for once in ("content-disposition", "content-type", "content-length", "location", "etag"):
        assert len(fields.get(once, [])) <= 1, f"{once} sent twice: {head!r}"
    return fields


# RFC 6266 §4.1 with RFC 8187: disposition; filename="<qdtext without quote or backslash>";
# filename*=UTF-8''<attr-char or pct-encoded>
_DISPOSITION = re.compile(
    r"(attachment|inline); filename=\"([\x20\x21\x23-\x5b\x5d-\x7e]*)\"; "
    r"filename\*=UTF-8''((?:[A-Za-z0-9!#$&+\-.^_`|~]|%[0-9A-F]{2})+)"
)


def parse_disposition(value: str) -> tuple[str, str, str]:
    """(type, ASCII fallback, exact name) of a Content-Disposition that must be well formed."""
    match = _DISPOSITION.fullmatch(value)
    assert match, f"malformed Content-Disposition: {value!r}"
    kind, fallback, encoded = match.groups()
    return kind, fallback, unquote(encoded, encoding="utf-8", errors="strict")


def disposition_type(value: str) -> str:
    """The type alone: a plain file URL carries the name itself, so only a query brings a filename."""
    return value.partition(";")[0]


# --------------------------------------------------------------------------- names in headers


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_file_names_never_break_the_response_head(
    served: Callable[..., FerryServer], outside: Outside, name: str
) -> None:
    server = served()
    target = "/files/" + quote(name, safe="")
    for (headers, method, status), query in itertools.product(
        [
            ((), "GET", 200),
            ((), "HEAD", 200),
            (("Range: bytes=0-3",), "GET", 206),
            (("Range: bytes=0-1,4-5",), "GET", 206),
        ],
        ["", "?download=1"],  # with a query the name itself goes into the header
    ):
        answer = get(server.port, target + query, *headers, method=method)
        assert answer.status == status, (name, headers, answer.raw[:300])
        fields = clean_head(answer)
        if not query:
            assert fields["content-disposition"] == ["attachment"]
            continue
        kind, fallback, exact = parse_disposition(fields["content-disposition"][0])
        assert kind == "attachment"
        assert exact == name
        assert fallback.strip() and fallback.isascii()
        assert_no_canary(answer.raw, name)
    # ?inline=1 is honoured, except for names whose type a browser would run (*.html here).
    inline = get(server.port, target + "?inline=1")
    active = name.lower().endswith((".html", ".htm", ".svg", ".xml"))
    assert parse_disposition(clean_head(inline)["content-disposition"][0])[0] == (
        "attachment" if active else "inline"
    )


def test_percent_text_that_looks_like_crlf_stays_text(served: Callable[..., FerryServer]) -> None:
    server = served()
    answer = get(server.port, "/files/" + quote("inj%0d%0aSet-Cookie%3a x=1.txt", safe="") + "?download=1")
    assert answer.status == 200
    value = clean_head(answer)["content-disposition"][0]
    assert "%250d%250a" in value  # the name's percent signs are encoded, never decoded into bytes
    assert answer.body == b"tricky name\n"


@pytest.mark.parametrize(
    "target",
    [
        "/files/crlf%0d%0aSet-Cookie:%20x=1.txt",
        "/files/lf%0aLocation:%20http:evil.example",
        "/files/bell%07.txt",
        "/files/%0d%0aSet-Cookie:%20x=1",
        "/files/a%0d%0a%0d%0a<html>",
    ],
)
def test_control_characters_in_urls_are_refused_cleanly(
    served: Callable[..., FerryServer], outside: Outside, target: str
) -> None:
    server = served()
    answer = get(server.port, target)
    assert answer.status == 400, answer.raw[:300]
    fields = clean_head(answer)
    assert "location" not in fields
    assert b"<html>" not in answer.body
    assert_healthy(server)


def test_unreachable_names_are_not_listed(
    served: Callable[..., FerryServer], pool: ServerPool, outside: Outside
) -> None:
    server = served()
    assert all((pool.root / name).is_file() for name in UNREACHABLE_NAMES)
    listing = httpx.get(f"{server.url}/api/files/", params={"limit": 1000}).json()
    names = {e["name"] for e in listing["entries"]}
    assert set(TRICKY_NAMES) <= names
    assert not names & set(UNREACHABLE_NAMES)
    html = get(server.port, "/files/", "Accept: text/html")
    assert html.status == 200
    clean_head(html)
    assert b"Set-Cookie: x=1" not in html.body and b"bell\x07" not in html.body
    # Listing XSS (class 16): names are text, never markup.
    assert b"<img src=x" not in html.body
    assert b"&lt;img src=x onerror=alert(1)&gt;" in html.body
    assert b"&amp;lt;entity&amp;gt;" in html.body


# --------------------------------------------------------------------------- open redirects

REDIRECT_TARGETS = [
    "/files//evil.example/",
    "/files//evil.example",
    "/files//evil.example/inside.txt",
    "/files/%2F%2Fevil.example/",
    "/files/%2F%2Fevil.example",
    "/files/%2f%2fevil.example",
    "/files/%252F%252Fevil.example",
    "/files/%252F%252Fevil.example/",
    "/files/\\evil.example/",
    "/files/\\evil.example",
    "/files/%5Cevil.example",
    "/files/%5C%5Cevil.example",
    "/files/%255Cevil.example",
    "/files/\\\\evil.example",
    "/files/\\/evil.example",
    "/files/%09/evil.example",
    "/files/evil.example",
    "/files/@evil.example",
    "/files/%40evil.example",
    "/files/evil.example%2f",
    "/files/evil.example%2F..%2F..%2F",
    "//evil.example/files/evil.example",
    "///evil.example",
    "/\\evil.example",
    "/%2F%2Fevil.example",
    "/files",
    "/",
    "http://evil.example/files/evil.example",
]


def _same_origin(location: str) -> None:
    assert location.startswith("/"), location
    for form in (location, location.replace("\\", "/"), unquote(location).replace("\\", "/")):
        assert not form.startswith("//"), f"protocol-relative Location {location!r}"
    parts = urlsplit(location)
    assert not parts.scheme and not parts.netloc, location
    assert all(0x21 <= ord(c) <= 0x7E for c in location), location


@pytest.mark.parametrize("host", ["x", "evil.example"])
@pytest.mark.parametrize("target", REDIRECT_TARGETS)
def test_redirects_never_leave_the_origin(
    served: Callable[..., FerryServer], outside: Outside, target: str, host: str
) -> None:
    server = served()
    answer = get(server.port, target, host=host)
    assert answer.status in (200, 301, 302, 308, 400, 404), (target, answer.raw[:300])
    fields = clean_head(answer)
    location = fields.get("location", [None])[0]
    if answer.status in (301, 302, 308):
        assert location is not None
    if location is not None:
        _same_origin(location)
    assert_no_canary(answer.raw, target)


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/files/evil.example", "/files/evil.example/"),
        ("/files/%252F%252Fevil.example", "/files/%252F%252Fevil.example/"),
        ("/files/%40evil.example", "/files/%40evil.example/"),
        ("/files/%255Cevil.example", "/files/%255Cevil.example/"),
    ],
)
def test_real_directories_named_like_hosts_redirect_to_themselves(
    served: Callable[..., FerryServer], target: str, location: str
) -> None:
    server = served()
    answer = get(server.port, target, host="evil.example")
    assert answer.status == 301
    assert clean_head(answer)["location"] == [location]
    follow = get(server.port, location)
    assert follow.status == 200 and b"inside.txt" in follow.body


# --------------------------------------------------------------------------- listing CSP


def _csp(value: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            assert words[0].lower() not in directives, f"directive twice: {value!r}"
            directives[words[0].lower()] = words[1:]
    return directives


@pytest.mark.parametrize(
    "target", ["/files/", "/files/sub/", "/files/?q=hello", "/files/?sort=size&order=desc"]
)
def test_html_listing_sends_a_strict_csp(served: Callable[..., FerryServer], target: str) -> None:
    for flags in [(), INLINE]:
        server = served(*flags)
        answer = get(server.port, target, "Accept: text/html")
        assert answer.status == 200, answer.raw[:300]
        fields = clean_head(answer)
        assert fields["content-type"][0].startswith("text/html")
        assert fields["x-content-type-options"] == ["nosniff"]
        (value,) = fields["content-security-policy"]
        csp = _csp(value)
        assert csp.get("default-src") == ["'none'"], value
        scripts = csp.get("script-src", csp["default-src"])
        assert set(scripts) <= {"'self'", "'none'"}, f"scripts allowed from {scripts}"
        for directive, sources in csp.items():
            for bad in (
                "'unsafe-inline'",
                "'unsafe-eval'",
                "'unsafe-hashes'",
                "*",
                "data:",
                "http:",
                "https:",
            ):
                assert bad not in sources, f"{directive} allows {bad}: {value!r}"
        assert "object-src" not in csp or csp["object-src"] == ["'none'"]
        assert csp.get("base-uri") == ["'none'"], value
        assert csp.get("frame-ancestors") == ["'none'"], value
        # The page really does without inline script: no <script> body and no on*= handlers.
        page = _Scripts()
        page.feed(answer.body.decode("utf-8"))
        assert page.inline == [], page.inline


class _Scripts(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block: inline scripts and handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name.lower() for name, _ in attrs}
        self.inline += [f"<{tag} {n}=...>" for n in names if n.startswith("on")]
        if tag == "script":
            self._in_script = "src" not in names
        for name, value in attrs:
            if name.lower() in ("href", "src", "action") and (value or "").strip().lower().startswith(
                "javascript:"
            ):
                self.inline.append(f"<{tag} {name}={value!r}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"<script>{data[:80]!r}")


# --------------------------------------------------------------------------- stored XSS


@pytest.mark.parametrize(
    ("name", "flags"),
    [pytest.param(name, (), id=f"default-{name}") for name in ACTIVE if name != "override.page"]
    + [pytest.param(name, INLINE, id=f"disposition-inline-{name}") for name in ACTIVE],
)
def test_active_types_are_always_attachments(
    served: Callable[..., FerryServer], outside: Outside, name: str, flags: tuple[str, ...]
) -> None:
    server = served(*flags)
    expected_type = ACTIVE[name]
    for query in ("", "?inline=1", "?inline=1&download=0", "?download=0&inline=1"):
        for method, headers in [("GET", ()), ("HEAD", ()), ("GET", ("Range: bytes=0-9",))]:
            answer = get(server.port, "/files/" + quote(name) + query, *headers, method=method)
            assert answer.status in (200, 206), answer.raw[:300]
            fields = clean_head(answer)
            assert fields["content-type"][0].partition(";")[0] == expected_type
            if not query:
                assert fields["content-disposition"] == ["attachment"], (method, fields)
                continue
            kind, _, exact = parse_disposition(fields["content-disposition"][0])
            assert (kind, exact) == ("attachment", name), (query, method, fields["content-disposition"])
            assert fields["x-content-type-options"] == ["nosniff"]


def test_uploaded_html_is_an_attachment_too(served: Callable[..., FerryServer], outside: Outside) -> None:
    server = served(*INLINE)
    with httpx.Client(base_url=server.url) as client:
        for name in ("uploaded.html", "uploaded.svg"):
            assert client.put(f"/files/{name}", content=ACTIVE_BODY, headers=AUTH).status_code in (201, 204)
            response = client.get(f"/files/{name}", params={"inline": "1"})
            assert response.status_code == 200 and response.content == ACTIVE_BODY
            assert response.headers["content-disposition"].startswith("attachment;")
            assert response.headers["x-content-type-options"] == "nosniff"


def test_inactive_types_follow_the_setting(served: Callable[..., FerryServer]) -> None:
    """The control: the same requests do make plain text inline, so the refusal above is real."""
    default, inline = served(), served(*INLINE)

    def kind(url: str) -> str:
        return disposition_type(httpx.get(url).headers["content-disposition"])

    assert kind(f"{default.url}/files/hello.txt") == "attachment"
    assert kind(f"{default.url}/files/hello.txt?inline=1") == "inline"
    assert kind(f"{inline.url}/files/hello.txt") == "inline"


# --------------------------------------------------------------------------- CORS


def _cors_fields(answer: Exchange) -> dict[str, list[str]]:
    return {k: v for k, v in clean_head(answer).items() if k.startswith("access-control-")}


def _preflight(server: FerryServer, origin: str) -> Exchange:
    return get(
        server.port,
        "/files/hello.txt",
        f"Origin: {origin}",
        "Access-Control-Request-Method: GET",
        "Access-Control-Request-Headers: range, if-range",
        method="OPTIONS",
    )


@pytest.mark.parametrize(
    "target", ["/files/hello.txt", "/files/", "/api/files/", "/api/search?q=hello", "/healthz"]
)
def test_no_cors_headers_by_default(served: Callable[..., FerryServer], target: str) -> None:
    server = served()
    for origin in ("https://a.example", "null", "http://127.0.0.1"):
        answer = get(server.port, target, f"Origin: {origin}", "Range: bytes=0-1")
        assert answer.status in (200, 206), answer.raw[:300]
        assert _cors_fields(answer) == {}, answer.head
    preflight = _preflight(server, "https://a.example")
    assert preflight.status < 500
    assert _cors_fields(preflight) == {}, preflight.head


def test_cors_for_the_configured_origin_only(served: Callable[..., FerryServer]) -> None:
    server = served(*CORS)
    allowed = get(server.port, "/files/hello.txt", "Origin: https://a.example", "Range: bytes=0-4")
    assert allowed.status == 206 and allowed.body == b"hello"
    fields = _cors_fields(allowed)
    assert fields["access-control-allow-origin"] == ["https://a.example"]
    exposed = {h.strip().lower() for h in fields["access-control-expose-headers"][0].split(",")}
    assert {"content-range", "content-disposition", "etag"} <= exposed
    assert "access-control-allow-credentials" not in fields
    assert "origin" in clean_head(allowed)["vary"][0].lower()

    preflight = _preflight(server, "https://a.example")
    assert 200 <= preflight.status < 300, preflight.raw[:300]
    fields = _cors_fields(preflight)
    assert fields["access-control-allow-origin"] == ["https://a.example"]
    assert "GET" in [m.strip() for m in fields["access-control-allow-methods"][0].split(",")]
    allowed_headers = {h.strip().lower() for h in fields["access-control-allow-headers"][0].split(",")}
    assert {"range", "if-range"} <= allowed_headers
    assert "access-control-allow-credentials" not in fields

    for origin in (
        "https://b.example",
        "https://a.example.evil.example",
        "https://evil.example/https://a.example",
        "http://a.example",
        "https://a.example:8443",
        "null",
    ):
        other = get(server.port, "/files/hello.txt", f"Origin: {origin}", "Range: bytes=0-4")
        assert other.status == 206
        assert _cors_fields(other) == {}, (origin, other.head)
        refused = _preflight(server, origin)
        assert refused.status < 500
        assert _cors_fields(refused) == {}, (origin, refused.head)
    assert_healthy(server)
