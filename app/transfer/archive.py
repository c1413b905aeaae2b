"""Send a folder archive's plan (app/archives/): header bytes from memory, file bytes from the files.

A range of the archive is a run of pieces (`Layout.pieces`): headers, descriptors and the trailer
are small byte strings, gathered with the bytes of small files into writes of about one chunk;
a larger file span goes out as a file download's does (sendfile where the connection offers it,
else chunked reads in a thread). Each file is opened when its bytes are due, through `open_member`
(the route's: the path gate, a link's scope, and a check that it is still the version the
manifest and ETag describe); it is closed before the next. If a file changed, vanished or changes
while being sent, the connection is ended before the archive's last byte: a short body, never an
archive that looks complete and is not.

A ZIP whose CRC-32s are not all known is sent whole (its plan allows no range): the CRC-32 of a
file not hashed yet is computed from the bytes as they are read and sent, and its data
descriptor follows them (app/archives/zip.py says why the bytes are the same either way).
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.types import Scope

from app import metrics
from app.archives.layout import FileSpan, Layout
from app.archives.zip import ZipLayout
from app.http.plan import ResponsePlan
from app.http.ranges import ByteRange
from app.storage.backend import Chunk
from app.transfer.activity import Activity
from app.transfer.download import SMALL_BODY, FileSender, TransferOptions, _Disconnect, read_checked
from app.transfer.messages import TypedSend
from app.transfer.zero_copy import FileChanged, can_zero_copy

logger = logging.getLogger("ferry.archives")


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class MemberOpener:
    """`open(i)`: member i opened for reading, (fd, stat), or FileChanged when it is no longer the
    file the manifest lists (the sender closes the descriptor); `close()`: what it keeps open
    between members (a folder's descriptor), given back when the response ends."""

    open: Callable[[int], tuple[int, os.stat_result]]
    close: Callable[[], None] = _nothing


class ArchiveSender(FileSender):
    """An ASGI app that sends an archive's plan, opening each member's file in turn."""

    def __init__(
        self,
        plan: ResponsePlan,
        layout: Layout,
        open_member: MemberOpener,
        options: TransferOptions,
        *,
        kind: str,
        on_close: Callable[[], None] | None = None,
        activity: Activity | None = None,
    ) -> None:
        super().__init__(plan, -1, os.stat_result((0,) * 10), options, on_close, activity)
        self.layout = layout
        self.open_member = open_member
        self.kind = kind
        self._member = -1
        self._buffer: list[Chunk] = []
        self._buffered = 0

    async def _release(self) -> None:
        self._close_member()
        self.open_member.close()

    def _close_member(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self._member = -1, -1

    def _open(self, index: int) -> None:
        if self._member != index:
            self._close_member()
            self.fd, self.st = self.open_member.open(index)
            self._member = index

    async def _send_file_range(
        self, scope: Scope, r: ByteRange, send: TypedSend, disconnect: _Disconnect, *, last: bool
    ) -> bool:
        if self._zero_copy is None:
            self._zero_copy = can_zero_copy(scope, self.options.zero_copy)
        try:
            for piece in self.layout.pieces(r.start, r.stop):
                if disconnect.happened:
                    return False
                if isinstance(piece, bytes):
                    await self._gather(piece, send)
                    continue
                ends = last and r.stop == self.layout.data[piece.index] + piece.offset + piece.length
                if not await self._send_span(piece, send, disconnect, last=ends):
                    return False
            await self._flush(send)
        finally:
            self._close_member()
        return True

    async def _send_span(
        self, span: FileSpan, send: TypedSend, disconnect: _Disconnect, *, last: bool
    ) -> bool:
        """Member bytes: computing its CRC-32 if unknown, by sendfile if large, else gathered."""
        computing = isinstance(self.layout, ZipLayout) and self.layout.crc32s[span.index] is None
        if not computing and self._zero_copy and span.length > SMALL_BODY:
            self._open(span.index)
            await self._flush(send)
            r = ByteRange(span.offset, span.offset + span.length)
            return await self._sendfile_range(r, send, disconnect, last=last)
        crc = 0
        async for data in self._chunks(span):
            if disconnect.happened:
                return False
            if computing:
                crc = zlib.crc32(data, crc)
            await self._gather(data, send)
        if computing:
            # Only a whole archive is sent while CRC-32s are missing: the span is the whole file.
            assert isinstance(self.layout, ZipLayout) and span.offset == 0
            self.layout.set_crc32(span.index, crc)
        return True

    async def _chunks(self, span: FileSpan) -> AsyncIterator[Chunk]:
        """The span's bytes, read and checked a chunk at a time."""
        self._open(span.index)
        offset, stop = span.offset, span.offset + span.length
        while offset < stop:
            size = min(self.chunk_size, stop - offset)
            yield await read_checked(self.fd, size, offset, self.st)
            offset += size

    async def _gather(self, data: Chunk, send: TypedSend) -> None:
        """Queue bytes for one larger write (headers and small files), sent at about a chunk."""
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= self.chunk_size:
            await self._flush(send)

    async def _flush(self, send: TypedSend) -> None:
        if not self._buffered:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        await self._send_chunk(data, send)

    async def _pace(self, size: int) -> None:
        metrics.ARCHIVE_BYTES.labels(self.kind).inc(size)
        await super()._pace(size)


__all__ = ["ArchiveSender", "FileChanged", "MemberOpener"]
