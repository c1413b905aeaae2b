"""A ``buffer`` message of the zero-copy extension (app/transfer/zero_copy.py), between a real
socket pair: every byte is in the kernel when the send returns (so the archive sender may refill
the same buffer at once), counted exactly, also when the client reads slowly; a client gone ends
the write quietly."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any

import pytest

from app.transfer.messages import buffer_segment
from app.transfer.zero_copy import ZeroCopySender
from tests.support.fake_cycle import FakeCycle, FakeTransport, reading

pytestmark = pytest.mark.anyio


async def test_the_buffer_is_written_whole_and_counted_before_the_send_returns(loopback_pair: Any) -> None:
    ferry, client = loopback_pair
    buffer = bytearray(os.urandom(16 * 1024 * 1024))
    expected = bytes(buffer[:-5])
    cycle = FakeCycle(len(expected))
    sender = ZeroCopySender(cycle, FakeTransport(ferry), 1 << 20)  # type: ignore[arg-type]
    received = bytearray()
    reader = reading(client, received, len(expected), piece=4096)
    await sender.send(buffer_segment(buffer, len(expected)))  # type: ignore[arg-type]
    assert (cycle.sent, cycle.remaining) == (len(expected), 0)  # all of it handed to the kernel
    buffer[:] = bytes(len(buffer))  # refilled at once: what the client gets is unchanged
    await asyncio.to_thread(reader.join, 60)
    sender.close()
    assert bytes(received) == expected


async def test_a_client_gone_ends_the_write_quietly(loopback_pair: Any) -> None:
    ferry, client = loopback_pair
    size = 64 * 1024 * 1024
    cycle = FakeCycle(size)
    sender = ZeroCopySender(cycle, FakeTransport(ferry), 1 << 20)  # type: ignore[arg-type]
    received = bytearray()
    reader = reading(client, received, 1024 * 1024, piece=4096)

    def gone() -> None:
        reader.join(30)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # a reset: the next write to it fails

    closer = threading.Thread(target=gone, daemon=True)
    closer.start()
    await asyncio.wait_for(sender.send(buffer_segment(bytearray(size), size)), 60)  # type: ignore[arg-type]
    sender.close()
    assert cycle.disconnected
    assert 1024 * 1024 <= cycle.sent < size
