"""How FerryProtocol hands a request body to the app: a PUT's or PATCH's in FERRY_CHUNK_SIZE
messages (a cut PATCH's bytes all reach the app before the disconnect), other methods' as they
arrive. In-process: the protocol fed by hand over a recording transport."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from app.transfer.protocol import FerryProtocol
from tests.conftest import make_settings

KiB = 1024
MiB = 1024**2
PIECE = 64 * KiB  # what one read of the socket hands the protocol in these tests


class _Transport(asyncio.Transport):
    """Records what the protocol writes and whether it paused reading."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.paused = False
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: Any) -> None:
        self.written += data

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class _Recorder:
    """An ASGI app that records each body message's size, optionally waiting before each receive."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.body = bytearray()
        self.done = asyncio.Event()
        self.gate: asyncio.Event | None = None  # set: receive the next message
        self.disconnected = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while True:
            if self.gate is not None:
                await self.gate.wait()
                self.gate.clear()
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                break
            self.sizes.append(len(message["body"]))
            self.body += message["body"]
            if not message.get("more_body", False):
                break
        self.done.set()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _protocol(tmp_path: Path, app: _Recorder, chunk_size: str) -> tuple[FerryProtocol, _Transport]:
    config = uvicorn.Config(app, http=FerryProtocol, log_config=None)
    config.settings = make_settings(tmp_path, chunk_size=chunk_size, zero_copy="off")  # type: ignore[attr-defined]
    config.load()
    protocol = FerryProtocol(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


def _head(method: str, length: int) -> bytes:
    return f"{method} /files/x.bin HTTP/1.1\r\nHost: ferry\r\nContent-Length: {length}\r\n\r\n".encode()


def in_loop(scenario: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """A test that runs `scenario` on a fresh event loop."""

    @functools.wraps(scenario)
    def test(*args: Any, **kwargs: Any) -> None:
        asyncio.run(scenario(*args, **kwargs))

    return test


async def _feed(protocol: FerryProtocol, data: bytes) -> None:
    """`data` in PIECE reads, the event loop turning between them (the app may run each time)."""
    for i in range(0, len(data), PIECE):
        protocol.data_received(data[i : i + PIECE])
        for _ in range(3):
            await asyncio.sleep(0)


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize("chunk_size", ["1MiB", "256KiB"])
@in_loop
async def test_an_upload_body_reaches_the_app_in_chunk_size_messages(
    tmp_path: Path, chunk_size: str, method: str
) -> None:
    app = _Recorder()
    protocol, _ = _protocol(tmp_path, app, chunk_size)
    chunk = 1 * MiB if chunk_size == "1MiB" else 256 * KiB
    body = bytes(range(256)) * (3 * MiB // 256) + b"tail"

    protocol.data_received(_head(method, len(body)))
    await _feed(protocol, body)
    await asyncio.wait_for(app.done.wait(), 10)

    assert bytes(app.body) == body
    assert all(size >= chunk for size in app.sizes[:-1]), app.sizes
    assert len(app.sizes) == -(-len(body) // chunk)  # no more messages than chunks


@in_loop
async def test_other_bodies_reach_the_app_as_they_arrive(tmp_path: Path) -> None:
    app = _Recorder()
    protocol, _ = _protocol(tmp_path, app, "1MiB")
    body = b"p" * (4 * PIECE)

    protocol.data_received(_head("POST", len(body)))
    await _feed(protocol, body)
    await asyncio.wait_for(app.done.wait(), 10)

    assert bytes(app.body) == body
    assert app.sizes == [PIECE] * 4


@pytest.mark.parametrize("taken", [True, False], ids=["app-waiting", "app-busy"])
@in_loop
async def test_a_patch_cut_short_hands_every_byte_that_came_before_the_disconnect(
    tmp_path: Path, taken: bool
) -> None:
    # A resumable upload's append keeps what arrived: the bytes still gathered (under a chunk) and
    # those waiting for a busy app reach it first, then the disconnect.
    app = _Recorder()
    if not taken:
        app.gate = asyncio.Event()
    protocol, _ = _protocol(tmp_path, app, "1MiB")
    body = bytes(range(251)) * (4 * MiB // 251)
    came = MiB + 3 * PIECE + 17

    protocol.data_received(_head("PATCH", len(body)))
    if app.gate is not None:
        app.gate.set()  # the first message is taken, then the app is busy
    await _feed(protocol, body[:came])
    protocol.connection_lost(None)
    while not app.done.is_set():
        if app.gate is not None:
            app.gate.set()
        await asyncio.sleep(0)

    assert app.disconnected
    assert bytes(app.body) == body[:came]
    assert app.sizes[0] == MiB


@in_loop
async def test_a_put_body_pauses_reading_while_a_chunk_waits_for_the_app(tmp_path: Path) -> None:
    app = _Recorder()
    app.gate = asyncio.Event()
    protocol, transport = _protocol(tmp_path, app, "256KiB")
    body = b"q" * (2 * MiB)

    protocol.data_received(_head("PUT", len(body)))
    app.gate.set()  # the app takes its first message, then is busy
    await _feed(protocol, body[: 512 * KiB])  # the first chunk taken, the second waiting for the app
    assert app.sizes == [256 * KiB]
    assert not transport.paused
    await _feed(protocol, body[512 * KiB : 768 * KiB])  # a third one gathered meanwhile
    assert transport.paused, "the body must not pile up while the app is behind"

    app.gate.set()  # the app takes the second message: reading resumes
    for _ in range(3):
        await asyncio.sleep(0)
    assert app.sizes == [256 * KiB] * 2
    assert not transport.paused
    await _feed(protocol, body[768 * KiB :])
    while not app.done.is_set():
        app.gate.set()
        await asyncio.sleep(0)
    assert bytes(app.body) == body
    assert all(size >= 256 * KiB for size in app.sizes[:-1]), app.sizes


@in_loop
async def test_a_put_cut_short_ends_in_a_disconnect(tmp_path: Path) -> None:
    app = _Recorder()
    protocol, _ = _protocol(tmp_path, app, "1MiB")

    protocol.data_received(_head("PUT", 4 * MiB))
    await _feed(protocol, b"r" * (MiB + PIECE))
    assert app.sizes == [MiB]
    protocol.connection_lost(None)
    await asyncio.wait_for(app.done.wait(), 10)

    assert app.disconnected  # the upload is aborted (bytes still gathered go with it)
    assert app.sizes == [MiB]
