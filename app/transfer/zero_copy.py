"""Zero-copy sends: the ASGI ``http.response.zerocopysend`` extension, served by Ferry's protocol.

This is the only module that knows how file bytes reach a socket without passing through Python.
`FerryProtocol` (protocol.py) advertises the extension on plain-HTTP connections when
FERRY_ZERO_COPY is not ``off`` and wraps each request's ``send`` in a `ZeroCopySender`:

- ``http.response.zerocopysend`` → non-blocking ``os.sendfile()`` on a private ``dup()`` of the
  connection's socket (both asyncio and uvloop refuse readers/writers on a transport's own fd);
  EAGAIN waits for writability with ``loop.add_writer`` on the dup;
- pages not in the page cache are sent from a worker thread, so a cold file never stalls the
  event loop (checked with a ``preadv(RWF_NOWAIT)`` probe);
- a message with ``buffer`` instead of ``file`` writes it to the socket whole before returning
  (socket_writes.py: an archive's batch, refilled at once);
- a message with ``socket`` instead of ``file`` splices (``os.splice``) that many bytes from a
  connected socket (a store's answer, app/storage/s3_http.py) through a pipe to the client's
  socket: the bytes never enter user space. Nothing is read from the source while the pipe is
  full (the client's pace reaches the store); a source that ends early raises `SourceEnded`;
- a file's bytes go uncorked, as nginx's with tcp_nopush off (which curl reads about twice as
  fast as with it on); corked to the end of the response, one large body cost the sender about a
  third more CPU. Only
  bytes still queued in the transport (a part's headers) are corked to leave with the first
  sendfile call; a splice is corked (TCP_CORK) to the end of the response. The socket is uncorked
  after every response, so small answers never wait ~40 ms.

`can_zero_copy(scope, mode)` is the one place that chooses between sendfile and chunked reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from app.transfer.page_cache import pages_cached
from app.transfer.socket_writes import set_done, writable, write_all

if TYPE_CHECKING:
    from app.transfer.uvicorn_adapter import Cycle


EXTENSION = "http.response.zerocopysend"

_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)

Message = MutableMapping[str, Any]


class FileChanged(Exception):
    """The opened file was truncated or modified while it was being sent."""


class SourceEnded(Exception):
    """A socket being spliced ended, or stalled, before the promised length."""


PIPE_SIZE = 1024 * 1024  # a splice's pipe: at most this much of a body is in flight in the kernel
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_DISCONNECTS = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF)


def can_splice() -> bool:
    return hasattr(os, "splice") and hasattr(os, "SPLICE_F_NONBLOCK")


def can_zero_copy(scope: MutableMapping[str, Any], mode: str) -> bool:
    """Whether file bytes of this request go out with sendfile (else chunked reads)."""
    return mode != "off" and EXTENSION in scope.get("extensions", {})


def zero_copy_available() -> bool:
    return hasattr(os, "sendfile")


class ZeroCopySender:
    """Wraps one request cycle's ``send`` to serve the zero-copy extension.

    `cycle` is uvicorn's request cycle (through uvicorn_adapter.py); its byte accounting is kept
    exact so uvicorn's own Content-Length checks still hold.
    """

    def __init__(self, cycle: Cycle, transport: asyncio.Transport, chunk_size: int) -> None:
        self.cycle = cycle
        self.transport = transport
        self.chunk_size = chunk_size
        self.sock: Any = transport.get_extra_info("socket")
        self.fd: int = self.sock.fileno()
        self.corkable = _TCP_CORK is not None and self.sock.family in (socket.AF_INET, socket.AF_INET6)
        self.corked = False
        self.dup: int | None = None
        self._head: bytes | None = None  # a response's head, held for its first body bytes

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" and self.cycle.scope["method"] != "HEAD":
            # Held for the first body bytes: one write of both, where uvicorn makes two sends
            # (the head alone costs a segment and a wake-up of the client of its own).
            self._head = await self.cycle.start_held(message)
            return
        if self._head is not None and not (kind == EXTENSION and "buffer" in message):
            head, self._head = self._head, None  # a buffer takes it along (_send_file)
            if kind == "http.response.body":
                await self.cycle.send_after(head, message)
                if not message.get("more_body", False):
                    self._set_cork(False)
                return
            self.cycle.write_head(head)  # queued: _send_file drains it before the file's bytes
        if kind == EXTENSION:
            await self._send_file(message)
            if not message.get("more_body", False):
                await self._finish({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if kind == "http.response.body" and not message.get("more_body", False):
            await self._finish(message)
            return
        await self.cycle.send(message)

    async def _finish(self, message: Message) -> None:
        await self.cycle.send(message)
        self._set_cork(False)

    def close(self) -> None:
        self._set_cork(False)
        if self.dup is not None:
            os.close(self.dup)
            self.dup = None

    def _set_cork(self, on: bool) -> None:
        if self.corkable and self.corked != on and not self.cycle.disconnected:
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, int(on))
                self.corked = on
            except OSError:
                self.corkable = False  # the peer is gone; nothing left to flush

    def _private_fd(self) -> int:
        """A dup of the socket that only this response closes: safe to wait on and to hand to a
        thread even if the transport closes its own descriptor meanwhile."""
        if self.dup is None:
            self.dup = os.dup(self.fd)
        return self.dup

    async def _send_file(self, message: Message) -> None:
        cycle = self.cycle
        if cycle.disconnected:
            return
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError("zerocopysend outside a started response")
        if cycle.chunked or cycle.scope["method"] == "HEAD":
            raise RuntimeError("zerocopysend needs a Content-Length response to a GET")
        count: int = message["count"]
        if count > cycle.remaining:
            raise RuntimeError("Response content longer than Content-Length")
        if "socket" in message:
            # Corked to the end of the response: a store's bytes arrive in pieces of any size
            # and leave in full segments.
            self._set_cork(True)
            await self._drain()
            await self._splice_loop(message["socket"], count, message.get("timeout") or 60.0)
            return
        if "buffer" in message:
            await self._drain()  # headers queued in the transport go first
            head, self._head = self._head or b"", None  # a held head leaves in the same call
            view = memoryview(message["buffer"])[:count]
            await write_all(self.cycle, self.fd, self._private_fd, view, head)
            return
        if self.transport.get_write_buffer_size():
            # Bytes still queued (a part's headers) leave with the first file bytes, corked; the
            # rest of the file goes uncorked (see _sendfile_loop).
            self._set_cork(True)
        await self._drain()
        file = message["file"]
        fd = file if isinstance(file, int) else file.fileno()
        offset: int = message.get("offset") or 0
        await self._sendfile_loop(fd, offset, count)

    async def _drain(self) -> None:
        """Wait until bytes already queued in the transport (headers, part headers) are out."""
        if not self.transport.get_write_buffer_size():
            return
        low, high = self.transport.get_write_buffer_limits()
        # With both limits at 0 the transport pauses us now and resumes us once it is empty.
        self.transport.set_write_buffer_limits(high=0, low=0)
        try:
            await self.cycle.drain()
        finally:
            self.transport.set_write_buffer_limits(high=high, low=low)

    async def _sendfile_loop(self, fd: int, offset: int, count: int) -> None:
        loop = asyncio.get_running_loop()
        cycle = self.cycle
        while count > 0:
            if cycle.disconnected:
                return
            size = min(count, self.chunk_size)
            try:
                if pages_cached(fd, offset, size):
                    sent = os.sendfile(self.fd, fd, offset, size)
                else:
                    sent = await loop.run_in_executor(None, os.sendfile, self._private_fd(), fd, offset, size)
            except BlockingIOError:
                await writable(loop, self._private_fd())
                continue
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                    cycle.mark_disconnected()
                    return
                raise
            if sent == 0:
                raise FileChanged("file ended before the promised length")
            offset += sent
            count -= sent
            cycle.count_sent(sent)
            self._set_cork(False)  # what was queued has left with the first file bytes

    async def _splice_loop(self, source: int, count: int, timeout: float) -> None:
        """`count` bytes from the socket `source` to the client through a pipe (see the module's
        docstring); returns early, nothing more read, when the client has gone."""
        loop = asyncio.get_running_loop()
        cycle = self.cycle
        drain, fill = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fill, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            capacity = fcntl.fcntl(fill, fcntl.F_GETPIPE_SZ)
            held = 0  # bytes in the pipe
            while count or held:
                if cycle.disconnected:
                    return
                moved = False
                if count and held < capacity:
                    try:
                        got = os.splice(source, fill, min(count, capacity - held), flags=_SPLICE_FLAGS)
                    except BlockingIOError:
                        got = -1
                    except OSError as exc:
                        raise SourceEnded(f"the source failed: {exc.strerror}") from None
                    if got == 0:
                        raise SourceEnded("the source ended before the promised length")
                    if got > 0:
                        held, count, moved = held + got, count - got, True
                if held:
                    try:
                        sent = os.splice(drain, self.fd, held, flags=_SPLICE_FLAGS)
                    except BlockingIOError:
                        sent = 0
                    except OSError as exc:
                        if exc.errno in _DISCONNECTS:
                            cycle.mark_disconnected()
                            return
                        raise
                    if sent:
                        held -= sent
                        cycle.count_sent(sent)
                    elif not moved or held >= capacity:
                        await writable(loop, self._private_fd())  # the client's pace
                    continue
                if not moved:
                    await _readable(loop, source, timeout)
        finally:
            os.close(drain)
            os.close(fill)


async def _readable(loop: asyncio.AbstractEventLoop, fd: int, timeout: float) -> None:
    waiter: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, set_done, waiter)
    try:
        async with asyncio.timeout(timeout):
            await waiter
    except TimeoutError:
        raise SourceEnded(f"the source sent nothing for {timeout:.0f} s") from None
    finally:
        loop.remove_reader(fd)


def with_zero_copy(app: Any, sender: ZeroCopySender) -> Any:
    """`app` with the zero-copy `send` of `sender` (closed when the app returns)."""

    async def app_with_zero_copy(scope: Any, receive: Any, send: Any) -> None:
        zero_copy_send: Any = sender.send
        try:
            await app(scope, receive, zero_copy_send)
        finally:
            sender.close()

    return app_with_zero_copy
