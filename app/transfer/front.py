"""The front of each connection (FERRY_FAST_PATH=on): small downloads answered below uvicorn.

A 64 KiB download costs more in uvicorn's per-request machinery (its parser callbacks, the scope,
two timers, the request cycle's framing) than in opening and sending the file. `FrontProtocol` is
the protocol a connection starts with. It reads whole request heads itself (httptools, the parser
uvicorn uses) and asks the app's fast path (app/routes/fast_files.py, through `FerryApp.answer_now`)
for each GET or HEAD: the answer is written in one call, head and body together, at the end of
the loop's turn with the turn's other answers (`Outbox`), and the connection waits for the next
request with no timer set per request.

Everything else is handed over, from the first byte of the request the front did not answer:
`FerryProtocol` (protocol.py, uvicorn's protocol with Ferry's limits) takes the connection, is
given the bytes already read, and answers as it always does. So anything the front is unsure of
goes to one place that already answers it: a head split across reads, a request with a body,
an upgrade, a malformed or over-limit head (414, 431, 400 with a Host missing or
doubled: the front never answers those, FerryProtocol refuses them), a request the fast path
declines (a directory, an error, a large multipart or paced body, a file whose digest this worker
has not loaded yet). Once FerryProtocol has nothing of the connection in progress (no request
being read, run, answered or queued; the client reading), it hands the connection back
(`take_back`), and the front reads the next request with a fresh parser. A client that pipelines
requests without reading the answers to earlier ones has them held here (reading paused) until
the transport has room again.

A large file (or one range of it) is streamed from here as well (spans.py `SpanStream`), reading
nothing more from the connection until it ends: its first byte leaves as soon as its head is
planned, where the app took half a millisecond more.

Timeouts are kept as FerryProtocol keeps them (a connection that sends nothing within
FERRY_HEADER_TIMEOUT gets 408; one idle after an answer closes after uvicorn's keep-alive) by one
timer a connection, moved lazily: an answer only notes its deadline.

Long because: a connection's whole life below uvicorn (parsing, answering, streaming, its timer
and the hand-over) is one state machine, kept in one place.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, cast

import httptools

from app.http.headers import http10_keeps_alive
from app.transfer.connection import refusal
from app.transfer.protocol import FerryProtocol
from app.transfer.spans import Body, FileSpan, SpanStream, send_span
from app.transfer.uvicorn_adapter import answer_head, connection_addresses, family_of, request_target

logger = logging.getLogger("ferry.transfer")
_READS = {b"GET": "GET", b"HEAD": "HEAD"}  # the fast path's methods, and their names in a scope
_OUTBOX = "ferry_outbox"  # the ServerState's attribute holding its `Outbox`


class Outbox:
    """The keep-alive answers of one event-loop turn, written together at its end.

    Under load a turn reads a dozen requests. Answered one by one, each answer's sendfile (on
    loopback, the client's side of TCP with it) runs between one request's Python and the next,
    and evicts the caches that Python needs warm: planned back to back and written back to back,
    the same answers cost a fifth less server CPU (README, "A turn's answers, together"). The
    writes go out in the order they were planned, in the same loop iteration (a callback, not
    another poll). A connection has one answer here at most: an answer after it (pipelined),
    a stream, a hand-over to FerryProtocol, an end of input or a shutdown sends the turn's
    answers first, so its bytes stay in order and a pipelining client cannot pile answers up
    unsent (reading pauses when the transport's buffer is full, as before)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.answers: list[tuple[FrontProtocol, bytes, Body]] = []

    def add(self, front: FrontProtocol, head: bytes, body: Body) -> None:
        if not self.answers:
            self.loop.call_soon(self.send)
        self.answers.append((front, head, body))
        front.queued = True

    def send(self) -> None:
        answers, self.answers = self.answers, []
        for front, head, body in answers:
            front.queued = False
            front.write_answer(head, body)


def _outbox(server_state: Any, loop: asyncio.AbstractEventLoop) -> Outbox:
    """The server's outbox (one a server, whose connections share its event loop)."""
    outbox: Outbox | None = getattr(server_state, _OUTBOX, None)
    if outbox is None or outbox.loop is not loop:
        outbox = Outbox(loop)
        setattr(server_state, _OUTBOX, outbox)
    return outbox


_VERSIONS = ("1.1", "1.0")


class FrontProtocol(asyncio.Protocol):
    """A connection's protocol until a request needs more than the fast path (then FerryProtocol)."""

    # A connection's state starts as these class defaults: a new connection sets less in __init__.
    transport: asyncio.Transport | None = None
    inner: FerryProtocol | None = None  # made at the first hand-over, kept for the next
    away = False  # the connection is FerryProtocol's (handed over, not yet taken back)
    addresses: tuple[Any, Any, str] = (None, None, "http")
    write_paused = False
    spans = False  # whether answers may be sent with sendfile (plain TCP, FERRY_ZERO_COPY)
    family: int | None = None  # the socket's, when `spans`
    sender: socket.socket | None = None  # the socket, or a dup of it, to send them on
    accepted_socket: socket.socket | None = None  # the connection's own (app/balance.py's Acceptor)
    stream: SpanStream | None = None  # a large answer being sent (reading paused meanwhile)
    draining = False  # the stream waits for earlier answers queued in the transport
    keep_after = False  # whether the connection stays open once the stream ends
    pending = b""  # what came after the streamed request's head (or while `held`)
    held = False  # requests wait (reading paused) until the client takes earlier answers
    answered = 0
    last_head: tuple[Any, Any, int, tuple[bool, bool], bytes] = (None, None, 0, (False, False), b"")
    declined = False
    queued = False  # an answer of this connection's waits in the `Outbox`
    deadline = 0.0  # when the connection closes if nothing more comes
    timer: asyncio.TimerHandle | None = None
    timer_at = 0.0
    # the request head being parsed
    url = b""
    header_bytes = 0
    hosts = 0
    complete = False
    keep_alive = False

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        settings = config.settings
        self.fast = config.fast_answers
        self.max_url = settings.max_url_length
        self.max_headers = settings.max_headers
        self.max_header_bytes = settings.max_header_size
        self.header_timeout = settings.header_timeout
        self.idle_timeout = config.timeout_keep_alive  # uvicorn's, as FerryProtocol keeps it
        self.write_buffer = settings.write_buffer
        self.root_path: str = config.root_path
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[tuple[bytes, bytes]] = []  # the request head being parsed (below, the rest)
        self.outbox = _outbox(server_state, self.loop)

    # -- the connection ----------------------------------------------------------------------

    def accepted(self, sock: socket.socket) -> None:
        """The connection's socket, handed by app/balance.py's Acceptor before `connection_made`:
        answers are sent on it, with no dup of its own."""
        self.accepted_socket = sock

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is one, not a subclass
        self.transport = transport
        if self.fast is None:
            self.hand_over(b"")
            return
        self.server_state.connections.add(self)
        transport.set_write_buffer_limits(high=self.write_buffer)
        self.addresses = connection_addresses(transport)
        family = family_of(self.addresses[0])
        self.spans = self.addresses[2] == "http" and family is not None and hasattr(os, "sendfile")
        self.family = family if self.spans else None
        self.wait_until(self.loop.time() + self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self.stop_timer()
        if self.stream is not None:
            self.stream.end(False)  # cut short: logged as aborted once its file is closed
        self.close_sender()
        loads = getattr(self.config, "loads", None)
        if loads is not None:
            loads.add(-1)  # app/balance.py's Acceptor counted it in
        if exc is None and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        """The client sent all it will: the turn's answers go before the transport closes."""
        self.send_waiting()
        return None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.draining and self.stream is not None and self.transport is not None:
            self.draining = False
            self.transport.set_write_buffer_limits(high=self.write_buffer)
            self.stream.pump()
        elif self.held and self.transport is not None:
            self.held = False
            self.transport.resume_reading()
            pending, self.pending = self.pending, b""
            if pending:
                self.data_received(pending)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: between requests, close; during a stream, once it ends."""
        self.send_waiting()
        if self.stream is not None:
            self.keep_after = False
        elif self.transport is not None:
            self.transport.close()

    # -- requests ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.stream is not None or self.held:  # (reading is paused: only what was on its way)
            self.pending += data
            return
        at = 0
        while True:
            if self.write_paused:
                # The client has not taken the answers queued before this request: it waits,
                # and reading with it, until the transport has room again (`resume_writing`).
                self.held = True
                self.pending = data[at:]
                assert self.transport is not None
                self.transport.pause_reading()
                return
            end = data.find(b"\r\n\r\n", at)
            if end < 0:
                break  # a head still arriving: FerryProtocol's
            end += 4
            keep = self.answer(data[at:end] if at or end < len(data) else data)
            if keep is None:
                break
            at = end
            if not keep:
                return  # closing
            if self.stream is not None:
                self.pending = data[at:]  # for after the stream
                return
            if at == len(data):
                self.wait_until(self.loop.time() + self.idle_timeout)
                return
        self.hand_over(data[at:] if at else data)

    def answer(self, head: bytes) -> bool | None:
        """Answer one whole request head: whether the connection stays open, or None when the
        request is not the fast path's (nothing was written)."""
        self.url, self.headers, self.header_bytes, self.hosts = b"", [], 0, 0
        self.complete = self.keep_alive = False
        parser = self.parser
        try:
            parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # FerryProtocol answers
            return None
        if (
            not self.complete  # a body follows
            or (method := _READS.get(parser.get_method())) is None
            or (version := parser.get_http_version()) not in _VERSIONS
            or self.hosts > 1
            or (self.hosts == 0 and version == "1.1")  # (an HTTP/1.0 request may have no Host)
            or len(self.url) > self.max_url
            or len(self.headers) > self.max_headers
            or self.header_bytes > self.max_header_bytes
        ):
            return None
        target = request_target(self.url, self.root_path)
        if target is None:
            return None
        server, client, scheme = self.addresses
        path, raw_path, query = target
        scope = {
            "type": "http",
            "http_version": version,
            "server": server,
            "client": client,
            "scheme": scheme,
            "method": method,
            "root_path": self.root_path,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self.headers,
        }
        try:
            found = self.fast.answer_now(scope, spans=self.spans)
        except Exception:  # a fault of the fast path's own: the app answers, and it is logged
            logger.exception("the fast path failed; the request goes to the app")
            return None
        if found is None:
            self.declined = True  # FerryProtocol need not ask again about this request
            return None
        status, fields, body = found
        http10 = version == "1.0"
        keep_alive = http10_keeps_alive(self.headers) if http10 else self.keep_alive
        ending = (keep_alive, http10)
        transport = self.transport
        assert transport is not None
        defaults = self.server_state.default_headers  # a new list each second (the Date)
        last = self.last_head
        if last[0] is fields and last[1] is defaults and last[2] == status and last[3] == ending:
            head_out = last[4]  # the same file version's answer again, within the same second
        else:
            head_out = answer_head(status, defaults, fields, keep_alive, http10)
            self.last_head = (fields, defaults, status, ending, head_out)
        self.server_state.total_requests += 1
        self.answered += 1
        if isinstance(body, FileSpan) and body.on_end is not None:
            self.start_stream(head_out, body, keep_alive)
            if self.stream is None and transport.is_closing():
                return False  # it ended at once, cut short, and closed the connection
            return True
        if keep_alive and not self.queued:
            self.outbox.add(self, head_out, body)  # written at the end of the turn (`Outbox`)
            return True
        self.send_waiting()  # an earlier answer of this connection's first
        return self.write_answer(head_out, body, keep_alive)

    def send_waiting(self) -> None:
        """If an answer of this connection's waits in the `Outbox`, the turn's answers now."""
        if self.queued:
            self.outbox.send()

    def write_answer(self, head: bytes, body: Body, keep_alive: bool = True) -> bool:
        """Write one answer now: whether the connection stays open (else it is closed)."""
        transport = self.transport
        assert transport is not None
        if transport.is_closing():  # gone meanwhile (reset): the answer cannot be delivered
            if isinstance(body, FileSpan) and not body.shared:
                os.close(body.fd)
            return False
        if isinstance(body, FileSpan):
            if not send_span(self.sender or self.open_sender(), transport, head, body):
                keep_alive = False
        elif body:
            transport.writelines((head, body))  # one writev, the body not copied again
        else:
            transport.write(head)
        if not keep_alive:
            transport.close()
        return keep_alive

    # httptools' callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        self.header_bytes += len(name) + len(value) + 4
        if name == b"host":
            self.hosts += 1

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # (reset once the message completes)

    def on_message_complete(self) -> None:
        self.complete = True

    # -- a large answer ------------------------------------------------------------------------

    def start_stream(self, head: bytes, span: FileSpan, keep_alive: bool) -> None:
        """Send a large answer (spans.py `SpanStream`), reading nothing more until it ends; after
        the answers still queued in the transport, if any."""
        transport = self.transport
        assert transport is not None
        self.send_waiting()  # the answers planned before it first
        self.stop_timer()
        transport.pause_reading()
        self.keep_after = keep_alive
        sender, chunk = self.sender or self.open_sender(), self.config.settings.chunk_size
        self.stream = SpanStream(self.loop, sender, head, span, self.stream_ended, chunk)
        if transport.get_write_buffer_size():
            self.draining = True  # resume_writing starts it once the transport is empty
            transport.set_write_buffer_limits(high=0, low=0)
        else:
            # Its head and first bytes now, not after the turn's other callbacks (the metrics'
            # flush, the access lines): the first byte is what a client starting a download
            # waits on. A stream that ends here has called `stream_ended` already.
            self.stream.pump()

    def stream_ended(self, complete: bool) -> None:
        self.stream = None
        transport = self.transport
        assert transport is not None
        if not complete or not self.keep_after or transport.is_closing():
            transport.close()  # a response cut short ends its connection
            return
        transport.resume_reading()
        pending, self.pending = self.pending, b""
        if pending:
            self.data_received(pending)
        else:
            self.wait_until(self.loop.time() + self.idle_timeout)

    def open_sender(self) -> socket.socket:
        """The socket answers with a `FileSpan` are sent on: the connection's own (`accepted`;
        the event loop detaches it as it closes the connection, so it never outlives the
        descriptor), else a dup of it (the transport's object cannot send with flags), kept while
        the front has the connection."""
        if self.accepted_socket is not None:
            self.sender = self.accepted_socket
            return self.sender
        assert self.transport is not None
        fd = self.transport.get_extra_info("socket").fileno()
        # Family, type and protocol given: not asked of the descriptor again (two getsockopt calls).
        self.sender = socket.socket(self.family or -1, socket.SOCK_STREAM, socket.IPPROTO_TCP, os.dup(fd))
        return self.sender

    def close_sender(self) -> None:
        if self.sender is not None:
            if self.sender is not self.accepted_socket:  # (the connection's own is the event loop's to close)
                self.sender.close()
            self.sender = None

    # -- handing over ------------------------------------------------------------------------

    def hand_over(self, data: bytes) -> None:
        """FerryProtocol takes the connection from here, `data` first (until it hands it back:
        `take_back`)."""
        self.send_waiting()  # the answers planned before it first
        self.server_state.connections.discard(self)
        self.stop_timer()
        self.close_sender()
        self.away = True
        transport = self.transport
        assert transport is not None
        inner = self.inner
        if inner is None:
            inner = self.inner = FerryProtocol(
                config=self.config, server_state=self.server_state, app_state=self.app_state, _loop=self.loop
            )
            transport.set_protocol(inner)
            inner.connection_made(transport)
            if self.fast is not None:
                inner.hand_back_to = self.take_back
        else:
            transport.set_protocol(inner)
            inner.taken_again()
        inner.skip_fast = self.declined
        if self.write_paused:
            inner.pause_writing()
        if data:
            inner.data_received(data)

    def take_back(self) -> None:
        """FerryProtocol is done with every request it was handed (none is being read, run or
        answered; the client reads): the front reads the next one, with a fresh parser."""
        transport = self.transport
        assert transport is not None
        self.away = self.declined = False
        self.answered += 1  # (an idle connection then closes without a 408: a request came)
        self.parser = httptools.HttpRequestParser(self)
        transport.set_protocol(self)
        self.server_state.connections.add(self)
        self.wait_until(self.loop.time() + self.idle_timeout)

    # -- the one timer -----------------------------------------------------------------------

    def wait_until(self, deadline: float) -> None:
        """Close the connection at `deadline` unless a request comes first; the timer is moved
        only when it would fire too late, otherwise it re-arms itself when it fires early."""
        self.deadline = deadline
        if self.timer is None or deadline < self.timer_at:
            self.stop_timer()
            self.timer_at = deadline
            self.timer = self.loop.call_at(deadline, self.expire)

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expire(self) -> None:
        self.timer = None
        if self.away or self.stream is not None or self.held:
            return
        if self.transport is None or self.transport.is_closing():
            return
        if self.loop.time() < self.deadline:
            self.wait_until(self.deadline)
            return
        if not self.answered:  # nothing came since the connection opened: FerryProtocol's 408
            self.transport.write(refusal(408, "the request headers took too long"))
        self.transport.close()
