"""Send a `ResponsePlan` for an opened file: headers, then its segments in bounded chunks.

File bytes go out with sendfile where the connection offers the zero-copy extension
(zero_copy.py), else as `CHUNK_SIZE` reads from the opened descriptor in a worker thread. Either
way memory per connection stays near one chunk plus the write buffer, a client that goes away
stops the loop at the next chunk, and the descriptor is closed at once. If the file changes under
the response (size or mtime of the opened descriptor), the connection is aborted before the last
promised byte, so the client sees a short body, never a complete-looking mix of two versions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from app.http.plan import ResponsePlan
from app.http.ranges import ByteRange
from app.settings import Settings
from app.storage.backend import Chunk
from app.transfer.activity import Activity
from app.transfer.messages import TypedSend, body, file_segment, sender, start
from app.transfer.page_cache import read_cached
from app.transfer.spans import SENDFILE_SPAN
from app.transfer.zero_copy import FileChanged, can_zero_copy

logger = logging.getLogger("ferry.transfer")

SMALL_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class TransferOptions:
    """How file bytes are sent (from Settings)."""

    chunk_size: int
    write_buffer: int
    zero_copy: str
    rate_limit: int = 0
    rate_limit_after: int = 0

    @classmethod
    def of(cls, settings: Settings) -> TransferOptions:
        return cls(
            chunk_size=settings.chunk_size,
            write_buffer=settings.write_buffer,
            zero_copy=settings.zero_copy,
            rate_limit=settings.rate_limit,
            rate_limit_after=settings.rate_limit_after,
        )


def _check_unchanged(fd: int, expect: os.stat_result) -> None:
    now = os.fstat(fd)
    if now.st_size != expect.st_size or now.st_mtime_ns != expect.st_mtime_ns:
        raise FileChanged()


def _read_at(fd: int, size: int, offset: int, expect: os.stat_result) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) < size:
        raise FileChanged()
    _check_unchanged(fd, expect)
    return data


async def read_checked(fd: int, size: int, offset: int, expect: os.stat_result) -> bytes:
    """`size` bytes at `offset`, from the page cache on the event loop or from disk in a thread."""
    cached = read_cached(fd, size, offset)
    if cached is not None:
        _check_unchanged(fd, expect)
        return cached
    return await asyncio.get_running_loop().run_in_executor(None, _read_at, fd, size, offset, expect)


async def _yield() -> None:
    """Let the loop run other work between chunks: cached reads and a fast client may never make
    a send wait, and without this one download would hold every other connection (and the
    disconnect watcher) until it ended."""
    await asyncio.sleep(0)


class _Disconnect:
    """Watches `receive` for http.disconnect while a body of several chunks is being sent.

    The watch starts with the second chunk: a one-chunk body has nothing left to stop, and the
    task would cost more than the rest of a small response.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Future[None] | None = None
        self._checks = 0

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass

    @property
    def happened(self) -> bool:
        if self._task is None:
            self._checks += 1
            if self._checks > 1:
                self._task = asyncio.ensure_future(self._watch())
            return False
        return self._task.done()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class PlanSender:
    """An ASGI app that sends a plan: its headers, then its body's segments, each file range
    through `_send_file_range` (a subclass's: from a descriptor, or from a bucket)."""

    def __init__(
        self,
        plan: ResponsePlan,
        options: TransferOptions,
        on_close: Callable[[], None] | None = None,
        activity: Activity | None = None,
    ) -> None:
        self.status_code = plan.status
        self.activity = activity  # marked while body bytes are being sent
        self.plan = plan
        self.options = options
        self.on_close = on_close
        self.chunk_size = options.chunk_size
        if options.rate_limit:
            # Paced downloads send smaller pieces, so the pace is smooth rather than bursty.
            self.chunk_size = max(16 * 1024, min(self.chunk_size, options.rate_limit // 4))
        self.slice_size = min(options.write_buffer, self.chunk_size)
        # Paced downloads keep one chunk per zero-copy message: the pace is kept between messages.
        self.span = self.chunk_size if options.rate_limit else max(self.chunk_size, SENDFILE_SPAN)
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in plan.headers]
        self._sent = 0
        self._paced_from: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        typed = sender(send)
        try:
            await typed(start(self.status_code, self.raw_headers))
            if scope["method"] == "HEAD" or not self.plan.body:
                await typed(body(b"", more=False))
                return
            if self.activity is None:
                await self._send_body(scope, receive, typed)
            else:
                with self.activity.transfer():
                    await self._send_body(scope, receive, typed)
        finally:
            await self._release()
            if self.on_close is not None:
                self.on_close()

    async def _release(self) -> None:
        """Give back what the answer holds (a descriptor), whatever happened."""

    async def _send_body(self, scope: Scope, receive: Receive, send: TypedSend) -> None:
        disconnect = _Disconnect(receive)
        last = len(self.plan.body) - 1
        try:
            for i, segment in enumerate(self.plan.body):
                if not isinstance(segment, ByteRange):
                    await send(body(segment, more=True))
                    continue
                if not await self._send_file_range(scope, segment, send, disconnect, last=i == last):
                    return
            await send(body(b"", more=False))
        except FileChanged:
            # Returning without completing the response makes the server drop the connection:
            # the client sees a short body against Content-Length, never a wrong one.
            logger.warning("file changed while it was being sent; connection aborted")
        finally:
            disconnect.close()

    async def _send_file_range(
        self, scope: Scope, r: ByteRange, send: TypedSend, disconnect: _Disconnect, *, last: bool
    ) -> bool:
        """Send bytes `r` of the file; False when the client has gone (nothing more to send)."""
        raise NotImplementedError

    async def _pace(self, size: int) -> None:
        """Yield between chunks and, past FERRY_RATE_LIMIT_AFTER bytes, keep to FERRY_RATE_LIMIT."""
        self._sent += size
        rate, after = self.options.rate_limit, self.options.rate_limit_after
        if not rate or self._sent <= after:
            await _yield()
            return
        now = time.monotonic()
        if self._paced_from is None:
            self._paced_from = now - (self._sent - after) / rate  # the bytes past `after` count too
        delay = self._paced_from + (self._sent - after) / rate - now
        await asyncio.sleep(max(0.0, delay))

    async def _send_chunk(self, data: Chunk, send: TypedSend) -> None:
        view = memoryview(data)
        for i in range(0, len(data), self.slice_size):
            await send(body(view[i : i + self.slice_size], more=True))
        await self._pace(len(data))


class FileSender(PlanSender):
    """A plan sent from an open file descriptor, which it owns (closed at the end, whatever
    happens): sendfile where the connection allows it, else reads in a thread."""

    def __init__(
        self,
        plan: ResponsePlan,
        fd: int,
        st: os.stat_result,
        options: TransferOptions,
        on_close: Callable[[], None] | None = None,
        activity: Activity | None = None,
    ) -> None:
        super().__init__(plan, options, on_close, activity)
        self.fd = fd
        self.st = st
        self._zero_copy: bool | None = None

    async def _release(self) -> None:
        os.close(self.fd)

    async def _send_file_range(
        self, scope: Scope, r: ByteRange, send: TypedSend, disconnect: _Disconnect, *, last: bool
    ) -> bool:
        if self._zero_copy is None:
            # A small body costs less as one cached read and one write than as corked sendfile calls.
            self._zero_copy = (
                can_zero_copy(scope, self.options.zero_copy) and self.plan.content_length > SMALL_BODY
            )
        if self._zero_copy:
            return await self._sendfile_range(r, send, disconnect, last=last)
        return await self._send_range(r, send, disconnect)

    async def _send_range(self, r: ByteRange, send: TypedSend, disconnect: _Disconnect) -> bool:
        offset = r.start
        while offset < r.stop:
            if disconnect.happened:
                return False
            size = min(self.chunk_size, r.stop - offset)
            await self._send_chunk(await read_checked(self.fd, size, offset, self.st), send)
            offset += size
        return True

    async def _sendfile_range(
        self, r: ByteRange, send: TypedSend, disconnect: _Disconnect, *, last: bool
    ) -> bool:
        # The response's very last byte is read and checked, not sent blind: a change noticed
        # after it had gone out could no longer be signalled by a short body.
        stop = r.stop - 1 if last else r.stop
        offset = r.start
        while offset < stop:
            if disconnect.happened:
                return False
            size = min(self.span, stop - offset)
            await send(file_segment(self.fd, offset, size))
            _check_unchanged(self.fd, self.st)
            offset += size
            await self._pace(size)
        return await self._send_range(ByteRange(stop, r.stop), send, disconnect) if last else True
