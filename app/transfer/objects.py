"""Send a `ResponsePlan` for an object in a bucket: each file range read in windows pinned to the
ETag the plan was made from (app/storage/s3.py), sent as they arrive.

Memory per download is the storage's read-ahead (a few windows), whatever the range. A slow
client makes `send` wait, so the next window is not requested: backpressure reaches the store.
A client that goes away stops the reads at the next window. If the object changes under the
download (the store answers 412 to the pinned ETag) or the store stops answering, the connection
is ended before the last promised byte: a short body, never a complete-looking wrong one.
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
from app.transfer.activity import Activity
from app.transfer.download import PlanSender, TransferOptions, _Disconnect
from app.transfer.messages import TypedSend
from app.transfer.zero_copy import FileChanged

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
            self._stream = await self.storage.open_range(path, start, r.stop, if_match=etag)
            async for data in self._stream:
                if disconnect.happened:
                    return False
                await self._send_chunk(data, send)
        except Changed:
            raise FileChanged() from None
        except Unreachable as exc:
            logger.warning("the storage stopped answering during a download (%s); connection aborted", exc)
            return False
        finally:
            if self._stream is not None:
                await self._stream.aclose()
                self._stream = None
        return True
