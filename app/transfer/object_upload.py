"""Request bodies into an object store (app/routes/bucket_writes.py): verified on their way,
spooled to the local disk when they must arrive whole first (a form), and never abandoned half
way, so a multipart upload is completed or aborted, never left pending in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.types import Message, Receive

from app.errors import BadRequest
from app.http.digests import ALGORITHMS
from app.storage.backend import Stat
from app.storage.writes import AtomicWrite
from app.transfer.upload import ClientGone

ABORT_PATIENCE = 30.0  # seconds a cancelled upload waits for the store to abort it


async def checked(chunks: AsyncIterator[bytes], expected: dict[str, bytes]) -> AsyncIterator[bytes]:
    """The body unchanged, verified at its end against the declared digests other than SHA-256
    (the storage verifies that one): a mismatch raises before the upload completes, so the store
    aborts it and nothing is stored."""
    hashes = {a: hashlib.new(ALGORITHMS[a]) for a in expected if a != "sha-256"}
    async for chunk in chunks:
        for h in hashes.values():
            h.update(chunk)
        yield chunk
    for algorithm, h in hashes.items():
        if not hmac.compare_digest(h.digest(), expected[algorithm]):
            raise BadRequest(f"the body does not match its {algorithm} digest; nothing was stored")


def spool_file(directory: Path) -> int:
    """An anonymous temporary file in `directory`: gone with its descriptor, even after a crash."""
    fd, name = tempfile.mkstemp(prefix=".ferry-spool-", dir=directory)
    os.unlink(name)
    return fd


async def spooled(write: AtomicWrite, chunk_size: int, stop: asyncio.Event) -> AsyncIterator[bytes]:
    """A spooled form part read back in chunks (each read in a worker thread), until `stop`."""
    offset = 0
    while offset < write.size:
        if stop.is_set():
            raise ClientGone()
        data = await asyncio.to_thread(os.pread, write.fd, min(chunk_size, write.size - offset), offset)
        if not data:
            raise OSError("the spooled upload is shorter than what was written")
        offset += len(data)
        yield data


class Stoppable:
    """A request's `receive` that answers a disconnect once stopped, even while it waits for the
    client: the body then fails as if the client had left."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self._stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def stop(self) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)

    async def __call__(self) -> Message:
        if self._stopped.done():
            return {"type": "http.disconnect"}
        message: asyncio.Future[Message] = asyncio.ensure_future(self.receive())
        waits: set[asyncio.Future[Any]] = {message, self._stopped}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if message.done():
            return message.result()
        message.cancel()
        return {"type": "http.disconnect"}


async def to_the_end(write: Awaitable[Stat], stop: Callable[[], None]) -> Stat:
    """`write`, which stops only once the store has its answer. Cancelled (a shutdown past
    FERRY_SHUTDOWN_TIMEOUT), it is not abandoned, which would leave its multipart upload pending in
    the store: `stop` makes its body fail, the store aborts the upload, then the cancel goes on."""
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, ABORT_PATIENCE)
        raise
