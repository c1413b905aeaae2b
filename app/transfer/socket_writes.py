"""A buffer written straight to a connection's socket: the zero-copy extension's ``buffer`` message
(zero_copy.py), which an archive sends its batches of headers and small files with
(app/transfer/archive.py). When `write_all` returns every byte is in the kernel, none left queued
in the transport, so the sender may refill the same buffer at once: no buffer per write."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.transfer.uvicorn_adapter import Cycle

_DISCONNECTS = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF)


async def write_all(
    cycle: Cycle, fd: int, private_fd: Callable[[], int], data: memoryview, head: bytes = b""
) -> None:
    """`data` written to the socket `fd` (non-blocking; the transport's queue already drained),
    counted in `cycle`, after `head` (a response's held status line and fields, not counted) in
    the same call; a full socket is waited on through `private_fd()` (a dup the event loop may
    watch). Returns early, quietly, when the client has gone."""
    loop = asyncio.get_running_loop()
    before = memoryview(head)
    while (data or before) and not cycle.disconnected:
        try:
            sent = os.writev(fd, (before, data)) if before else os.write(fd, data)
        except BlockingIOError:
            await writable(loop, private_fd())
            continue
        except OSError as exc:
            if exc.errno not in _DISCONNECTS:
                raise
            cycle.mark_disconnected()
            return
        if before:
            taken = min(sent, len(before))
            before, sent = before[taken:], sent - taken
        data = data[sent:]
        cycle.count_sent(sent)


async def writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Until the non-blocking descriptor `fd` can be written to (a socket with room again)."""
    waiter: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, set_done, waiter)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)


def set_done(waiter: asyncio.Future[None]) -> None:
    """An event loop callback: wakes `waiter` (once)."""
    if not waiter.done():
        waiter.set_result(None)
