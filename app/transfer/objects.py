"""Send a `ResponsePlan` for an object in a bucket: each file range read in windows pinned to the
ETag the plan was made from (app/storage/s3.py), sent as they arrive.

Memory per download is the storage's read-ahead (a few windows), whatever the range. A slow
client makes `send` wait, so the next window is not requested: backpressure reaches the store.
A client that goes away stops the reads at the next window.

Where the connection offers the zero-copy extension and the store is read with Ferry's own GET
(a plain-HTTP endpoint), the part of a range past its first bytes is one GET pinned to the ETag
whose body is spliced from the store's socket to the client's (zero_copy.py): bounded by the
pipe, paced by the client, never through user space.

If the object changes under the download, a window's GET (pinned with If-Match) answers 412 and
the connection is ended before the last promised byte; a spliced rest already under way is one
GET, which the store answers from one version, so the old version may come whole, as its ETag and
Content-Length describe. If the store stops answering, the body is cut short. Either way: a short
body or the old version whole, never a complete-looking body with new bytes in it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Scope

from app.http.plan import ResponsePlan
from app.http.ranges import ByteRange
from app.storage.backend import ByteStream, Chunk, Stat, Storage
from app.storage.errors import Changed, Unreachable
from app.storage.s3_http import OpenBody
from app.transfer.activity import Activity
from app.transfer.download import PlanSender, TransferOptions, _Disconnect
from app.transfer.messages import TypedSend, socket_segment
from app.transfer.zero_copy import FileChanged, SourceEnded, can_splice, can_zero_copy

logger = logging.getLogger("ferry.transfer")


@dataclass(frozen=True, slots=True)
class Head:
    """Bytes of the object's version that came with its stat (one GET gave both): sent first when
    the body's first range starts at `start`, instead of being asked for again."""

    start: int
    data: Chunk


class ObjectSender(PlanSender):
    """A plan sent from one version of an object (its `Stat`), read from `storage`."""

    def __init__(
        self,
        plan: ResponsePlan,
        storage: Storage,
        stat: Stat,
        options: TransferOptions,
        on_close: Callable[[], None] | None = None,
        activity: Activity | None = None,
        head: Head | None = None,
    ) -> None:
        super().__init__(plan, options, on_close, activity)
        self.storage = storage
        self.stat = stat
        self.head = head
        self._stream: ByteStream | None = None
        self.source_timeout = 60.0  # a store sending nothing this long has stopped answering

    async def _release(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()

    async def _send_file_range(
        self, scope: Scope, r: ByteRange, send: TypedSend, disconnect: _Disconnect, *, last: bool
    ) -> bool:
        start, head, self.head = r.start, self.head, None  # only the first range may start there
        if head is not None and head.start == start and head.data:
            first = memoryview(head.data)[: r.stop - start]
            await self._send_chunk(first, send)
            start += len(first)
            if start == r.stop or disconnect.happened:
                return not disconnect.happened
        try:
            path, etag = self.stat.path, self.stat.etag
            opener = getattr(self.storage, "open_socket", None)
            if opener is not None and self._splices(scope, r.stop - start):
                opened = await opener(path, start, r.stop, if_match=etag)
                if opened is not None:
                    return await self._splice(opened, send)
            self._stream = await self.storage.open_range(path, start, r.stop, if_match=etag)
            async for data in self._stream:
                if disconnect.happened:
                    return False
                await self._send_chunk(data, send)
        except Changed:
            raise FileChanged() from None
        except (Unreachable, SourceEnded) as exc:
            logger.warning("the storage stopped answering during a download (%s); connection aborted", exc)
            return False
        finally:
            if self._stream is not None:
                await self._stream.aclose()
                self._stream = None
        return True

    def _splices(self, scope: Scope, count: int) -> bool:
        options = self.options
        return (
            count > self.chunk_size
            and not options.rate_limit
            and can_splice()
            and can_zero_copy(scope, options.zero_copy)
        )

    async def _splice(self, opened: OpenBody, send: TypedSend) -> bool:
        """The bytes that came with the store's headers, then the rest spliced from its socket."""
        try:
            if opened.answer.body:
                await self._send_chunk(opened.answer.body, send)
            if opened.remaining:
                await send(socket_segment(opened.fileno(), opened.remaining, self.source_timeout))
        finally:
            opened.close()
        return True
