"""Send a folder archive of a bucket (FERRY_STORAGE=s3://…): app/transfer/archive.py's sender with
each member's bytes read from the bucket instead of a descriptor.

A member's first window comes with its stat (one GET), which is checked against the identity the
manifest and ETag were made from; the rest of the member is read pinned to that version's ETag.
An object replaced, deleted or unreadable mid-archive ends the connection before the archive's
last byte, as a changed local file does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from app.archives.layout import FileSpan, Layout
from app.http.plan import ResponsePlan
from app.storage.backend import Chunk
from app.storage.errors import Changed, NotServable, Unreachable

if TYPE_CHECKING:
    from app.storage.s3 import S3Storage
from app.storage.digests import crc32
from app.storage.values import Identity, entry_from_object
from app.transfer.activity import Activity
from app.transfer.archive import ArchiveSender, MemberOpener
from app.transfer.download import TransferOptions, _Disconnect
from app.transfer.messages import TypedSend
from app.transfer.zero_copy import FileChanged

logger = logging.getLogger("ferry.archives")


class ObjectArchiveSender(ArchiveSender):
    """An archive whose members are objects: `source(i)` names member i's key below the bucket's
    prefix, `expect(i)` the identity the manifest holds for it."""

    def __init__(
        self,
        plan: ResponsePlan,
        layout: Layout,
        bucket: S3Storage,
        source: Callable[[int], str],
        expect: Callable[[int], Identity],
        options: TransferOptions,
        *,
        kind: str,
        on_close: Callable[[], None] | None = None,
        activity: Activity | None = None,
    ) -> None:
        super().__init__(
            plan,
            layout,
            MemberOpener(_no_descriptor),
            options,
            kind=kind,
            on_close=on_close,
            activity=activity,
        )
        self._zero_copy = False  # bytes come from the store, not a descriptor
        self.bucket = bucket
        self.source = source
        self.expect = expect

    async def _batch_span(
        self, span: FileSpan, send: TypedSend, disconnect: _Disconnect, *, computing: bool
    ) -> int | None:
        """The span's bytes as the bucket hands them out, each copied into the batch."""
        crc = 0
        async for data in self._chunks(span):
            if disconnect.happened:
                return None
            view = memoryview(data)
            if computing:
                crc = crc32(view, crc)
            await self._gather(view, send)
        return crc

    async def _chunks(self, span: FileSpan) -> AsyncIterator[Chunk]:
        path = self.source(span.index)
        start, stop = span.offset, span.offset + span.length
        try:
            found = await self.bucket.stat_reading(path, start, min(stop, start + self.chunk_size))
            if found is None:
                raise FileChanged(f"{path} is gone")
            st, first = found
            entry = entry_from_object(st.path, False, st.size, st.mtime_ns, st.version)
            if (entry.dev, entry.ino, entry.size, entry.mtime_ns) != self.expect(span.index):
                raise FileChanged(f"{path} changed")
            yield first
            start += len(first)
            if start < stop:
                stream = await self.bucket.open_range(path, start, stop, if_match=st.etag)
                try:
                    async for data in stream:
                        yield data
                finally:
                    await stream.aclose()
        except (Changed, NotServable) as exc:
            raise FileChanged(f"{path} changed") from exc
        except Unreachable as exc:
            logger.warning("the storage stopped answering during an archive (%s); connection aborted", exc)
            raise FileChanged(str(exc)) from exc


def _no_descriptor(index: int) -> tuple[int, os.stat_result]:
    raise AssertionError("a bucket's archive opens no descriptor")
