"""A request under /files/, parsed once into a typed value, and this server's base URL.

Downloads, listings and writes are served as plain ASGI (app/main.py), so what FastAPI would
parse for them is parsed here, once per request: the decoded path below /files/, the query (one
rule: blank values are kept, so ``?meta4`` and ``?checksums`` are flags, and a valued parameter
given blank counts as not given), the header fields Ferry reads, the client's address and the
base URL for absolute links.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from app.http.conditional import RequestConditions
from app.http.plan import DownloadRequest, FileFacts, ResponsePlan, plan_download
from app.storage.paths import normal_url_path

PREFIX = "/files/"
READ_METHODS = ("GET", "HEAD")
WRITE_METHODS = ("PUT", "POST", "DELETE")

# The request header fields Ferry reads; repeated ones are combined with commas (RFC 9110 §5.3),
# except those that are one value, where the first counts.
_SINGLE = frozenset({b"authorization", b"host"})
_FIELDS = _SINGLE | {
    b"accept",
    b"content-digest",
    b"content-length",
    b"content-type",
    b"if-match",
    b"if-modified-since",
    b"if-none-match",
    b"if-range",
    b"if-unmodified-since",
    b"range",
    b"repr-digest",
    b"want-repr-digest",
    # The IETF resumable-upload draft: a PUT or POST carrying Upload-Complete creates an upload.
    b"upload-complete",
    b"upload-length",
    b"upload-draft-interop-version",
    b"upload-metadata",
    b"content-disposition",
}
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True, slots=True)
class FileRequest:
    """GET, HEAD, PUT, POST or DELETE of /files/{path}."""

    method: str
    path: str  # decoded, '.' segments dropped, below /files/ ('' is the root, 'dir/' a directory)
    query_string: str  # as sent (latin-1), to carry on in a redirect
    params: tuple[tuple[str, str], ...]  # the query in order, repeated names kept (signed links)
    query: Mapping[str, str]  # the same, the last value of each name
    headers: Mapping[str, str]  # the fields Ferry reads, by lower-case name
    client: str | None  # the client's address
    scheme: str
    server: tuple[str, int | None] | None  # the address the connection reached
    public_url: str | None  # FERRY_PUBLIC_URL

    @classmethod
    def parse(cls, scope: Mapping[str, Any], public_url: str | None) -> FileRequest:
        raw: bytes = scope.get("query_string", b"")
        query_string = raw.decode("latin-1")
        params = tuple(parse_qsl(query_string, keep_blank_values=True)) if raw else ()
        client = scope.get("client")
        server = scope.get("server")
        return cls(
            method=scope["method"],
            path=normal_url_path(scope["path"][len(PREFIX) :]),
            query_string=query_string,
            params=params,
            query=dict(params),
            headers=header_fields(scope["headers"]),
            client=client[0] if client else None,
            scheme=scope.get("scheme", "http"),
            server=tuple(server) if server else None,
            public_url=public_url,
        )

    def value(self, name: str) -> str | None:
        """A valued query parameter: None when absent or given blank (``?limit=``)."""
        return self.query.get(name) or None

    def plan(self, facts: FileFacts, *, max_ranges: int) -> ResponsePlan:
        """This GET or HEAD's answer for a file (or an archive) with these facts: its Range,
        If-Range and preconditions decided by app/http/plan.py."""
        fields = self.headers
        wanted = DownloadRequest(self.method, fields.get("range"), fields.get("if-range"), self.conditions)
        return plan_download(wanted, facts, max_ranges=max_ranges, now=int(time.time()))

    @property
    def conditions(self) -> RequestConditions:
        fields = self.headers
        return RequestConditions(
            if_match=fields.get("if-match"),
            if_none_match=fields.get("if-none-match"),
            if_modified_since=fields.get("if-modified-since"),
            if_unmodified_since=fields.get("if-unmodified-since"),
        )

    @property
    def base_url(self) -> str:
        return base_url(self.public_url, self.scheme, self.headers.get("host"), self.server)


def is_file_request(scope: Mapping[str, Any]) -> bool:
    """Whether Ferry's plain-ASGI routes serve this request (else FastAPI does)."""
    return (
        scope["type"] == "http"
        and scope["method"] in (*READ_METHODS, *WRITE_METHODS)
        and scope["path"].startswith(PREFIX)
    )


def header_fields(headers: Any) -> dict[str, str]:
    """The fields Ferry reads from raw ASGI headers, by lower-case name."""
    fields: dict[str, str] = {}
    for name, value in headers:
        if name in _FIELDS:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            if key not in fields:
                fields[key] = text
            elif name not in _SINGLE:
                fields[key] = f"{fields[key]}, {text}"
    return fields


def first_field(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of one request header field, for what reads any request (the access log,
    CORS, FastAPI routes' base URL); requests under /files/ read `FileRequest.headers`."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def base_url(
    public_url: str | None, scheme: str, host: str | None, server: tuple[str, int | None] | None
) -> str:
    """This server as the client reached it, for absolute links: FERRY_PUBLIC_URL when set, else
    the request's Host, else the address the connection reached (never a wildcard address)."""
    if public_url:
        return public_url
    if host is not None and _HOST.fullmatch(host):
        return f"{scheme}://{host}"
    if server is not None and server[1] is not None:
        return server_url(server[0], server[1], scheme)
    return server_url("127.0.0.1", 443 if scheme == "https" else 80, scheme)


def scope_base_url(scope: Mapping[str, Any], public_url: str | None) -> str:
    """`base_url` of any HTTP request (a FastAPI route's `request.scope`)."""
    server = scope.get("server")
    host = first_field(scope["headers"], b"host")
    return base_url(public_url, scope.get("scheme", "http"), host, tuple(server) if server else None)


def server_url(host: str, port: int, scheme: str = "http") -> str:
    """scheme://HOST:PORT for an address, with a wildcard bind address as the loopback one."""
    host = "127.0.0.1" if host in _WILDCARDS else host
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    return f"{scheme}://{host}:{port}"
