"""Splicing a store's socket to a client's (app/transfer/zero_copy.py, a ``socket`` message of the
zero-copy extension), between real socket pairs: the bytes arrive whole and counted exactly, a
source that ends early raises SourceEnded with only what came counted, a client gone ends the
splice quietly, and nothing more is read from the source while the client does not read."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from app.transfer.messages import socket_segment
from app.transfer.zero_copy import PIPE_SIZE, SourceEnded, ZeroCopySender, can_splice
from tests.support.fake_cycle import FakeCycle, FakeTransport, reading

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not can_splice(), reason="os.splice is Linux-only"),
]


@pytest.fixture
def pairs() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """(store's end, Ferry's upstream end, Ferry's client end, client's end), TCP on loopback."""
    made: list[socket.socket] = []

    def pair() -> tuple[socket.socket, socket.socket]:
        with socket.create_server(("127.0.0.1", 0)) as server:
            a = socket.create_connection(server.getsockname())
            b, _ = server.accept()
        made.extend((a, b))
        b.setblocking(False)
        return a, b

    store, upstream = pair()
    client, ferry = pair()
    yield store, upstream, ferry, client
    for s in made:
        s.close()


def feed(sock: socket.socket, data: bytes, *, close: bool) -> threading.Thread:
    def run() -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass
        if close:
            sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_the_bytes_arrive_whole_and_counted(pairs: Any) -> None:
    store, upstream, ferry, client = pairs
    data = os.urandom(5 * PIPE_SIZE + 321)
    cycle = FakeCycle(len(data))
    sender = ZeroCopySender(cycle, FakeTransport(ferry), 1 << 20)  # type: ignore[arg-type]
    received = bytearray()
    reader = reading(client, received, len(data))
    feed(store, data, close=False)
    await sender.send(socket_segment(upstream.fileno(), len(data), 30.0))  # type: ignore[arg-type]
    await asyncio.to_thread(reader.join, 30)
    sender.close()
    assert bytes(received) == data
    assert (cycle.sent, cycle.remaining) == (len(data), 0)


async def test_a_source_ending_early_raises_with_what_came_counted(pairs: Any) -> None:
    store, upstream, ferry, client = pairs
    data = os.urandom(3 * PIPE_SIZE)
    cycle = FakeCycle(len(data) + 1000)
    sender = ZeroCopySender(cycle, FakeTransport(ferry), 1 << 20)  # type: ignore[arg-type]
    received = bytearray()
    reader = reading(client, received, len(data))
    feed(store, data, close=True)  # 1000 bytes short
    with pytest.raises(SourceEnded):
        await sender.send(socket_segment(upstream.fileno(), len(data) + 1000, 30.0))  # type: ignore[arg-type]
    await asyncio.to_thread(reader.join, 30)
    sender.close()
    assert bytes(received) == data
    assert cycle.sent == len(data) and not cycle.disconnected


async def test_a_silent_source_is_given_up_after_its_timeout(pairs: Any) -> None:
    store, upstream, ferry, client = pairs
    cycle = FakeCycle(100)
    sender = ZeroCopySender(cycle, FakeTransport(ferry), 1 << 20)  # type: ignore[arg-type]
    with pytest.raises(SourceEnded):
        await sender.send(socket_segment(upstream.fileno(), 100, 0.2))  # type: ignore[arg-type]
    sender.close()


async def test_a_client_gone_ends_the_splice_quietly(pairs: Any) -> None:
    store, upstream, ferry, client = pairs
    size = 64 * PIPE_SIZE
    cycle = FakeCycle(size)
    sender = ZeroCopySender(cycle, FakeTransport(ferry), 1 << 20)  # type: ignore[arg-type]
    received = bytearray()
    reader = reading(client, received, 2 * PIPE_SIZE)

    def gone() -> None:
        reader.join(30)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # a reset: the next splice to it fails

    feed(store, os.urandom(size), close=False)
    closer = threading.Thread(target=gone, daemon=True)
    closer.start()
    await asyncio.wait_for(sender.send(socket_segment(upstream.fileno(), size, 30.0)), 60)  # type: ignore[arg-type]
    sender.close()
    assert cycle.disconnected
    assert 2 * PIPE_SIZE <= cycle.sent < size


async def test_nothing_more_is_read_from_the_source_while_the_client_does_not_read(pairs: Any) -> None:
    store, upstream, ferry, client = pairs
    size = 256 * PIPE_SIZE
    cycle = FakeCycle(size)
    sender = ZeroCopySender(cycle, FakeTransport(ferry), 1 << 20)  # type: ignore[arg-type]
    store.setblocking(False)
    fed = 0
    chunk = os.urandom(1 << 16)

    def pushed() -> int:
        """Write to the store's end until its socket is full; the bytes written so far."""
        nonlocal fed
        while fed < size:
            try:
                fed += store.send(chunk[: size - fed])
            except BlockingIOError:
                break
        return fed

    task = asyncio.ensure_future(sender.send(socket_segment(upstream.fileno(), size, 30.0)))  # type: ignore[arg-type]
    # Until the splice stops taking more: then what it took is bounded by the pipe and the
    # client socket's buffers, not the body.
    before = -1
    while pushed() != before:
        before = fed
        for _ in range(20):
            await asyncio.sleep(0.01)
    assert not task.done()
    taken = cycle.sent
    assert taken < size // 4
    assert fed < size
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sender.close()
