"""The ASGI messages Ferry's transfer layer sends, typed: a response's start, its body, and the
zero-copy extension's file segment (zero_copy.py). `sender(send)` is the one place an ASGI
server's untyped `send` is taken to accept them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal, TypedDict, cast

from starlette.types import Send


class ResponseStart(TypedDict):
    type: Literal["http.response.start"]
    status: int
    headers: list[tuple[bytes, bytes]]


class ResponseBody(TypedDict):
    type: Literal["http.response.body"]
    body: bytes | memoryview
    more_body: bool


class ZeroCopySend(TypedDict):
    type: Literal["http.response.zerocopysend"]
    file: int
    offset: int
    count: int
    more_body: bool


class SocketSend(TypedDict):
    """`count` bytes read from the connected socket `socket` (a store's answer), spliced through a
    pipe to the client's socket (zero_copy.py)."""

    type: Literal["http.response.zerocopysend"]
    socket: int
    count: int
    timeout: float
    more_body: bool


class BufferSend(TypedDict):
    """`count` bytes of `buffer` written straight to the client's socket (zero_copy.py): when the
    send returns, none of them is left queued, so the buffer may be refilled."""

    type: Literal["http.response.zerocopysend"]
    buffer: bytearray | memoryview
    count: int
    more_body: bool


Sent = ResponseStart | ResponseBody | ZeroCopySend | SocketSend | BufferSend
TypedSend = Callable[[Sent], Awaitable[None]]


def sender(send: Send) -> TypedSend:
    """`send` as the typed callable it is (every ASGI server's send takes these messages)."""
    return cast(TypedSend, send)


def start(status: int, headers: list[tuple[bytes, bytes]]) -> ResponseStart:
    return {"type": "http.response.start", "status": status, "headers": headers}


def body(data: bytes | memoryview, *, more: bool) -> ResponseBody:
    return {"type": "http.response.body", "body": data, "more_body": more}


def file_segment(fd: int, offset: int, count: int) -> ZeroCopySend:
    return {
        "type": "http.response.zerocopysend",
        "file": fd,
        "offset": offset,
        "count": count,
        "more_body": True,
    }


def socket_segment(fd: int, count: int, timeout: float) -> SocketSend:
    return {
        "type": "http.response.zerocopysend",
        "socket": fd,
        "count": count,
        "timeout": timeout,
        "more_body": True,
    }


def buffer_segment(data: bytearray | memoryview, count: int) -> BufferSend:
    return {"type": "http.response.zerocopysend", "buffer": data, "count": count, "more_body": True}
