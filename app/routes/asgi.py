"""Small helpers for Ferry's plain-ASGI routes (downloads and writes)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import Scope

from app.http.conditional import RequestConditions

PREFIX = "/files/"


def header_fields(scope: Scope, wanted: frozenset[bytes]) -> dict[bytes, str]:
    """The wanted request header fields; repeated ones combined with commas (RFC 9110 §5.3)."""
    fields: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in wanted:
            text = value.decode("latin-1")
            fields[name] = f"{fields[name]}, {text}" if name in fields else text
    return fields


def query_params(scope: Scope) -> dict[str, str]:
    query: bytes = scope.get("query_string", b"")
    # Blank values kept: `?meta4` and `?checksums` are flags.
    return dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)) if query else {}


CONDITION_FIELDS = frozenset({b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since"})


def conditions(fields: dict[bytes, str]) -> RequestConditions:
    return RequestConditions(
        if_match=fields.get(b"if-match"),
        if_none_match=fields.get(b"if-none-match"),
        if_modified_since=fields.get(b"if-modified-since"),
        if_unmodified_since=fields.get(b"if-unmodified-since"),
    )
