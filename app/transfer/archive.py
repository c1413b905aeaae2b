"""Send a folder archive's plan (app/archives/): header bytes from memory, file bytes from the files.

A range of the archive is a run of pieces (`Layout.pieces`): headers, descriptors and the trailer
are small byte strings, copied with the bytes of small files into one batch of about a chunk (the
files read straight into it: one copy, not a read, a copy and a join) and written at once; a
larger file span goes out as a file download's does (sendfile where the connection offers it,
else chunked reads in a thread). Where the connection offers zero-copy the batch is written
straight to the socket and refilled (no buffer allocated per write: fresh megabytes cost page
faults); elsewhere each batch is a new buffer, as the transport may still hold the last.

Each file is opened when its bytes are due, through `open_member` (the route's: the path gate, a
link's scope, and a check that it is still the version the manifest and ETag describe); it is
closed before the next. If a file changed, vanished or changes while being sent, the connection
is ended before the archive's last byte: a short body, never an archive that looks complete and
is not.

A ZIP whose CRC-32s are not all known is sent whole (its plan allows no range): the CRC-32 of a
file not hashed yet is computed from the bytes as they are read and sent, and its data
descriptor follows them (app/archives/zip.py says why the bytes are the same either way).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Scope

from app import metrics
from app.archives.layout import FileSpan, Layout
from app.archives.zip import ZipLayout
from app.http.plan import ResponsePlan
from app.http.ranges import ByteRange
from app.storage.digests import crc32
from app.transfer.activity import Activity
from app.transfer.download import SMALL_BODY, FileSender, TransferOptions, _check_unchanged, _Disconnect
from app.transfer.messages import TypedSend, buffer_segment
from app.transfer.zero_copy import FileChanged, can_zero_copy

logger = logging.getLogger("ferry.archives")

_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class MemberOpener:
    """`open(i)`: member i opened for reading, (fd, stat), or FileChanged when it is no longer the
    file the manifest lists (the sender closes the descriptor); `close()`: what it keeps open
    between members (a folder's descriptor), given back when the response ends."""

    open: Callable[[int], tuple[int, os.stat_result]]
    close: Callable[[], None] = _nothing


def _read_rest(fd: int, view: memoryview, offset: int, expect: os.stat_result) -> None:
    if os.preadv(fd, [view], offset) < len(view):
        raise FileChanged()
    _check_unchanged(fd, expect)


async def read_into(fd: int, view: memoryview, offset: int, expect: os.stat_result) -> None:
    """Fill `view` with the file's bytes at `offset`, checked against `expect` after the read (a
    short read or a changed size or mtime: FileChanged): what the page cache holds at once on
    the event loop, the rest from disk in a thread."""
    done = 0
    if _RWF_NOWAIT is not None:
        try:
            done = os.preadv(fd, [view], offset, _RWF_NOWAIT)
        except OSError:
            done = 0  # EAGAIN (not cached) or EOPNOTSUPP (cannot tell): read it in a thread
    if done == len(view):
        _check_unchanged(fd, expect)
        return
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, _read_rest, fd, view[done:], offset + done, expect)


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
        # Header bytes and small files are read into one batch, sent at about a chunk.
        self._batch_size = max(1, min(self.chunk_size, layout.length))
        self._batch: memoryview | None = None
        self._used = 0

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
        """Member bytes: computing its CRC-32 if unknown, by sendfile if large, else batched."""
        computing = isinstance(self.layout, ZipLayout) and self.layout.crc32s[span.index] is None
        if not computing and self._zero_copy and span.length > SMALL_BODY:
            self._open(span.index)
            await self._flush(send)
            r = ByteRange(span.offset, span.offset + span.length)
            return await self._sendfile_range(r, send, disconnect, last=last)
        crc = await self._batch_span(span, send, disconnect, computing=computing)
        if crc is None:
            return False
        if computing:
            # Only a whole archive is sent while CRC-32s are missing: the span is the whole file.
            assert isinstance(self.layout, ZipLayout) and span.offset == 0
            self.layout.set_crc32(span.index, crc)
        return True

    async def _batch_span(
        self, span: FileSpan, send: TypedSend, disconnect: _Disconnect, *, computing: bool
    ) -> int | None:
        """The span's bytes put in the batch, read straight into it from the member's file; their
        CRC-32 when `computing` (else 0), None when the client has gone."""
        self._open(span.index)
        crc = 0
        offset, stop = span.offset, span.offset + span.length
        while offset < stop:
            if disconnect.happened:
                return None
            view = self._room(stop - offset)
            await read_into(self.fd, view, offset, self.st)
            if computing:
                crc = crc32(view, crc)
            offset += len(view)
            await self._filled(len(view), send)
        return crc

    def _room(self, wanted: int) -> memoryview:
        """Up to `wanted` bytes of free space in the batch (never empty: a full one was sent)."""
        if self._batch is None:
            self._batch = memoryview(bytearray(self._batch_size))
        return self._batch[self._used : min(self._used + wanted, len(self._batch))]

    async def _filled(self, size: int, send: TypedSend) -> None:
        self._used += size
        if self._batch is not None and self._used == len(self._batch):
            await self._flush(send)

    async def _gather(self, data: bytes | memoryview, send: TypedSend) -> None:
        """Header, descriptor or trailer bytes copied into the batch."""
        done = 0
        while done < len(data):
            view = self._room(len(data) - done)
            view[:] = data[done : done + len(view)]
            done += len(view)
            await self._filled(len(view), send)

    async def _flush(self, send: TypedSend) -> None:
        """Send the batch. Written straight to the socket where the connection offers it (the
        same buffer is then filled again); else as body messages, which the transport may still
        hold after they return, so the next batch is a new buffer."""
        if not self._used or self._batch is None:
            return
        size, self._used = self._used, 0
        if self._zero_copy:
            await send(buffer_segment(self._batch, size))
            await self._pace(size)
            return
        batch, self._batch = self._batch, None
        await self._send_chunk(batch[:size], send)

    async def _pace(self, size: int) -> None:
        metrics.ARCHIVE_BYTES.labels(self.kind).inc(size)
        await super()._pace(size)


__all__ = ["ArchiveSender", "FileChanged", "MemberOpener"]
