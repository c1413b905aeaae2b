"""One access-log line and the transfer metrics per request, observed from the ASGI messages.

`Observed` wraps a request's ``send``: it sees the status and headers, counts body bytes (plain
and zero-copy), notes the first byte, and whether the response was completed. When the app
returns, one line is logged (text or JSON) and the metrics in app/metrics.py move.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.types import Message, Scope, Send

from app import metrics
from app.transfer.zero_copy import EXTENSION

logger = logging.getLogger("ferry.access")
_MAX_FIELD = 512
# Control characters from paths and headers never reach a log line raw (log injection).
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)} | {ord('"'): '\\"', ord("\\"): "\\\\"}


def _clean(text: str) -> str:
    return text[:_MAX_FIELD].translate(_ESCAPES)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


class Observed:
    """The send side of one request, as the access log and the metrics need it."""

    __slots__ = (
        "scope",
        "send",
        "started",
        "status",
        "length",
        "sent",
        "first_byte",
        "complete",
        "multipart",
        "download",
    )

    def __init__(self, scope: Scope, send: Send) -> None:
        self.scope = scope
        self.download = scope["method"] == "GET" and scope_is_file(scope)
        self.send = send
        self.started = time.perf_counter()
        self.status = 0
        self.length: int | None = None
        self.sent = 0
        self.first_byte: float | None = None
        self.complete = False
        self.multipart = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            for name, value in message.get("headers", ()):
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"content-type" and value.startswith(b"multipart/byteranges"):
                    self.multipart = True
            if self.download and self.status in (200, 206):
                metrics.IN_FLIGHT.inc()
        elif kind == "http.response.body" or kind == EXTENSION:
            size = message["count"] if kind == EXTENSION else len(message.get("body", b""))
            if size and self.first_byte is None:
                self.first_byte = time.perf_counter()
            self.sent += size
            if not message.get("more_body", False):
                self.complete = True
        await self.send(message)

    def finish(self, log_format: str) -> None:
        """Log the request and move the metrics; called once the app has returned."""
        duration = time.perf_counter() - self.started
        scope = self.scope
        method, status = scope["method"], self.status or 500  # not started: the server answers 500
        body_expected = method != "HEAD" and status not in (204, 304) and self.length is not None
        aborted = body_expected and not self.complete
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
        }
        if log_format == "json":
            logger.info(json.dumps(line, ensure_ascii=False))
        else:
            logger.info(
                '%s "%s %s" %d %d range="%s" %.1fms ua="%s" aborted=%s',
                line["client"],
                method,
                line["path"],
                status,
                self.sent,
                line["range"] or "-",
                duration * 1000,
                line["user_agent"] or "-",
                "yes" if aborted else "no",
            )

    def _metrics(self, method: str, status: int, duration: float, aborted: bool) -> None:
        metrics.REQUESTS.labels(method, str(status)).inc()
        if not self.download or status not in (200, 206):
            return
        metrics.IN_FLIGHT.dec()
        metrics.BYTES_SENT.labels(str(status)).inc(self.sent)
        if status == 206:
            metrics.RANGE_RESPONSES.labels("multipart" if self.multipart else "single").inc()
        if _header(self.scope, b"range") and _header(self.scope, b"if-range"):
            metrics.IF_RANGE.labels("hit" if status == 206 else "miss").inc()
        if self.first_byte is not None:
            metrics.TTFB.observe(self.first_byte - self.started)
        if aborted:
            metrics.ABORTS.inc()
            metrics.UNDELIVERED.inc(max(0, (self.length or 0) - self.sent))
        else:
            metrics.DURATION.observe(duration)


def scope_is_file(scope: Scope) -> bool:
    """A download of a file (not a listing, which also lives under /files/)."""
    return bool(scope["path"].startswith("/files/") and not scope["path"].endswith("/"))
