"""What ZeroCopySender (app/transfer/zero_copy.py) asks of uvicorn's request cycle and transport,
for unit tests that drive it over real sockets with no server: a started GET response."""

from __future__ import annotations

import socket
import threading
from typing import Any


class FakeCycle:
    """A started GET response's cycle: counts what is sent, refuses ASGI messages."""

    def __init__(self, remaining: int) -> None:
        self.scope: dict[str, Any] = {"method": "GET"}
        self.remaining = remaining
        self.sent = 0
        self.disconnected = False
        self.response_started, self.response_complete, self.chunked = True, False, False

    def mark_disconnected(self) -> None:
        self.disconnected = True

    def count_sent(self, sent: int) -> None:
        self.sent += sent
        self.remaining -= sent

    async def send(self, message: Any) -> None:
        raise AssertionError("only zero-copy segments are sent here")

    async def drain(self) -> None:
        return None


class FakeTransport:
    """A transport whose socket is `sock`, with nothing queued."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def get_write_buffer_size(self) -> int:
        return 0


def reading(
    sock: socket.socket, into: bytearray, upto: int | None = None, piece: int = 1 << 20
) -> threading.Thread:
    """A thread reading `sock` into `into` in pieces of at most `piece` bytes until `upto` bytes
    (or the end); small pieces make the sender meet a full socket many times."""

    def run() -> None:
        while upto is None or len(into) < upto:
            got = sock.recv(piece)
            if not got:
                return
            into.extend(got)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
