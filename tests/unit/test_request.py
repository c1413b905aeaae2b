"""A request under /files/ parsed once (app/request.py), and the one base URL function."""

from __future__ import annotations

from typing import Any

import pytest

from app.request import FileRequest, base_url, first_field, server_url


def scope(
    path: str = "/files/a/./b.txt", query: bytes = b"", headers: Any = (), **extra: Any
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query,
        "headers": list(headers),
        "client": ("192.0.2.7", 50000),
        "server": ("0.0.0.0", 8000),
        "scheme": "http",
        **extra,
    }


def test_the_path_is_decoded_below_files_without_dot_segments() -> None:
    assert FileRequest.parse(scope(), None).path == "a/b.txt"
    assert FileRequest.parse(scope("/files/"), None).path == ""
    assert FileRequest.parse(scope("/files/dir/."), None).path == "dir/"


def test_one_blank_value_rule() -> None:
    request = FileRequest.parse(scope(query=b"meta4&limit=&cursor=&q=x&q=y&sig=a%2Bb"), None)
    assert "meta4" in request.query and request.query["meta4"] == ""  # a flag
    assert request.value("limit") is None and request.value("cursor") is None  # blank: not given
    assert request.query["q"] == "y" and ("q", "x") in request.params  # the last; all in order
    assert request.query["sig"] == "a+b"
    assert request.query_string == "meta4&limit=&cursor=&q=x&q=y&sig=a%2Bb"


def test_the_fields_ferry_reads_and_only_those() -> None:
    headers = [
        (b"if-none-match", b'"a"'),
        (b"if-none-match", b'"b"'),
        (b"authorization", b"Bearer one"),
        (b"authorization", b"Bearer two"),
        (b"x-other", b"ignored"),
        (b"range", b"bytes=0-1"),
    ]
    request = FileRequest.parse(scope(headers=headers), None)
    assert request.headers == {
        "if-none-match": '"a", "b"',  # a list field: combined (RFC 9110 §5.3)
        "authorization": "Bearer one",  # one value: the first counts
        "range": "bytes=0-1",
    }
    assert request.conditions.if_none_match == '"a", "b"'
    assert request.client == "192.0.2.7"


@pytest.mark.parametrize(
    ("public", "host", "server", "expected"),
    [
        ("https://dl.example", "h:1", ("10.0.0.1", 80), "https://dl.example"),
        (None, "files.example:8443", ("0.0.0.0", 8000), "http://files.example:8443"),
        (None, "[2001:db8::1]:80", None, "http://[2001:db8::1]:80"),
        (None, None, ("0.0.0.0", 8000), "http://127.0.0.1:8000"),
        (None, "bad host", ("::", 8000), "http://127.0.0.1:8000"),
        (None, "", ("2001:db8::2", 8000), "http://[2001:db8::2]:8000"),
        (None, None, None, "http://127.0.0.1:80"),
    ],
)
def test_base_url(public: str | None, host: str | None, server: Any, expected: str) -> None:
    assert base_url(public, "http", host, server) == expected


def test_the_request_carries_its_base_url() -> None:
    request = FileRequest.parse(scope(headers=[(b"host", b"ferry.test")]), None)
    assert request.base_url == "http://ferry.test"
    assert FileRequest.parse(scope(), None).base_url == "http://127.0.0.1:8000"
    assert FileRequest.parse(scope(), "https://x.example").base_url == "https://x.example"


def test_server_url() -> None:
    assert server_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert server_url("::1", 8000) == "http://[::1]:8000"
    assert server_url("files.example", 443, "https") == "https://files.example:443"


def test_first_field_for_code_that_reads_any_request() -> None:
    headers = [(b"origin", b"https://a.example"), (b"origin", b"https://b.example")]
    assert first_field(headers, b"origin") == "https://a.example"
    assert first_field(headers, b"host") is None
    assert first_field([(b"user-agent", "é".encode("latin-1"))], b"user-agent") == "é"
