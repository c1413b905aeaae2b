"""Raw HTTP over a socket: requests written byte for byte (no client library normalising paths or
handling early answers) and responses read and parsed by hand."""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass

# The shape of any server these helpers talk to: a loopback port.
LOOPBACK = "127.0.0.1"


def connect(port: int, *, timeout: float = 15, source: str | None = None) -> socket.socket:
    """A connection to the loopback `port`, Nagle off (small pieces go out as they are sent)."""
    sock = socket.create_connection(
        (LOOPBACK, port), timeout=timeout, source_address=(source, 0) if source else None
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_head(
    method: str, target: str, headers: dict[str, str] | None = None, host: str = LOOPBACK
) -> bytes:
    """A request head with `target` exactly as given (latin-1)."""
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {host}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The response head (status line + headers) and whatever body bytes came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed before the response head: {data!r}"
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The status line and (lower-case name, value) pairs; every line must be a well-formed field."""
    text = head.decode("latin-1")
    status_line, *lines = text.split("\r\n")
    fields = []
    for line in lines:
        name, colon, value = line.partition(":")
        assert colon and name and name == name.strip(), f"malformed header line {line!r}"
        assert all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in name), repr(line)
        fields.append((name.lower(), value.strip(" \t")))
    return status_line, fields


def status_of(status_line: str) -> int:
    version, status, *_ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    return int(status)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def read_response(sock: socket.socket) -> RawResponse:
    """Read one response (head and a Content-Length body) from a raw socket."""
    head, body = read_head(sock)
    status_line, fields = parse_head(head)
    headers = dict(fields)
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        body += piece
    return RawResponse(status_of(status_line), headers, body)


# --------------------------------------------------------------------------- whole exchanges


@dataclass
class Exchange:
    """What came back on one connection: the bytes, whether the server closed it, and when."""

    raw: bytes
    closed: bool
    reset: bool
    seconds: float

    @property
    def status(self) -> int:
        line = self.raw.split(b"\r\n", 1)[0].decode("latin-1")
        assert line.startswith("HTTP/1.1 "), f"no status line in {self.raw[:200]!r}"
        return int(line.split(" ")[1])

    @property
    def head(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[0]

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]

    def header_lines(self) -> list[tuple[str, str]]:
        return parse_head(self.head)[1]

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.header_lines() if n == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None


def exchange(
    port: int,
    data: bytes,
    *,
    timeout: float = 10.0,
    until_close: bool = True,
    source: str | None = None,
) -> Exchange:
    """Send `data` as it is on a new connection; read until the server closes it (or `timeout`).

    With until_close=False, stop as soon as one complete response (by Content-Length) has arrived.
    """
    start = time.monotonic()
    sock = socket.create_connection(
        (LOOPBACK, port), timeout=timeout, source_address=(source, 0) if source else None
    )
    chunks: list[bytes] = []
    closed = reset = False
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking everything: read what it said
        deadline = start + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                closed = reset = True
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
            if not until_close and complete_response(b"".join(chunks)):
                break
    finally:
        sock.close()
    return Exchange(b"".join(chunks), closed, reset, time.monotonic() - start)


def complete_response(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for name, value in parse_head(head)[1]:
        if name == "content-length":
            return len(body) >= int(value)
    return False


def get(port: int, target: str, *headers: str, method: str = "GET", host: str = "x") -> Exchange:
    """One request (target and headers sent byte for byte), Connection: close."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers, "Connection: close", "", ""]
    return exchange(port, "\r\n".join(lines).encode("latin-1", errors="surrogateescape"))
