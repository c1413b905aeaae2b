"""A small HTTP/1.1 client on asyncio streams: one keep-alive connection, one request at a time.

Lighter than a general client for a thousand connections in one process: the body goes to a
callback as it arrives (a hash, a list), a reader can be paced (a slow client) or stopped early (an
aborting one), and every read stamps `last_io` for the stall watchdog in mix.py.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

READ_SIZE = 256 * 1024
STREAM_LIMIT = 256 * 1024  # the reader stops reading the socket past 2x this: TCP pushes back
HEAD_END = b"\r\n\r\n"

Sink = Callable[[bytes], object]


class ProtocolError(Exception):
    """The server's bytes were not a well-formed HTTP/1.1 response."""


@dataclass(frozen=True)
class Head:
    status: int
    headers: dict[str, str]  # lower-cased names; a repeated field keeps its last value

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return None if value is None else int(value)

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def keep_alive(self) -> bool:
        return "close" not in self.headers.get("connection", "").lower()


def parse_head(block: bytes) -> Head:
    lines = block.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ProtocolError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return Head(int(parts[1]), headers)


def request_bytes(target: str, host: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "User-Agent: ferry-load"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Connection:
    """One client socket to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.loop = asyncio.get_running_loop()
        self.last_io = self.loop.time()
        self.busy = False  # waiting on the server (a paced reader's sleeps do not count)
        self.stalled = False  # set by the watchdog before it aborts the connection
        self.reusable = True
        self.responses = 0  # completed on this connection
        self.idle_since = self.last_io  # when the last response was read whole
        self.in_head = False  # no byte of the current response has arrived yet
        self.sent_at = self.last_io
        self.last_exchange = 0.0  # seconds from the last request to its response read whole

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
        return cls(reader, writer, host)

    def _touch(self) -> None:
        self.last_io = self.loop.time()

    async def _wait(self, read: Awaitable[bytes]) -> bytes:
        self.busy = True
        try:
            return await read
        finally:
            self.busy = False
            self._touch()

    async def send(self, target: str, headers: dict[str, str] | None = None) -> None:
        self.in_head = True
        self.sent_at = self.loop.time()
        self.writer.write(request_bytes(target, self.host, headers))
        self._touch()
        self.busy = True
        try:
            await self.writer.drain()
        finally:
            self.busy = False

    async def read_head(self) -> Head:
        block = await self._wait(self.reader.readuntil(HEAD_END))
        self.in_head = False
        head = parse_head(block[: -len(HEAD_END)])
        self.reusable = head.keep_alive
        return head

    async def request(self, target: str, headers: dict[str, str] | None = None) -> Head:
        await self.send(target, headers)
        return await self.read_head()

    async def read_some(self, most: int) -> bytes:
        chunk = await self._wait(self.reader.read(most))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", most)
        return chunk

    async def read_body(self, length: int, sink: Sink, *, rate: float = 0, stop_after: int = -1) -> int:
        """Read `length` body bytes into `sink`; `rate` (bytes/s) paces the reads; stop once
        `stop_after` bytes are in (>= 0). Returns the bytes read."""
        done = 0
        started = self.loop.time()
        piece = min(READ_SIZE, max(4096, int(rate / 8))) if rate else READ_SIZE
        while done < length and (stop_after < 0 or done < stop_after):
            chunk = await self.read_some(min(piece, length - done))
            sink(chunk)
            done += len(chunk)
            if rate:
                ahead = started + done / rate - self.loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        return done

    async def read_chunked(self, sink: Sink) -> int:
        """A chunked body (Ferry sends Content-Length, but a JSON answer may be chunked)."""
        done = 0
        while True:
            size_line = await self._wait(self.reader.readuntil(b"\r\n"))
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await self._wait(self.reader.readuntil(b"\r\n"))  # no trailers
                return done
            done += await self.read_body(size, sink)
            if await self._wait(self.reader.readexactly(2)) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")

    async def read_all(self, head: Head) -> bytes:
        parts: list[bytes] = []
        if head.chunked:
            await self.read_chunked(parts.append)
        elif head.content_length is not None:
            await self.read_body(head.content_length, parts.append)
        else:
            raise ProtocolError("a response without Content-Length or chunked framing")
        return b"".join(parts)

    def finished(self) -> None:
        """The exchange is over (the whole response read)."""
        self.responses += 1
        self.idle_since = self.loop.time()
        self.last_exchange = self.idle_since - self.sent_at

    def closed_by_server(self) -> bool:
        """The server closed this idle connection (its keep-alive timeout): do not reuse it."""
        return self.reader.at_eof() or self.writer.transport.is_closing()

    def closed_before_answer(self) -> bool:
        """A reused connection that ended before any byte of the answer: the server had closed it
        while the request was on its way, and an idempotent request may be retried (RFC 9112
        §9.3.1) — what curl and browsers do."""
        return self.responses > 0 and self.in_head and not self.stalled

    def describe(self) -> str:
        """Where an error struck: before or after the status line, on a new or reused connection."""
        where = "before the response" if self.in_head else "in the body"
        if not self.responses:
            return f"{where}, new connection"
        idle, waited = self.sent_at - self.idle_since, self.loop.time() - self.sent_at
        return (
            f"{where}, reused connection (response {self.responses + 1}, "
            f"idle {idle:.1f} s before the request, {waited:.1f} s after it)"
        )

    def close(self) -> None:
        """Close after a finished exchange (or mid-body: the kernel answers unread data with RST)."""
        self.writer.close()

    def reset(self) -> None:
        """Close with RST at once (SO_LINGER 0), as a client that crashed or was killed."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def abort(self) -> None:
        """Drop the connection after an error."""
        self.writer.transport.abort()
