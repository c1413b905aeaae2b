"""One access-log line and the transfer metrics per request, observed from the ASGI messages.

`Observed` wraps a request's ``send`` and ``receive``: it sees the status and headers, counts body
bytes (plain and zero-copy) and the request body bytes the app read (an upload's), notes the first
byte, and whether the response was completed. When the app returns, one line is logged (text or
JSON) and the metrics in app/metrics.py move.

The status recorded is the one the client got: the response's own once its head went out (a body
cut short is then marked aborted); an answer the protocol gave itself (400 for a malformed body,
408 for a stalled one); CLIENT_CLOSED (499, as nginx logs it) when the client went away before
any answer was sent, during an upload's body or while the response was being prepared; and 500
only when Ferry failed to answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, TextIO

from starlette.types import Message, Receive, Scope, Send

from app import metrics
from app.request import PREFIX, first_field
from app.transfer.protocol import connection_of
from app.transfer.zero_copy import EXTENSION

logger = logging.getLogger("ferry.access")
CLIENT_CLOSED = 499  # the client closed the connection before any answer was sent
_MAX_FIELD = 512
# Control characters from paths and headers never reach a log line raw (log injection).
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)} | {ord('"'): '\\"', ord("\\"): "\\\\"}


def _clean(text: str) -> str:
    return text[:_MAX_FIELD].translate(_ESCAPES)


def _header(scope: Scope, name: bytes) -> str:
    return first_field(scope["headers"], name) or ""


class Lines:
    """Access lines written straight to a stream (`ferry serve`: stdout), all of an event-loop
    turn's in one write at its end: a logging record per request costs a sizeable share of a
    small download's time. Outside a running loop a line is written at once."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._pending: list[str] = []

    def write(self, line: str) -> None:
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: nothing would flush later
                self._pending.append(line)
                self.flush()
                return
        self._pending.append(line)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            try:
                self.stream.write("\n".join(pending) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # stdout closed or full: the lines are lost, not the server
                pass


class Observed:
    """The send side of one request, as the access log and the metrics need it."""

    __slots__ = (
        "scope",
        "send",
        "_receive",
        "connection",
        "client_gone",
        "in_flight",
        "started",
        "status",
        "length",
        "sent",
        "received",
        "first_byte",
        "complete",
        "multipart",
        "download",
        "gauged",
    )

    def __init__(self, scope: Scope, send: Send, receive: Receive) -> None:
        self.scope = scope
        self.download = scope["method"] == "GET" and scope_is_file(scope)
        self.send = send
        self._receive = receive
        self.connection = connection_of(scope)
        self.client_gone = False  # before any answer was sent
        self.in_flight = False
        self.started = time.perf_counter()
        self.status = 0
        self.length: int | None = None
        self.sent = 0
        self.received = 0  # request body bytes the app read (PUT, POST, PATCH)
        self.first_byte: float | None = None
        self.complete = False
        self.multipart = False
        self.gauged = False

    @classmethod
    def of_protocol(cls, scope: Scope) -> Observed:
        """A request the protocol answers itself (`answered`): no ASGI messages pass through."""
        return cls(scope, _no_messages, _no_messages)

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
        elif message["type"] == "http.disconnect" and not self.status:
            self.client_gone = True
        return message

    def _gone(self) -> bool:
        return self.client_gone or (self.connection is not None and self.connection.gone)

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self._gone():
                self.client_gone = True  # nobody is left to receive this answer
            else:
                self._start(message)
        elif (kind == "http.response.body" or kind == EXTENSION) and not self._gone():
            size = message["count"] if kind == EXTENSION else len(message.get("body", b""))
            if size and self.first_byte is None:
                self.first_byte = time.perf_counter()
            self.sent += size
            if not message.get("more_body", False):
                self.complete = True
        await self.send(message)

    def _start(self, message: Message, *, gauge: bool = True) -> None:
        self.status = message["status"]
        for name, value in message.get("headers", ()):
            if name == b"content-length":
                self.length = int(value)
            elif name == b"content-type" and value.startswith(b"multipart/byteranges"):
                self.multipart = True
        if self.download and self.status in (200, 206):
            self.in_flight = True
            self.gauged = gauge
            if gauge:
                metrics.IN_FLIGHT.inc()

    def answered(self, status: int, headers: list[tuple[bytes, bytes]], sent: int) -> None:
        """A whole answer the protocol wrote itself (the fast path): its head and `sent` body bytes."""
        self._start({"status": status, "headers": headers}, gauge=False)  # in flight for no time
        if sent:
            self.first_byte = time.perf_counter()
            self.sent = sent
        self.complete = True

    def sent_status(self) -> int:
        """The status the client got (see the module's docstring)."""
        if self.status:
            return self.status
        if self.connection is not None and self.connection.answered:
            return self.connection.answered
        if self._gone():
            return CLIENT_CLOSED
        return 500  # the app answered nothing: the server sends 500

    def finish(self, log_format: str, lines: Lines | None = None) -> None:
        """Log the request (to `lines`, else the `ferry.access` logger) and move the metrics;
        called once the app has returned."""
        duration = time.perf_counter() - self.started
        scope = self.scope
        method, status = scope["method"], self.sent_status()
        body_expected = method != "HEAD" and status not in (204, 304) and self.length is not None
        aborted = status == CLIENT_CLOSED or (body_expected and not self.complete)
        self._metrics(method, status, duration, aborted)
        line: dict[str, Any] = {
            "client": f"{scope['client'][0]}:{scope['client'][1]}" if scope.get("client") else "-",
            "method": method,
            "path": _clean(scope.get("raw_path", b"").decode("latin-1") or scope["path"]),
            "status": status,
            "bytes": self.sent,
            "range": _clean(_header(scope, b"range")) or None,
            "duration_ms": round(duration * 1000, 3),
            "user_agent": _clean(_header(scope, b"user-agent")) or None,
            "aborted": aborted,
            "received": self.received,
        }
        if log_format == "json":
            text = json.dumps(line, ensure_ascii=False)
        else:
            client, path, agent = line["client"], line["path"], line["user_agent"] or "-"
            wanted = line["range"] or "-"
            text = (
                f'{client} "{method} {path}" {status} {self.sent} range="{wanted}" '
                f'{duration * 1000:.1f}ms ua="{agent}" aborted={"yes" if aborted else "no"} '
                f"received={self.received}"
            )
        if lines is None:
            logger.info(text)
        else:
            lines.write(text)

    def _metrics(self, method: str, status: int, duration: float, aborted: bool) -> None:
        tally = metrics.TALLY  # moved at the end of this loop turn
        tally.inc(_counter(metrics.REQUESTS, method, status))
        if not self.in_flight:
            return
        if self.gauged:
            metrics.IN_FLIGHT.dec()
        tally.inc(_counter(metrics.BYTES_SENT, status), self.sent)
        if status == 206:
            tally.inc(_counter(metrics.RANGE_RESPONSES, "multipart" if self.multipart else "single"))
        if _header(self.scope, b"range") and _header(self.scope, b"if-range"):
            tally.inc(_counter(metrics.IF_RANGE, "hit" if status == 206 else "miss"))
        if self.first_byte is not None:
            tally.observe(metrics.TTFB, self.first_byte - self.started)
        if aborted:
            tally.inc(metrics.ABORTS)
            tally.inc(metrics.UNDELIVERED, max(0, (self.length or 0) - self.sent))
        else:
            tally.observe(metrics.DURATION, duration)


_CHILDREN: dict[tuple[Any, ...], Any] = {}


def _counter(family: Any, *labels: str | int) -> Any:
    """A labelled counter, looked up once per label values (`labels()` costs more than `inc()`)."""
    key = (family, *labels)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = family.labels(*(str(label) for label in labels))
    return found


async def _no_messages(*_: Any) -> Any:
    raise RuntimeError("the protocol answered this request: it has no ASGI messages")


def scope_is_file(scope: Scope) -> bool:
    """A download of a file (not a listing, which also lives under /files/)."""
    return bool(scope["path"].startswith(PREFIX) and not scope["path"].endswith("/"))
