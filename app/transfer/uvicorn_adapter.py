"""Everything Ferry reaches inside uvicorn beyond its documented API, and nowhere else.

Ferry's protocol (protocol.py) extends uvicorn's httptools protocol, and zero-copy sends
(zero_copy.py) keep uvicorn's request cycle exact. Both go through this module only:

- `Cycle`: one request's `RequestResponseCycle` (whether the client is gone, whether the response
  started or completed, its framing, the bytes still promised by Content-Length, its flow control);
- `HttpToolsAdapter`: `HttpToolsProtocol` with its private state behind named methods (the current
  cycle, the request line and headers parsed so far, read flow control) and one hook, `wrap_app`,
  called where uvicorn starts the app for a request (`_start_asgi_task`).

A response's head can be held and written with its first body bytes (`Cycle.start_held`,
`send_after`): one send where uvicorn makes two.

Written against the uvicorn range pinned in pyproject.toml; tests/unit/test_transfer.py checks
that what this module relies on is still there, so a new uvicorn release fails there first.

Long because: every reach into uvicorn's private state lives here and nowhere else, by design.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.parse
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import (
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import is_ssl

from app.http.headers import http10_keeps_alive

if TYPE_CHECKING:
    from app.settings import Settings
    from app.transfer.spans import Body

Scope = MutableMapping[str, Any]
App = Any  # an ASGI application (uvicorn's type names its private TypedDicts)


class Cycle:
    """One request's uvicorn `RequestResponseCycle`, as Ferry reads and keeps it."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle

    @property
    def scope(self) -> Scope:
        return cast(Scope, self._cycle.scope)

    @property
    def disconnected(self) -> bool:
        return bool(self._cycle.disconnected)

    def mark_disconnected(self) -> None:
        """The socket failed under a send of Ferry's own: uvicorn stops sending too."""
        self._cycle.disconnected = True

    @property
    def response_started(self) -> bool:
        return bool(self._cycle.response_started)

    @property
    def response_complete(self) -> bool:
        return bool(self._cycle.response_complete)

    @property
    def chunked(self) -> bool:
        return bool(self._cycle.chunked_encoding)

    @property
    def remaining(self) -> int:
        """Body bytes the response's Content-Length still promises."""
        return int(self._cycle.expected_content_length)

    def body_left_at_cut(self) -> bytes:
        """Body bytes that arrived before the client went and that the app has not taken (uvicorn's
        receive() answers http.disconnect with them still queued); taken once, b"" otherwise."""
        cycle = self._cycle
        if not cycle.disconnected or cycle.response_complete or not cycle.body:
            return b""
        left, cycle.body = bytes(cycle.body), b""  # type: ignore[assignment]  # bytes, as hand_body
        return left

    def count_sent(self, sent: int) -> None:
        """Bytes sent past uvicorn (sendfile): its Content-Length accounting stays exact."""
        self._cycle.expected_content_length -= sent

    async def send(self, message: MutableMapping[str, Any]) -> None:
        await self._cycle.send(cast(Any, message))

    async def start_held(self, message: MutableMapping[str, Any]) -> bytes:
        """uvicorn's `http.response.start`, its status line and header fields returned to be
        written with the first body bytes (`send_after`) instead of on their own."""
        cycle = self._cycle
        transport = cycle.transport
        held = _Held()
        cycle.transport = held  # type: ignore[assignment]  # the start only writes to it
        try:
            await cycle.send(cast(Any, message))
        finally:
            cycle.transport = transport
        return b"".join(held.data)

    async def send_after(self, head: bytes, message: MutableMapping[str, Any]) -> None:
        """The first message after a held start, the head before it: in one write with a body
        that goes out as it is (a Content-Length response to a GET), else written first."""
        cycle = self._cycle
        if cycle.disconnected or not head:
            await cycle.send(cast(Any, message))
            return
        body = message.get("body", b"") if message["type"] == "http.response.body" else b""
        if body and not cycle.chunked_encoding and len(body) <= cycle.expected_content_length:
            if cycle.flow.write_paused:
                await cycle.flow.drain()
            cycle.transport.writelines((head, body))
            cycle.expected_content_length -= len(body)
            more = bool(message.get("more_body", False))
            await cycle.send({"type": "http.response.body", "body": b"", "more_body": more})
            return
        cycle.transport.write(head)
        await cycle.send(cast(Any, message))

    def write_head(self, head: bytes) -> None:
        """A held head on its own, ahead of bytes Ferry sends past uvicorn (sendfile, splice)."""
        if head and not self._cycle.disconnected:
            self._cycle.transport.write(head)

    async def drain(self) -> None:
        """Wait while uvicorn's flow control has writing paused."""
        await self._cycle.flow.drain()


class _Held:
    """What uvicorn writes while a response's start is held (Cycle.start_held)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(bytes(data))


def sendable(value: bytes) -> bool:
    """Whether uvicorn would send this header field value (it refuses control characters)."""
    return HEADER_VALUE_RE.search(value) is None


class FastAnswers(Protocol):
    """What answers requests in the protocol itself (app/main.py `FerryApp.answer_now`)."""

    def answer_now(
        self, scope: Scope, *, spans: bool = False
    ) -> tuple[int, list[tuple[bytes, bytes]], Body] | None: ...


class HttpToolsAdapter(HttpToolsProtocol):
    """uvicorn's httptools protocol, with what Ferry's protocol reads of its state named here."""

    def settings(self) -> Settings:
        settings: Settings = self.config.settings  # type: ignore[attr-defined]  # app/server.py FerryConfig
        return settings

    def fast_answers(self) -> FastAnswers | None:
        """The app's fast path, when it has one (app/server.py `FerryConfig` keeps it)."""
        found: FastAnswers | None = getattr(self.config, "fast_answers", None)
        return found

    def current_cycle(self) -> Cycle | None:
        return None if self.cycle is None else Cycle(self.cycle)

    @property
    def reading_paused(self) -> bool:
        """Whether uvicorn stopped reading the body because the app is behind (not the client)."""
        return bool(self.flow.read_paused)

    def body_dropped(self) -> bool:
        """Whether uvicorn would drop body bytes now (an upgrade, or a request already answered)."""
        return bool((self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete)

    def body_waiting(self) -> bool:
        """Whether body bytes wait for the app's next receive()."""
        return bool(self.cycle.body)

    def hand_body(self, data: bytes) -> None:
        """Queue `data` for the app's next receive() and wake it.

        uvicorn gathers body pieces in a bytearray and copies it again into each message: handed
        over as one bytes object into an empty queue, `data` reaches the app without a copy."""
        cycle = self.cycle
        if cycle.body:
            cycle.body += data
        else:
            cycle.body = data  # type: ignore[assignment]  # receive() takes bytes(body): no copy
        cycle.message_event.set()

    def pause_reading(self) -> None:
        """Stop reading the request body until the app's next receive() (uvicorn's flow control)."""
        self.flow.pause_reading()

    def url_length(self) -> int:
        """The length of the request target received so far."""
        return len(self.url)

    def host_fields(self) -> int:
        """How many Host fields the request's headers hold."""
        return sum(1 for name, _ in self.headers if name == b"host")

    def http_version(self) -> str:
        return str(self.parser.get_http_version())

    def request_method(self) -> bytes:
        return bytes(self.parser.get_method())

    def set_extensions(self, extensions: dict[str, Any]) -> None:
        """The ASGI extensions of the request being parsed."""
        self.scope["extensions"] = extensions

    @staticmethod
    def status_line(status: int) -> bytes:
        return STATUS_LINE[status]

    def call_later(self, seconds: float, callback: Any) -> asyncio.TimerHandle:
        return self.loop.call_later(seconds, callback)

    def warn(self, message: str) -> None:
        """A line on uvicorn's error log, where its own protocol warnings go."""
        self.logger.warning(message)

    # -- answers of the protocol's own (the fast path) -----------------------------------------

    def idle(self) -> bool:
        """Whether no earlier request is still being answered or queued, and the client reads
        what it is sent: an answer written now goes out in order and within the write buffer."""
        return (
            (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
            and not self.flow.write_paused
            and not self.transport.is_closing()
        )

    def request_scope(self) -> Scope:
        """The scope of the request being parsed."""
        return cast(Scope, self.scope)

    def parse_target(self) -> bool:
        """The request's method, path and query into its scope, as uvicorn's own
        `on_headers_complete` puts them there (False: uvicorn should look at this one itself)."""
        scope = self.scope
        try:
            scope["method"] = self.parser.get_method().decode("ascii")
        except UnicodeDecodeError:
            return False
        target = request_target(self.url, self.root_path)
        if target is None:
            return False
        version = self.parser.get_http_version()
        if version != "1.1":
            scope["http_version"] = version
        scope["path"], scope["raw_path"], scope["query_string"] = target
        return True

    def write_answer(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes | bytearray) -> None:
        """Write a whole answer as uvicorn's request cycle would frame it (its default fields
        first, `connection: close` when the connection ends, `connection: keep-alive` when an
        HTTP/1.0 one stays open), then end the request as uvicorn does: the connection closed,
        or its keep-alive timer armed. The field values are ones uvicorn would send
        (`HEADER_VALUE_RE`: checked by the caller)."""
        http10 = self.parser.get_http_version() == "1.0"
        keep_alive = http10_keeps_alive(self.scope["headers"]) if http10 else self.parser.should_keep_alive()
        head = answer_head(status, self.server_state.default_headers, headers, keep_alive, http10)
        # The head and the body in one system call where the transport can (writev), the body
        # not copied again.
        self.transport.writelines((head, body))
        self.server_state.total_requests += 1
        if not keep_alive:
            self.transport.close()
        else:
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def stop_keep_alive(self) -> None:
        """A new request began: the keep-alive timer an earlier answer armed no longer runs."""
        self._unset_keepalive_if_required()

    def wrap_app(self, cycle: Cycle, app: App) -> App:
        """The app to run for `cycle`'s request (the hook for subclasses): `app` unchanged."""
        return app

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if cycle.scope["http_version"] == "1.0" and http10_keeps_alive(cycle.scope["headers"]):
            cycle.keep_alive = True  # uvicorn closes every HTTP/1.0 connection
            app = _kept_alive(app, cycle)  # inside wrap_app's layers: they may send past `send`
        super()._start_asgi_task(cycle, cast(ASGI3Application, self.wrap_app(Cycle(cycle), app)))


def _kept_alive(app: App, cycle: RequestResponseCycle) -> App:
    """`app` answering an HTTP/1.0 request that keeps its connection: its response says so
    (`connection: keep-alive`), or, when only the connection's end would delimit its body (no
    Content-Length), the connection closes after it as uvicorn would have closed it."""

    async def app_kept_alive(scope: Scope, receive: Any, send: Any) -> None:
        async def send_kept(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                fields = list(message.get("headers", ()))
                names = {bytes(name).lower() for name, _ in fields}
                if b"content-length" in names or message["status"] in (204, 304) or scope["method"] == "HEAD":
                    if b"connection" not in names:
                        message = {**message, "headers": [*fields, (b"connection", b"keep-alive")]}
                else:
                    cycle.keep_alive = False
            await send(message)

        await app(scope, receive, send_kept)

    return app_kept_alive


def request_target(url: bytes, root_path: str) -> tuple[str, bytes, bytes] | None:
    """(path, raw_path, query_string) of a request target, as uvicorn puts them in the scope;
    None for one it cannot parse (uvicorn's own parsing then answers it). The targets last asked
    are kept: a file being downloaded is asked for again and again (ranges, mirrors, players)."""
    key = (url, root_path)
    if key in _TARGETS:
        return _TARGETS[key]
    if len(_TARGETS) >= _KEPT_TARGETS:
        _TARGETS.clear()
    found = _TARGETS[key] = _request_target(url, root_path)
    return found


_TARGETS: dict[tuple[bytes, str], tuple[str, bytes, bytes] | None] = {}
_KEPT_TARGETS = 4096


def _request_target(url: bytes, root_path: str) -> tuple[str, bytes, bytes] | None:
    try:
        parsed = httptools.parse_url(url)
        raw_path: bytes = parsed.path
        path = raw_path.decode("ascii")
    except (httptools.HttpParserError, UnicodeDecodeError):
        return None
    if "%" in path:
        path = urllib.parse.unquote(path)
    return root_path + path, root_path.encode("ascii") + raw_path, parsed.query or b""


class Framed(list[tuple[bytes, bytes]]):
    """Header fields that also carry their wire form (`framed`: ``name: value\\r\\n`` each), for
    an answer framed many times (the fast path's plans): `answer_head` copies it whole."""

    __slots__ = ("framed",)

    def __init__(self, fields: list[tuple[bytes, bytes]], framed: bytes | None = None) -> None:
        super().__init__(fields)
        self.framed = b"".join(b"%s: %s\r\n" % field for field in fields) if framed is None else framed


_DEFAULTS: list[Any] = [None, b""]  # the default fields last framed, and their wire form


def _framed_defaults(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default fields (server, date) framed, once per list: uvicorn makes a new one when
    the Date changes."""
    if _DEFAULTS[0] is not default_headers:
        _DEFAULTS[:] = [default_headers, b"".join(b"%s: %s\r\n" % field for field in default_headers)]
    framed: bytes = _DEFAULTS[1]
    return framed


_CLOSED, _KEPT = b"connection: close\r\n", b"connection: keep-alive\r\n"


def answer_head(
    status: int,
    default_headers: list[tuple[bytes, bytes]],
    headers: list[tuple[bytes, bytes]],
    keep_alive: bool,
    http10: bool = False,
) -> bytes:
    """A whole answer's status line and header fields as uvicorn's request cycle frames them:
    its default fields (server, date) first, `connection: close` when the connection ends; to an
    HTTP/1.0 request (`http10`) that keeps it, `connection: keep-alive`."""
    ending = _KEPT if keep_alive and http10 else b"" if keep_alive else _CLOSED
    if isinstance(headers, Framed):
        return b"".join(
            (STATUS_LINE[status], _framed_defaults(default_headers), headers.framed, ending, b"\r\n")
        )
    content = [STATUS_LINE[status]]
    for name, value in default_headers:
        content.extend((name, b": ", value, b"\r\n"))
    for name, value in headers:
        content.extend((name, b": ", value, b"\r\n"))
    content.append(ending)
    content.append(b"\r\n")
    return b"".join(content)


def connection_addresses(transport: asyncio.Transport) -> tuple[Any, Any, str]:
    """(server, client, scheme) of a connection, as uvicorn's protocol reads them, from the
    addresses the transport noted as the connection was made (uvicorn's `get_local_addr` asks a
    socket object made afresh for each: three system calls and two objects more per connection)."""
    server, client = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
    return _host_port(server), _host_port(client), "https" if is_ssl(transport) else "http"


def _host_port(address: Any) -> tuple[str, int] | None:
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else None


def family_of(address: tuple[str, int] | None) -> int | None:
    """The family of a TCP end as `connection_addresses` gives it; None for any other."""
    if address is None:
        return None
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def keeping_cut_bodies(app: App, cycle: Cycle) -> App:
    """`app` whose receive(), when the client went mid-body, hands over what arrived, then the cut."""

    async def app_keeping_cut_bodies(scope: Any, receive: Any, send: Any) -> None:
        async def receive_keeping() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect" and (left := cycle.body_left_at_cut()):
                return {"type": "http.request", "body": left, "more_body": True}
            return message

        await app(scope, receive_keeping, send)

    return app_keeping_cut_bodies
