"""ZeroCopySender's corking, on a real loopback connection: a file's bytes go uncorked (as nginx's
with tcp_nopush off), so one large body is not held back in full segments until it ends."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from app.transfer.zero_copy import EXTENSION, ZeroCopySender

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="Linux TCP_CORK")

KiB = 1024


class _Cycle:
    """The request cycle state ZeroCopySender reads and keeps (uvicorn_adapter.Cycle's surface)."""

    def __init__(self, length: int) -> None:
        self.scope: dict[str, Any] = {"method": "GET"}
        self.disconnected = False
        self.response_started = True
        self.response_complete = False
        self.chunked = False
        self.remaining = length

    def count_sent(self, sent: int) -> None:
        self.remaining -= sent

    def mark_disconnected(self) -> None:
        self.disconnected = True

    async def send(self, message: Any) -> None:
        self.response_complete = not message.get("more_body", False)

    async def drain(self) -> None:
        pass


class _Transport:
    def __init__(self, sock: socket.socket, queued: int) -> None:
        self.sock = sock
        self.queued = queued  # bytes the transport still holds (a part's headers)

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def get_write_buffer_size(self) -> int:
        return self.queued

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(self, high: int = 0, low: int = 0) -> None:
        self.queued = 0  # the drain below empties it


def _corked(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))


@pytest.mark.parametrize("queued", [0, 100])
def test_a_file_body_goes_uncorked(tmp_path: Path, queued: int) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(256 * KiB))
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    server.setblocking(False)
    corked_during: list[bool] = []

    async def scenario() -> None:
        cycle = _Cycle(256 * KiB)
        sender = ZeroCopySender(cycle, _Transport(server, queued), 64 * KiB)  # type: ignore[arg-type]
        original = os.sendfile

        def watched(*args: Any) -> int:
            corked_during.append(_corked(server))
            return original(*args)

        os.sendfile = watched  # type: ignore[assignment]
        try:
            with path.open("rb") as f:
                message = {"type": EXTENSION, "file": f.fileno(), "offset": 0, "count": 256 * KiB}
                await sender.send({**message, "more_body": True})
        finally:
            os.sendfile = original
        assert cycle.remaining == 0
        sender.close()

    try:
        asyncio.run(scenario())
        # Queued bytes (a part's headers) are corked to leave with the first file bytes; the rest
        # of the file, and a body with nothing queued before it, goes uncorked.
        assert corked_during == [bool(queued)] + [False] * (len(corked_during) - 1)
        assert not _corked(server)
        received = bytearray()
        client.settimeout(10)
        while len(received) < 256 * KiB:
            received += client.recv(1024 * KiB)
        assert bytes(received) == path.read_bytes()
    finally:
        for s in (client, server, listener):
            s.close()
