"""Checks of response heads and bodies against the known tree (pure: no I/O)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.load.data import DataFile, Span, SpanSet
from tests.load.wire import HEAD_END, Head

MultipartPart = tuple[dict[str, str], bytes]


def expect_status(head: Head, status: int) -> str | None:
    return None if head.status == status else f"status {head.status}, expected {status}"


def expect_header(head: Head, name: str, value: str) -> str | None:
    got = head.headers.get(name)
    return None if got == value else f"{name} {got!r}, expected {value!r}"


def first_problem(*checks: str | None) -> str | None:
    return next((check for check in checks if check is not None), None)


def check_digest(what: str, digest: str, expected: str, received: int, length: int) -> str | None:
    if received != length:
        return f"{what}: {received} bytes, expected {length}"
    return None if digest == expected else f"{what}: sha256 mismatch"


def boundary_of(head: Head) -> str | None:
    content_type = head.headers.get("content-type", "")
    if not content_type.startswith("multipart/byteranges"):
        return None
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip('"')
    return None


def split_multipart(body: bytes, boundary: str) -> list[MultipartPart] | str:
    """The parts of a multipart/byteranges body, or what is wrong with its framing."""
    delimiter = f"--{boundary}".encode("latin-1")
    opening, closing = delimiter + b"\r\n", b"\r\n" + delimiter + b"--\r\n"
    if not body.startswith(opening) or not body.endswith(closing):
        return "multipart body does not open and close with its boundary"
    inner = body[len(opening) : -len(closing)]
    parts: list[MultipartPart] = []
    for raw in inner.split(b"\r\n" + opening):
        head, found, data = raw.partition(HEAD_END)
        if not found:
            return "multipart part without a header block"
        fields = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        parts.append((fields, data))
    return parts


def check_parts(parts: list[MultipartPart], spans: SpanSet, file: DataFile) -> str | None:
    """Each expected range exactly once, each with its bytes (order as the server chose)."""
    expected = {span.content_range(file.size): span for span in spans.spans}
    seen: set[str] = set()
    for fields, data in parts:
        content_range = fields.get("content-range", "")
        span = expected.get(content_range)
        if span is None or content_range in seen:
            return f"unexpected part {content_range!r}"
        seen.add(content_range)
        problem = check_span_bytes(span, data)
        if problem:
            return problem
    return None if len(seen) == len(expected) else f"{len(seen)} parts, expected {len(expected)}"


def check_span_bytes(span: Span, data: bytes) -> str | None:
    digest = hashlib.sha256(data).hexdigest()
    return check_digest(f"part {span.spec}", digest, span.sha256, len(data), span.length)


def parse_json(body: bytes) -> dict[str, Any] | str:
    try:
        document = json.loads(body)
    except ValueError as exc:
        return f"JSON does not parse: {exc}"
    if not isinstance(document, dict) or not isinstance(document.get("entries"), list):
        return "JSON without an entries list"
    return document


def check_page(document: dict[str, Any], *, expected: int, more: bool, after: str) -> str | None:
    """A page of `expected` entries, in name order after `after`, with a cursor iff `more`."""
    names = [str(entry.get("name")) for entry in document["entries"]]
    if len(names) != expected:
        return f"{len(names)} entries, expected {expected}"
    if names != sorted(names) or (names and names[0] <= after):
        return "entries out of order"
    has_cursor = document.get("next_cursor") is not None
    return None if has_cursor == more else f"next_cursor {'present' if has_cursor else 'missing'}"


def check_search(document: dict[str, Any], query: str, *, expected: int, more: bool) -> str | None:
    names = [str(entry.get("name")) for entry in document["entries"]]
    if len(names) != expected:
        return f"{len(names)} results for {query!r}, expected {expected}"
    if any(query.casefold() not in name.casefold() for name in names):
        return f"a result for {query!r} does not contain it"
    has_cursor = document.get("next_cursor") is not None
    return None if has_cursor == more else f"next_cursor {'present' if has_cursor else 'missing'}"
