"""Send a `ResponsePlan` for an opened file: headers, then its segments in bounded chunks.

Memory per connection stays near one chunk plus the transport's write buffer, whatever the file
or range size. A client that goes away stops the loop at the next chunk and the descriptor is
closed at once. If the file changes under the response (size or mtime of the opened descriptor),
the connection is aborted rather than finished with bytes of two versions.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.http.plan import ResponsePlan
from app.http.ranges import ByteRange

logger = logging.getLogger("ferry.transfer")


class FileChanged(Exception):
    """The opened file was modified or truncated while it was being sent."""


def _read_at(fd: int, size: int, offset: int, expect: os.stat_result) -> bytes:
    data = os.pread(fd, size, offset)
    now = os.fstat(fd)
    if len(data) < size or now.st_size != expect.st_size or now.st_mtime_ns != expect.st_mtime_ns:
        raise FileChanged()
    return data


class _Disconnect:
    """Watches `receive` for http.disconnect while the body is being sent."""

    def __init__(self, receive: Receive) -> None:
        self._task = asyncio.ensure_future(self._watch(receive))

    @staticmethod
    async def _watch(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    @property
    def happened(self) -> bool:
        return self._task.done()

    def close(self) -> None:
        self._task.cancel()


class FileResponse(Response):
    """An ASGI response that owns an open file descriptor and sends a plan from it."""

    def __init__(
        self, plan: ResponsePlan, fd: int, st: os.stat_result, *, chunk_size: int, write_buffer: int
    ) -> None:
        self.status_code = plan.status
        self.plan = plan
        self.fd = fd
        self.st = st
        self.chunk_size = chunk_size
        self.slice_size = min(write_buffer, chunk_size)
        self.background = None
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in plan.headers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            if scope["method"] == "HEAD" or not self.plan.body:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await self._send_body(receive, send)
        finally:
            os.close(self.fd)

    async def _send_body(self, receive: Receive, send: Send) -> None:
        disconnect = _Disconnect(receive)
        try:
            for segment in self.plan.body:
                if isinstance(segment, ByteRange):
                    if not await self._send_range(segment, send, disconnect):
                        return
                else:
                    await send({"type": "http.response.body", "body": segment, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except FileChanged:
            # Returning without completing the response makes the server drop the connection:
            # the client sees a short body against Content-Length, never a wrong one.
            logger.warning("file changed while it was being sent; connection aborted")
        finally:
            disconnect.close()

    async def _send_range(self, r: ByteRange, send: Send, disconnect: _Disconnect) -> bool:
        loop = asyncio.get_running_loop()
        offset = r.start
        while offset < r.stop:
            if disconnect.happened:
                return False
            size = min(self.chunk_size, r.stop - offset)
            data = await loop.run_in_executor(None, _read_at, self.fd, size, offset, self.st)
            view = memoryview(data)
            for i in range(0, size, self.slice_size):
                message: dict[str, Any] = {
                    "type": "http.response.body",
                    "body": view[i : i + self.slice_size],
                    "more_body": True,
                }
                await send(message)
            offset += size
        return True
