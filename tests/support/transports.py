"""A stand-in for an asyncio transport, for unit tests that feed a protocol by hand: it records
each write call, whether it was closed, and which protocol holds it."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any


class RecordingTransport(asyncio.Transport):
    def __init__(self, sock: socket.socket | None = None) -> None:
        super().__init__()
        self.sock = sock
        self.calls: list[bytes] = []  # one entry per write() or writelines() call
        self.closed = False
        self.protocol: asyncio.BaseProtocol | None = None
        self.reading_paused = False

    @property
    def written(self) -> bytes:
        return b"".join(self.calls)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000), "socket": self.sock}
        return extra.get(name, default)

    def write(self, data: Any) -> None:
        if data:  # an empty write sends nothing (uvicorn makes one to end a body)
            self.calls.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append(b"".join(bytes(piece) for piece in list_of_data))

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol


Pair = tuple[socket.socket, socket.socket]  # tests/conftest.py's `loopback_pair`: (Ferry's end, the client's)


def fd_closed(fd: int) -> bool:
    """Whether the descriptor `fd` is closed (a test's check that nothing was left open)."""
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False
