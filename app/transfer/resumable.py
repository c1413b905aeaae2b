"""A request body appended to a resumable upload (app/storage/resumable.py), whatever protocol
carried it: streamed in CHUNK_SIZE writes in worker threads, recorded at the end and every
CHECKPOINT_BYTES on the way.

What a cut connection leaves: the bytes that arrived are kept and recorded (the client resumes
from them), unless the append carried a checksum, which only the whole body can satisfy: then
they are discarded, as is every byte of an append that fails any other way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from app.storage.resumable import CHECKPOINT_BYTES, Append, ResumableUploads
from app.transfer.upload import ClientGone


async def append_body(
    core: ResumableUploads,
    append: Append,
    chunks: AsyncIterator[bytes],
    chunk_size: int,
    checksum: tuple[str, bytes] | None = None,
) -> None:
    """Append the body to the upload and record it (raises ClientGone after keeping what came)."""
    if checksum is not None:
        append.expect_checksum(checksum[0])
    buffer = bytearray()
    try:
        async for chunk in chunks:
            buffer += chunk
            if len(buffer) >= chunk_size:
                data, buffer = buffer, bytearray()
                await asyncio.to_thread(append.write, data)
                if checksum is None and append.size - append.recorded >= CHECKPOINT_BYTES:
                    await core.record(append)
    except ClientGone:
        if checksum is None:
            if buffer:
                await asyncio.to_thread(append.write, buffer)
            await core.record(append)
        raise
    if buffer:
        await asyncio.to_thread(append.write, buffer)
    if checksum is not None:
        append.verify(checksum[1])
    await core.record(append)
