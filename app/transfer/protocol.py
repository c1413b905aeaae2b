"""The HTTP/1.1 protocol Ferry runs on: uvicorn's httptools protocol plus Ferry's limits.

httptools (llhttp) already refuses malformed framing: conflicting Content-Length and
Transfer-Encoding, NUL or bare CR in headers, bad chunked encoding (all 400, connection closed).
On top of that this subclass enforces what uvicorn leaves open:

- a request line (URL) longer than FERRY_MAX_URL_LENGTH → 414; more than FERRY_MAX_HEADERS
  header fields or FERRY_MAX_HEADER_SIZE bytes of them → 431;
- an HTTP/1.1 request without exactly one Host → 400;
- the whole header block within FERRY_HEADER_TIMEOUT of its first byte (and of the connection
  opening) → else 408 and close: one byte at a time (slowloris) does not keep a connection;
- a body that stalls for FERRY_BODY_TIMEOUT while Ferry is reading it → the connection closes
  (the upload is aborted and cleaned up);
- a PUT's or PATCH's body handed to the app in messages of FERRY_CHUNK_SIZE, not uvicorn's
  ≤ 64 KiB pieces; when a PATCH's client goes mid-body, the bytes that arrived still reach the
  app before the disconnect (a resumable upload keeps them);
- FERRY_WRITE_BUFFER as the transport's high-water mark, and the zero-copy extension
  (zero_copy.py) on plain-HTTP connections;
- a `Connection` in each request's scope (extension CONNECTION), so the access log records what
  the client really got: nothing (it went away first) or an answer of the protocol's own;
- on a connection the front (front.py) handed over, the connection given back to it once no
  request is being read, run, answered or queued (`_hand_back`).

Built on `HttpToolsAdapter` (uvicorn_adapter.py, the one module that reaches uvicorn's private
state): this module overrides the parser callbacks and the adapter's `wrap_app` hook only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from app.transfer.connection import CONNECTION, Connection, connection_of, refusal
from app.transfer.spans import FileSpan
from app.transfer.uvicorn_adapter import App, Cycle, FastAnswers, HttpToolsAdapter, keeping_cut_bodies
from app.transfer.zero_copy import EXTENSION, ZeroCopySender, with_zero_copy, zero_copy_available

logger = logging.getLogger("ferry.transfer")


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request Ferry has answered already."""


class FerryProtocol(HttpToolsAdapter):
    zero_copy = False
    _transport: asyncio.Transport
    _refused = False
    _header_bytes = 0
    _header_count = 0
    _deadline: asyncio.TimerHandle | None = None
    _fast: FastAnswers | None = None
    _loads: Any = None  # app/balance.py's Loads, in a forked worker
    _fast_answered = False
    skip_fast = False  # the front (front.py) asked the fast path about the first request already
    # The front's `take_back`, when the front handed this connection over: called once no request
    # is being read, run or answered, so the next one reaches the front again (`_hand_back`).
    hand_back_to: Callable[[], None] | None = None
    _in_message = False  # a request is being parsed (its head or body still arriving)
    _running = 0  # requests whose app has not returned
    _gather_size = 0  # body bytes to gather before the app is woken (0: uvicorn's way)
    _gathered: list[bytes]
    _gathered_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._transport = transport
        settings = self.settings()
        self._fast = self.fast_answers()
        self._loads = getattr(self.config, "loads", None)
        # WRITE_BUFFER: past this many queued bytes, send() waits for the client to read.
        transport.set_write_buffer_limits(high=settings.write_buffer)
        # sendfile cannot go through TLS: such connections keep the chunked-read path.
        self.zero_copy = (
            settings.zero_copy != "off"
            and zero_copy_available()
            and transport.get_extra_info("sslcontext") is None
        )
        self._arm(settings.header_timeout, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._loads is not None:
            self._loads.add(-1)  # app/balance.py's Acceptor counted it in
        if self._gather_size and self._gathered_bytes and not self.body_dropped():
            self._hand_gathered()  # a PATCH's app takes them before the disconnect (wrap_app)
        self._gather_size = 0
        super().connection_lost(exc)

    # -- deadlines ---------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_timeout(self) -> None:
        self._deadline = None
        self._refuse(408, "the request headers took too long")

    def _body_timeout(self) -> None:
        self._deadline = None
        if self.reading_paused:  # Ferry is the slow side (disk): not the client's stall
            self._arm(self.settings().body_timeout, self._body_timeout)
            return
        self.warn("request body stalled; connection closed")
        self._answered(408)
        self._transport.close()

    # -- refusals ----------------------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` and close: the request is not passed on to the app."""
        if self._refused or self._transport.is_closing():
            return
        self._refused = True
        self._transport.write(refusal(status, message))
        self._transport.close()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a refusal of Ferry's own already answered this request
            self._answered(400)
            super().send_400_response(msg)

    def _answered(self, status: int) -> None:
        """Note an answer of the protocol's own to the request the app is still handling."""
        cycle = self.current_cycle()
        if cycle is not None and not cycle.response_started:
            connection = connection_of(cycle.scope)
            if connection is not None and not connection.answered:
                connection.answered = status

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)
            self._hand_back()

    def taken_again(self) -> None:
        """The front hands the connection over once more (after `_hand_back`)."""
        self.server_state.connections.add(self)
        self._arm(self.settings().header_timeout, self._header_timeout)

    def _hand_back(self) -> None:
        """Give the connection back to the front when nothing of it is in progress here: no
        request being parsed, run or answered, none queued, the client reading, the connection
        kept open. Until the next request that the fast path declines, the front answers."""
        busy = self._in_message or self._running or self._refused or self.reading_paused
        if self.hand_back_to is None or busy or not self.idle():
            return
        self._disarm()
        self.stop_keep_alive()
        self.server_state.connections.discard(self)
        self.hand_back_to()

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True
        self._fast_answered = False
        self.stop_keep_alive()
        self._header_bytes = self._header_count = 0
        self._arm(self.settings().header_timeout, self._header_timeout)
        if self.zero_copy:
            self.set_extensions({EXTENSION: {}})

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if self.url_length() > self.settings().max_url_length:
            self._refuse(414, "the request target is too long")
            raise _Refused()

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        settings = self.settings()
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > settings.max_headers or self._header_bytes > settings.max_header_size:
            self._refuse(431, "too many or too large request header fields")
            raise _Refused()

    def on_headers_complete(self) -> None:
        self._disarm()
        # RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without exactly one Host.
        if self.http_version() == "1.1" and self.host_fields() != 1:
            self._refuse(400, "HTTP/1.1 requests need exactly one Host header")
            raise _Refused()
        if self._answer_now():
            return
        super().on_headers_complete()
        self._start_gathering()
        if self.request_method() in (b"PUT", b"POST", b"PATCH") and not self._refused:
            self._arm(self.settings().body_timeout, self._body_timeout)

    def _answer_now(self) -> bool:
        """Whether the app's fast path (FERRY_FAST_PATH) answered this request here and now."""
        if self.skip_fast:
            self.skip_fast = False
            return False
        if self._fast is None or self.request_method() not in (b"GET", b"HEAD") or not self.idle():
            return False
        if not self.parse_target():
            return False
        try:
            found = self._fast.answer_now(self.request_scope())
        except Exception:  # a fault of the fast path's own: the app answers, and it is logged
            logger.exception("the fast path failed; the request goes to the app")
            return False
        if found is None:
            return False
        status, fields, body = found
        assert not isinstance(body, FileSpan)  # asked without spans: the bytes
        self.write_answer(status, fields, body)
        self._fast_answered = True
        return True

    def on_body(self, body: bytes) -> None:
        if self._fast_answered:
            return
        if self._gather_size:
            self._gather(body)
        else:
            super().on_body(body)
        if self._deadline is not None:
            self._arm(self.settings().body_timeout, self._body_timeout)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._disarm()
        if self._fast_answered:
            return
        if self._gather_size and self._gathered_bytes and not self.body_dropped():
            self._hand_gathered()
        self._gather_size = 0
        super().on_message_complete()

    # -- upload bodies in large messages --------------------------------------------------------

    def _start_gathering(self) -> None:
        """A PUT's or PATCH's body reaches the app in messages of at least FERRY_CHUNK_SIZE (uvicorn
        wakes the app per read, ≤ 256 KiB, and copies each twice). A cut PATCH keeps every byte:
        `connection_lost` hands the gathered ones over, `wrap_app` delivers them first."""
        method = self.request_method()
        self._gather_size = self.settings().chunk_size if method in (b"PUT", b"PATCH") else 0
        self._gathered = []
        self._gathered_bytes = 0

    def _gather(self, body: bytes) -> None:
        if self.body_dropped():
            return
        self._gathered.append(body)
        self._gathered_bytes += len(body)
        if self._gathered_bytes >= self._gather_size:
            if self.body_waiting():
                # The app has not taken the last message (the disk is behind): this one waits,
                # and reading with it, until the app's next receive() resumes reading.
                self.pause_reading()
            else:
                self._hand_gathered()

    def _hand_gathered(self) -> None:
        pieces = self._gathered
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self._gathered, self._gathered_bytes = [], 0
        self.hand_body(data)

    def wrap_app(self, cycle: Cycle, app: App) -> App:
        cycle.scope.setdefault("extensions", {})[CONNECTION] = {"state": Connection(cycle)}
        if cycle.scope["method"] == "PATCH":
            app = keeping_cut_bodies(app, cycle)
        if self.zero_copy:
            app = with_zero_copy(app, ZeroCopySender(cycle, self._transport, self.settings().chunk_size))
        return self._counted(app) if self.hand_back_to is not None else app

    def _counted(self, app: App) -> App:
        """`app`, counted in `_running` while it runs; the connection may go back to the front
        once it has returned."""

        async def app_counted(scope: Any, receive: Any, send: Any) -> None:
            self._running += 1
            try:
                await app(scope, receive, send)
            finally:
                self._running -= 1
                self._hand_back()

        return app_counted
