"""Content-Disposition (RFC 6266, RFC 8187) and Content-Type from the file name."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.http.headers import content_disposition, file_disposition, http10_keeps_alive
from app.http.mime import DEFAULT_TYPE, content_type_for

# RFC 6266 §4.1 with the two parameters Ferry sends; RFC 8187 §3.2.1:
#   ext-value   = charset "'" [ language ] "'" value-chars
#   value-chars = *( pct-encoded / attr-char )
#   attr-char   = ALPHA / DIGIT / "!" / "#" / "$" / "&" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
DISPOSITION = re.compile(
    r"(?P<type>attachment|inline); "
    r'filename="(?P<fallback>[^"\\]*)"; '
    r"filename\*=UTF-8''(?P<encoded>(?:%[0-9A-F]{2}|[A-Za-z0-9!#$&+\-.^_`|~])*)"
)


def parse_disposition(header: str) -> tuple[str, str, str]:
    match = DISPOSITION.fullmatch(header)
    assert match is not None, header
    return match["type"], match["fallback"], match["encoded"]


def is_safe_fallback(fallback: str) -> bool:
    """Printable ASCII only, and nothing that would need escaping inside a quoted-string."""
    return bool(fallback) and all(" " <= c <= "~" and c not in '"\\' for c in fallback)


NAMES = [
    pytest.param("report.pdf", id="ascii"),
    pytest.param("résumé 数据.bin", id="accents-and-cjk"),
    pytest.param('say "hi".txt', id="double-quotes"),
    pytest.param("a;b=c.txt", id="semicolon-equals"),
    pytest.param("back\\slash.txt", id="backslash"),
    pytest.param("evil\r\nSet-Cookie: x=1.txt", id="crlf-injection"),
    pytest.param("100% #1?.txt", id="percent-hash-question"),
    pytest.param("%41.txt", id="percent-escape-lookalike"),
    pytest.param("🚀 launch.txt", id="emoji"),
    pytest.param("tab\there.txt", id="tab"),
    pytest.param("nul\x00.txt", id="nul"),
    pytest.param("数据", id="only-cjk"),
    pytest.param("", id="empty"),
    pytest.param("...", id="only-dots"),
    pytest.param("  spaced  .txt", id="spaces"),
    pytest.param("a'b.txt", id="apostrophe"),
    pytest.param("ﬁle½.txt", id="compatibility-chars"),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["attachment", "inline"])
def test_content_disposition_is_one_safe_line_that_round_trips(kind: str, name: str) -> None:
    header = content_disposition(kind, name)
    assert all(" " <= c <= "~" for c in header)  # one line of printable ASCII
    got_kind, fallback, encoded = parse_disposition(header)
    assert got_kind == kind
    assert is_safe_fallback(fallback)
    assert unquote(encoded, encoding="utf-8", errors="strict") == name


def test_content_disposition_ascii_name_is_used_as_is() -> None:
    assert content_disposition("attachment", "report-2024_v1.pdf") == (
        "attachment; filename=\"report-2024_v1.pdf\"; filename*=UTF-8''report-2024_v1.pdf"
    )


def test_content_disposition_utf8_name_is_percent_encoded() -> None:
    # RFC 8187: UTF-8 octets of é = C3 A9, 数 = E6 95 B0, 据 = E6 8D AE; space is not an attr-char.
    _, fallback, encoded = parse_disposition(content_disposition("attachment", "résumé 数据.bin"))
    assert encoded == "r%C3%A9sum%C3%A9%20%E6%95%B0%E6%8D%AE.bin"
    assert fallback.startswith("resume") and fallback.endswith(".bin")


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("a;b.txt", "a%3Bb.txt"),
        ("100%.txt", "100%25.txt"),
        ('"q".txt', "%22q%22.txt"),
        ("a\\b", "a%5Cb"),
        ("a\r\nb", "a%0D%0Ab"),
        ("a b", "a%20b"),
        ("a'b", "a%27b"),
        ("a*b", "a%2Ab"),
        ("🚀", "%F0%9F%9A%80"),
        ("a!#$&+-.^_`|~z", "a!#$&+-.^_`|~z"),
    ],
)
def test_content_disposition_encodes_every_non_attr_char(name: str, encoded: str) -> None:
    assert parse_disposition(content_disposition("attachment", name))[2] == encoded


@pytest.mark.parametrize("name", ['a"b', "a\\b", "a\r\nb", "a\x00b", "a\x7fb", "数据.bin", "🚀.txt"])
def test_content_disposition_fallback_drops_unsafe_chars(name: str) -> None:
    _, fallback, _ = parse_disposition(content_disposition("attachment", name))
    assert is_safe_fallback(fallback)


PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("percent%41.txt", "percent_41.txt"),  # wget2 saved this as percentA.txt
        ("%41.txt", "_41.txt"),
        ("a%2fb%2Fc.txt", "a_2fb_2Fc.txt"),
        ("%%41.txt", "%_41.txt"),
        ("100%.txt", "100%.txt"),  # a lone percent sign is no escape
        ("100% #1?.txt", "100% #1?.txt"),
        ("50%off.txt", "50%off.txt"),  # 'o' is no hex digit
        ("%e9t%C3%A9.txt", "_e9t_C3_A9.txt"),
        ("％41.txt", "_41.txt"),  # a fullwidth percent sign folds to '%'
        ("%é1.txt", "_e1.txt"),  # dropping the accent brings '%' next to two hex digits
    ],
)
def test_content_disposition_fallback_has_no_percent_escapes(name: str, fallback: str) -> None:
    # RFC 6266 appendix D: some recipients decode %XX in the quoted filename, others do not.
    _, got, encoded = parse_disposition(content_disposition("attachment", name))
    assert got == fallback
    assert unquote(encoded, errors="strict") == name  # filename* still carries the exact name


@settings(max_examples=500)
@given(name=st.text(max_size=60), kind=st.sampled_from(["attachment", "inline"]))
def test_content_disposition_any_name_is_one_printable_line_and_round_trips(name: str, kind: str) -> None:
    header = content_disposition(kind, name)
    assert all(" " <= c <= "~" for c in header)
    got_kind, fallback, encoded = parse_disposition(header)
    assert got_kind == kind
    assert is_safe_fallback(fallback)
    assert PERCENT_ESCAPE.search(fallback) is None
    assert fallback.encode("iso-8859-1").decode("iso-8859-1") == fallback
    assert unquote(encoded, encoding="utf-8", errors="strict") == name


@settings(max_examples=300)
@given(name=st.text(alphabet=st.sampled_from("%%%0129aAfFgG é％\u0301x."), max_size=20))
def test_content_disposition_fallback_never_holds_a_percent_escape(name: str) -> None:
    """Names dense in percent signs, hex digits and characters that fold into them."""
    _, fallback, encoded = parse_disposition(content_disposition("attachment", name))
    assert PERCENT_ESCAPE.search(fallback) is None
    assert unquote(encoded, encoding="utf-8", errors="strict") == name


@pytest.mark.parametrize("kind", ["attachment", "inline"])
def test_content_disposition_without_a_name_is_the_type_alone(kind: str) -> None:
    assert content_disposition(kind) == kind


@pytest.mark.parametrize("name", ["report.pdf", "résumé 数据.bin", "a;b.txt", "100% #1?.txt", "README"])
@pytest.mark.parametrize("kind", ["attachment", "inline"])
def test_file_disposition_names_the_file_only_when_the_url_has_a_query(kind: str, name: str) -> None:
    # Without a query the URL's last segment is the exact name (browsers save under it), and a
    # filename would make rclone >= 1.72 drop the file's folder.
    assert file_disposition(kind, name, query=False) == kind
    assert file_disposition(kind, name, query=True) == content_disposition(kind, name)


# --- Content-Type ---------------------------------------------------------------------------------

OVERRIDES = {".log": "text/plain", ".m3u8": "application/vnd.apple.mpegurl", ".txt": "text/markdown"}

MIME_CASES = [
    pytest.param("notes.txt", {}, "text/plain", id="txt"),
    pytest.param("page.html", {}, "text/html", id="html"),
    pytest.param("photo.png", {}, "image/png", id="png"),
    pytest.param("PHOTO.PNG", {}, "image/png", id="upper-case-extension"),
    pytest.param("Photo.Png", {}, "image/png", id="mixed-case-extension"),
    pytest.param("doc.pdf", {}, "application/pdf", id="pdf"),
    pytest.param("a.b.c.json", {}, "application/json", id="last-extension-counts"),
    # A compressed file is what it is; never a text type with an encoding.
    pytest.param("archive.tar.gz", {}, "application/gzip", id="tar-gz"),
    pytest.param("ARCHIVE.TAR.GZ", {}, "application/gzip", id="tar-gz-upper"),
    pytest.param("data.json.gz", {}, "application/gzip", id="json-gz"),
    pytest.param("notes.txt.gz", {}, "application/gzip", id="txt-gz"),
    pytest.param("x.gz", {}, "application/gzip", id="gz"),
    pytest.param("x.Gz", {}, "application/gzip", id="gz-mixed-case"),
    pytest.param("x.tgz", {}, "application/gzip", id="tgz"),
    pytest.param("x.tar.bz2", {}, "application/x-bzip2", id="bz2"),
    pytest.param("x.tar.xz", {}, "application/x-xz", id="xz"),
    # Unknown or no extension.
    pytest.param("blob.zzqq", {}, DEFAULT_TYPE, id="unknown-extension"),
    pytest.param("README", {}, DEFAULT_TYPE, id="no-extension"),
    pytest.param("trailing.", {}, DEFAULT_TYPE, id="trailing-dot"),
    pytest.param("", {}, DEFAULT_TYPE, id="empty"),
    # A file name is not a URL: "data:" in it must not choose the type.
    pytest.param("data:text/html,x", {}, DEFAULT_TYPE, id="data-url-lookalike"),
    pytest.param("data:image/svg+xml,x.bin", {}, DEFAULT_TYPE, id="data-url-lookalike-bin"),
    # Overrides win, matched case-insensitively on the extension.
    pytest.param("app.log", OVERRIDES, "text/plain", id="override-new-extension"),
    pytest.param("APP.LOG", OVERRIDES, "text/plain", id="override-upper-case"),
    pytest.param("live.m3u8", OVERRIDES, "application/vnd.apple.mpegurl", id="override-m3u8"),
    pytest.param("notes.txt", OVERRIDES, "text/markdown", id="override-beats-built-in"),
    pytest.param("a.tar.gz", {".gz": "application/x-gzip"}, "application/x-gzip", id="override-encoding"),
    pytest.param("photo.png", OVERRIDES, "image/png", id="override-other-extension-untouched"),
    pytest.param("log", OVERRIDES, DEFAULT_TYPE, id="override-needs-a-dot"),
]


@pytest.mark.parametrize(("name", "overrides", "expected"), MIME_CASES)
def test_content_type_for_table(name: str, overrides: dict[str, str], expected: str) -> None:
    assert content_type_for(name, overrides) == expected


@settings(max_examples=300)
@given(name=st.text(max_size=40))
def test_content_type_for_never_raises_and_gives_a_type(name: str) -> None:
    assert "/" in content_type_for(name, OVERRIDES)


# RFC 9112 §9.3 (HTTP/1.0's "keep-alive" connection option), RFC 9110 §7.6.1 ("close" wins).
KEEP_ALIVE = [
    ([], False),
    ([(b"connection", b"keep-alive")], True),
    ([(b"connection", b"Keep-Alive")], True),
    ([(b"connection", b" keep-alive ,foo")], True),
    ([(b"connection", b"foo, KEEP-ALIVE")], True),
    ([(b"connection", b"close")], False),
    ([(b"connection", b"keep-alive, close")], False),
    ([(b"connection", b"keep-alive"), (b"connection", b"close")], False),
    ([(b"connection", b"keepalive")], False),
    ([(b"connection", b"keep-alive-ish")], False),
    ([(b"keep-alive", b"timeout=5")], False),  # the Keep-Alive field alone asks for nothing
    ([(b"x-connection", b"keep-alive")], False),
]


@pytest.mark.parametrize(("fields", "kept"), KEEP_ALIVE)
def test_an_http_1_0_request_keeps_its_connection_only_when_it_asks_and_never_says_close(
    fields: list[tuple[bytes, bytes]], kept: bool
) -> None:
    assert http10_keeps_alive(fields) is kept
