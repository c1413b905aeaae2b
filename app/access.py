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

Long because: both kinds of answer — the app's, observed from its messages, and the ones the
protocol writes itself (`answered_now`, settled a turn at a time by `Lines`) — are counted and
logged by the same code, kept in one place so the two cannot drift apart.
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
from app.transfer.connection import connection_of
from app.transfer.zero_copy import EXTENSION

logger = logging.getLogger("ferry.access")
CLIENT_CLOSED = 499  # the client closed the connection before any answer was sent
_MAX_FIELD = 512
# Control characters from paths and headers never reach a log line raw (log injection).
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)} | {ord('"'): '\\"', ord("\\"): "\\\\"}


def _clean(text: str) -> str:
    text = text[:_MAX_FIELD]
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text  # nothing to escape: the common case, at a fraction of translate's cost
    return text.translate(_ESCAPES)


class _Asked:
    """The first Range, User-Agent and If-Range of a request ("" when absent), read in one pass:
    what its access line and its metrics use."""

    __slots__ = ("range", "agent", "if_range")

    def __init__(self, scope: Scope) -> None:
        wanted = agent = if_range = None
        for name, value in scope["headers"]:
            if name == b"user-agent":
                agent = value if agent is None else agent
            elif name == b"range":
                wanted = value if wanted is None else wanted
            elif name == b"if-range":
                if_range = value if if_range is None else if_range
        self.range = "" if wanted is None else wanted.decode("latin-1")
        self.agent = "" if agent is None else agent.decode("latin-1")
        self.if_range = "" if if_range is None else if_range.decode("latin-1")


class Lines:
    """Access lines written straight to a stream (`ferry serve`: stdout), all of an event-loop
    turn's in one write at its end: a logging record per request costs a sizeable share of a
    small download's time. Outside a running loop a line is written at once.

    An answer the protocol wrote itself (`answered_now`) is noted here as it was found and
    settled with the turn's other answers, its metrics moved and its line formatted, in one loop
    at the end of the turn: under load a turn answers a dozen requests, and the formatting, done
    back to back, runs on warm caches rather than after each answer's sendfile has evicted them
    (a third of a small download's Python time, measured in the README)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._pending: list[str | _Answer] = []

    def write(self, line: str) -> None:
        self._add(line)

    def answered(self, answer: _Answer) -> None:
        """An answer to count and log at the end of this turn (see the class's docstring)."""
        self._add(answer)

    def _add(self, item: str | _Answer) -> None:
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: nothing would flush later
                self._pending.append(item)
                self.flush()
                return
        self._pending.append(item)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            text = "\n".join(item if isinstance(item, str) else _settle(*item) for item in pending)
            try:
                self.stream.write(text + "\n")
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
    )

    def __init__(self, scope: Scope, send: Send, receive: Receive) -> None:
        self.scope = scope
        path = scope["path"]  # a download of a file (not a listing, which also lives under /files/)
        self.download = scope["method"] == "GET" and path.startswith(PREFIX) and not path.endswith("/")
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

    def _start(self, message: Message) -> None:
        self.status = message["status"]
        for name, value in message.get("headers", ()):
            if name == b"content-length":
                self.length = int(value)
            elif name == b"content-type" and value.startswith(b"multipart/byteranges"):
                self.multipart = True
        if self.download and self.status in (200, 206):
            self.in_flight = True
            metrics.IN_FLIGHT.inc()

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
        if self.in_flight:
            metrics.IN_FLIGHT.dec()
        first_byte = None if self.first_byte is None else self.first_byte - self.started
        owed = max(0, (self.length or 0) - self.sent) if aborted else None
        asked = _Asked(scope)
        _count(asked, method, status, duration, self.in_flight, self.sent, self.multipart, first_byte, owed)
        text = _line(scope, asked, method, status, self.sent, duration, aborted, self.received, log_format)
        logger.info(text) if lines is None else lines.write(text)


def answered_now(
    scope: Scope,
    status: int,
    headers: list[tuple[bytes, bytes]],
    sent: int,
    started: float,
    log_format: str,
    lines: Lines | None,
    *,
    first_byte: float | None = None,
    owed: int | None = None,
) -> None:
    """Log and count an answer the protocol wrote itself (the fast path: a GET or HEAD of a file,
    its head and `sent` body bytes, `first_byte` seconds after `started` (else at once); `owed`:
    the bytes it did not deliver when it was cut short) as `Observed.finish` does: with `lines`,
    at the end of the turn (`Lines`), else now."""
    answer = (scope, status, headers, sent, time.perf_counter() - started, first_byte, owed, log_format)
    if lines is None:
        logger.info(_settle(*answer))
    else:
        lines.answered(answer)


# What `answered_now` was told, and the request's duration: settled by `_settle`.
_Answer = tuple[Scope, int, list[tuple[bytes, bytes]], int, float, "float | None", "int | None", str]


def _settle(
    scope: Scope,
    status: int,
    headers: list[tuple[bytes, bytes]],
    sent: int,
    duration: float,
    first_byte: float | None,
    owed: int | None,
    log_format: str,
) -> str:
    """An answer the protocol wrote itself counted in the metrics; its access line."""
    method = scope["method"]
    multipart = status == 206 and (first_field(headers, b"content-type") or "").startswith("multipart/")
    in_flight = method == "GET" and status in (200, 206)
    first = duration if first_byte is None else first_byte
    asked = _Asked(scope)
    _count(asked, method, status, duration, in_flight, sent, multipart, first if sent else None, owed)
    return _line(scope, asked, method, status, sent, duration, owed is not None, 0, log_format)


_WHERE: dict[Any, str] = {}  # the clients of the connections last logged, as their lines name them


def _line(
    scope: Scope,
    asked: _Asked,
    method: str,
    status: int,
    sent: int,
    duration: float,
    aborted: bool,
    received: int,
    log_format: str,
) -> str:
    """One access line's text (text or JSON)."""
    client = scope.get("client")
    where = _WHERE.get(client) if type(client) is tuple else None
    if where is None:
        where = f"{client[0]}:{client[1]}" if client else "-"
        if type(client) is tuple:
            if len(_WHERE) >= 4096:
                _WHERE.clear()
            _WHERE[client] = where
    path = _clean(scope.get("raw_path", b"").decode("latin-1") or scope["path"])
    wanted, agent = _clean(asked.range), _clean(asked.agent)
    if log_format == "json":
        line = {
            "client": where,
            "method": method,
            "path": path,
            "status": status,
            "bytes": sent,
            "range": wanted or None,
            "duration_ms": round(duration * 1000, 3),
            "user_agent": agent or None,
            "aborted": aborted,
            "received": received,
        }
        return json.dumps(line, ensure_ascii=False)
    return (
        f'{where} "{method} {path}" {status} {sent} range="{wanted or "-"}" '
        f'{duration * 1000:.1f}ms ua="{agent or "-"}" aborted={"yes" if aborted else "no"} '
        f"received={received}"
    )


def _count(
    asked: _Asked,
    method: str,
    status: int,
    duration: float,
    in_flight: bool,
    sent: int,
    multipart: bool,
    first_byte: float | None,
    undelivered: int | None,
) -> None:
    """The metrics of one finished request (`undelivered`: the bytes an aborted download owed;
    `first_byte`: seconds from its start)."""
    tally = metrics.TALLY  # moved at the end of this loop turn
    tally.inc(_counter(metrics.REQUESTS, method, status))
    if not in_flight:
        return
    tally.inc(_counter(metrics.BYTES_SENT, status), sent)
    if status == 206:
        tally.inc(_counter(metrics.RANGE_RESPONSES, "multipart" if multipart else "single"))
    if asked.range and asked.if_range:
        tally.inc(_counter(metrics.IF_RANGE, "hit" if status == 206 else "miss"))
    if first_byte is not None:
        tally.observe(metrics.TTFB, first_byte)
    if undelivered is not None:
        tally.inc(metrics.ABORTS)
        tally.inc(metrics.UNDELIVERED, undelivered)
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
