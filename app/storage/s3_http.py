"""Ferry's own HTTP/1.1 GET of a presigned URL on a plain-HTTP store: a lighter read than obstore's.

A random 64 KiB range through Ferry cost about 700 µs of CPU, 300-350 of them obstore's GET
(signing, its HTTP stack, handing the answer across its runtime). Here a GET is one request line
and a few headers written to a kept-alive loopback socket and its answer parsed by httptools (as
uvicorn parses requests): the URL is presigned once per key and reused while it is valid (SigV4
signs only the host, so Range and If-Match ride along as ordinary headers).

`Upstream` keeps a few idle connections per process: a GET takes one (or dials one), and gives it
back only after its answer was read whole and the store did not ask to close it. A GET that fails
or is cancelled midway closes its connection (nothing half-read is ever reused), and a reused
connection the store had already closed is retried once on a fresh one (a GET is idempotent).
A kept connection is an asyncio protocol, its socket watched by the event loop for as long as it
lives: uvloop's `sock_recv` registers and unregisters the socket for every read, which cost
more CPU than parsing the answer.

Only for `http://` endpoints: TLS stays with obstore.

Long because: one small HTTP/1.1 client (parser, kept connections, the socket opened for splicing,
presigned URLs) reads best whole.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httptools

from app.storage.errors import Changed, NotServable, Refused, Unreachable

# Idle connections kept per process; more are closed when given back. As many as a worker serves
# ranges at once, or each burst above it dials and closes connections (16 for 32 clients on two
# workers: 547 µs of CPU per 64 KiB range; 64: 504).
IDLE_CONNECTIONS = 64
RECEIVE_SIZE = 256 * 1024


@dataclass(slots=True)
class Answer:
    """A store's answer to one GET: status, the headers Ferry reads (lower-cased), the body."""

    status: int
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    keep_alive: bool = False
    headed: bool = False  # every header is in
    done: bool = False

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    def size(self) -> int:
        """The object's whole size: Content-Range's total for a 206, Content-Length for a 200."""
        span = self.header(b"content-range")
        if span is not None:
            return int(span.rpartition("/")[2])
        return int(self.header(b"content-length") or 0)

    def mtime_ns(self) -> int:
        """Last-Modified in whole seconds (as obstore reports it for a GET or a HEAD)."""
        return _http_date_ns(self.headers.get(b"last-modified", b""))


@functools.lru_cache(maxsize=1024)
def _http_date_ns(text: bytes) -> int:
    """An HTTP date in nanoseconds (whole seconds); the same few dates recur, so they are kept."""
    return int(parsedate_to_datetime(text.decode("latin-1")).timestamp()) * 1_000_000_000 if text else 0


class _Parser:
    """httptools' callbacks, filling one `Answer`."""

    def __init__(self) -> None:
        self.answer = Answer(0)
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.answer.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.answer.status = self.parser.get_status_code()
        self.answer.keep_alive = self.parser.should_keep_alive()
        self.answer.headed = True

    def on_body(self, body: bytes) -> None:
        self.answer.body += body

    def on_message_complete(self) -> None:
        self.answer.done = True


def raise_for(status: int) -> None:
    """A store's refusal as a storage error, as app/storage/s3.py's `_answers` maps obstore's."""
    if status in (200, 206):
        return
    if status == 404:
        raise NotServable()
    if status in (304, 412):
        raise Changed()
    if status in (401, 403):
        raise Refused(f"the storage refused Ferry's credentials ({status})")
    raise Unreachable(f"the storage answered {status}")


class _Connection(asyncio.Protocol):
    """One kept-alive connection to the store: a request written, its answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parsing: _Parser | None = None
        self._waiter: asyncio.Future[Answer] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a socket's: an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        parsing, waiter = self._parsing, self._waiter
        if parsing is None or waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted again
            return
        try:
            parsing.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            waiter.set_exception(ConnectionError(f"unparsable answer: {exc}"))
            return
        if parsing.answer.done:
            waiter.set_result(parsing.answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(_Ended())

    async def exchange(self, request: bytes) -> Answer:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise _Ended()
        self._parsing, self._waiter = _Parser(), asyncio.get_running_loop().create_future()
        try:
            self.transport.write(request)
            return await self._waiter
        finally:
            self._parsing = self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Upstream:
    """Kept-alive connections to one plain-HTTP store, made on first use in each process."""

    def __init__(self, endpoint: str, *, timeout: float = 60.0, connect_timeout: float = 10.0) -> None:
        parts = urlsplit(endpoint)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._idle: collections.deque[_Connection] = collections.deque()
        self._owner = os.getpid()
        self.dialled = 0  # connections opened so far (tests read it)

    async def get(self, url: str, headers: dict[str, str]) -> Answer:
        """GET `url` (a presigned URL on this endpoint) with `headers`; the whole answer. A store
        that cannot be reached or breaks off its answer is Unreachable."""
        request = _request(url, headers)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._get(request)
        except TimeoutError:
            raise Unreachable("the storage did not answer in time") from None

    async def _get(self, request: bytes) -> Answer:
        conn, reused = self._take()
        if conn is None:
            conn, reused = await self._connect(), False
        try:
            answer = await conn.exchange(request)
        except (ConnectionError, _Ended) as exc:
            conn.close()
            if not reused:
                raise Unreachable(f"the storage did not answer: {type(exc).__name__}") from None
            return await self._get(request)  # the store had closed that idle connection: a new one
        except BaseException:
            conn.close()  # cancelled, or failed midway: never reused half-read
            raise
        self._give_back(conn, answer.keep_alive)
        return answer

    def _take(self) -> tuple[_Connection | None, bool]:
        if self._owner != os.getpid():  # a forked child never shares its parent's connections
            self._idle, self._owner = collections.deque(), os.getpid()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
        return None, False

    def _give_back(self, conn: _Connection, keep_alive: bool) -> None:
        if keep_alive and not conn.closed and len(self._idle) < IDLE_CONNECTIONS:
            self._idle.append(conn)
        else:
            conn.close()

    async def _connect(self) -> _Connection:
        sock = await self._dial()
        try:
            transport, conn = await asyncio.get_running_loop().create_connection(_Connection, sock=sock)
        except BaseException:
            sock.close()
            raise
        conn.transport = transport  # uvloop may call connection_made only on its next iteration
        return conn

    async def _dial(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
                family, kind, proto, _, address = infos[0]
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    await loop.sock_connect(sock, address)
                except BaseException:
                    sock.close()
                    raise
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"the storage did not answer: {type(exc).__name__}") from None
        self.dialled += 1
        return sock

    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


@dataclass(slots=True)
class OpenBody:
    """An answer whose headers (and the body bytes that came with them, `answer.body`) are read,
    the rest of its body (`remaining` bytes) still in its socket: for splicing (app/transfer/
    zero_copy.py). Its connection is never reused: `close` it, whatever happened."""

    sock: socket.socket
    answer: Answer
    remaining: int

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


async def open_body(upstream: Upstream, url: str, headers: dict[str, str]) -> OpenBody:
    """GET `url` on a connection of its own and read only its answer's headers."""
    request = _request(url, headers)
    sock = await upstream._dial()
    try:
        async with asyncio.timeout(upstream.timeout):
            answer = await _exchange(sock, request, headers_only=True)
        length = answer.header(b"content-length")
        remaining = 0 if answer.done or length is None else int(length) - len(answer.body)
        return OpenBody(sock, answer, remaining)
    except (ConnectionError, _Ended, TimeoutError) as exc:
        sock.close()
        raise Unreachable(f"the storage did not answer: {type(exc).__name__}") from None
    except BaseException:
        sock.close()
        raise


def _request(url: str, headers: dict[str, str]) -> bytes:
    parts = urlsplit(url)
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Ended(Exception):
    """The store closed the connection before its answer was whole."""


async def _exchange(sock: socket.socket, request: bytes, *, headers_only: bool = False) -> Answer:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, request)
    parsing = _Parser()
    while not parsing.answer.done and not (headers_only and parsing.answer.headed):
        data = await loop.sock_recv(sock, RECEIVE_SIZE)
        if not data:
            raise _Ended()
        try:
            parsing.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise ConnectionError(f"unparsable answer: {exc}") from None
    return parsing.answer


class Signer:
    """Presigned GET URLs per key, each reused for a while well inside its validity."""

    def __init__(self, sign: Callable[[str], str], reuse: float = 600.0, keep: int = 4096) -> None:
        self._sign = sign
        self.reuse, self.keep = reuse, keep
        self._urls: dict[str, tuple[float, str]] = {}

    def url(self, key: str) -> str:
        now = time.monotonic()
        found = self._urls.get(key)
        if found is not None and now - found[0] < self.reuse:
            return found[1]
        if len(self._urls) >= self.keep:
            self._urls.clear()
        url = self._sign(key)
        self._urls[key] = (now, url)
        return url
