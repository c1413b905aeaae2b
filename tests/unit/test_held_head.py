"""A response's head is written with its first body bytes (zero_copy.py `ZeroCopySender`,
uvicorn_adapter.py `Cycle.start_held`): one write where uvicorn makes two. In-process: the
protocol fed by hand over a transport that records each write call."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from app.transfer.protocol import FerryProtocol
from tests.conftest import make_settings
from tests.support.transports import RecordingTransport


def _app(body: bytes, pieces: int, headers: list[tuple[bytes, bytes]]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        step = max(1, len(body) // pieces)
        parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})

    return app


def _run(method: str, app: Any, tmp_path: Any) -> list[bytes]:
    async def scenario() -> list[bytes]:
        config = uvicorn.Config(app, http=FerryProtocol, log_config=None)
        config.settings = make_settings(tmp_path, zero_copy="auto")  # type: ignore[attr-defined]
        config.load()
        protocol = FerryProtocol(config=config, server_state=ServerState(), app_state={})
        left, right = socket.socketpair()
        try:
            transport = RecordingTransport(left)
            protocol.connection_made(transport)
            protocol.data_received(f"{method} /x HTTP/1.1\r\nHost: ferry\r\n\r\n".encode())
            for _ in range(20):
                await asyncio.sleep(0)
            return transport.calls
        finally:
            left.close()
            right.close()

    return asyncio.run(scenario())


@pytest.mark.parametrize("pieces", [1, 3])
def test_the_head_leaves_with_the_first_body_bytes(tmp_path: Any, pieces: int) -> None:
    body = bytes(range(256)) * 48  # 12,288 bytes: 1 or 3 body messages
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/octet-stream")]
    calls = _run("GET", _app(body, pieces, headers), tmp_path)
    first = calls[0]
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 12288\r\n" in first
    head, _, sent = first.partition(b"\r\n\r\n")
    assert sent and body.startswith(sent)  # the head and body bytes in the same write
    assert b"".join(calls).endswith(body) and len(calls) == pieces


def test_a_chunked_body_and_a_head_request_keep_uvicorns_framing(tmp_path: Any) -> None:
    calls = _run("GET", _app(b"abc", 1, []), tmp_path)  # no Content-Length: chunked
    assert b"".join(calls).endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    head_only = _run("HEAD", _app(b"", 1, [(b"content-length", b"3")]), tmp_path)
    assert head_only[0].startswith(b"HTTP/1.1 200 OK\r\n") and head_only[0].endswith(b"\r\n\r\n")
