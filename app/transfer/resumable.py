"""A request body appended to a resumable upload (app/storage/resumable.py on a local root,
app/storage/bucket_resumable.py on a bucket), whatever protocol carried it: streamed in CHUNK_SIZE
writes, recorded at the end and every CHECKPOINT_BYTES on the way (a bucket's core also records
each part it sends).

What a cut connection leaves: the bytes that arrived are kept and recorded (the client resumes
from them), unless the append carried a checksum, which only the whole body can satisfy: then
they are discarded, as is every byte of an append that fails any other way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from app.storage.resumable import CHECKPOINT_BYTES
from app.storage.upload_store import Resumable
from app.transfer.upload import ClientGone


class Appending(Protocol):
    """What an append needs of a core: write bytes at the upload's end, record them durably."""

    async def write(self, append: Any, data: bytes | bytearray) -> None: ...

    async def record(self, append: Any) -> Resumable: ...


async def append_body(
    core: Appending,
    append: Any,
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
            if not buffer and len(chunk) >= chunk_size:
                data: bytes | bytearray = chunk  # a whole chunk already (protocol.py gathers): no copy
            else:
                buffer += chunk
                if len(buffer) < chunk_size:
                    continue
                data, buffer = buffer, bytearray()
            await core.write(append, data)
            if checksum is None and append.size - append.recorded >= CHECKPOINT_BYTES:
                await core.record(append)
    except ClientGone:
        if checksum is None:
            if buffer:
                await core.write(append, buffer)
            await core.record(append)
        raise
    if buffer:
        await core.write(append, buffer)
    if checksum is not None:
        append.verify(checksum[1])
    await core.record(append)
