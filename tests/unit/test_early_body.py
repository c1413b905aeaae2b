"""app/transfer/upload.py `EarlyBody`: the body's first read starts when it is made (uvicorn then
answers Expect: 100-continue at once), hands that message first, then reads on; cancelled, the
pending read is given up."""

from __future__ import annotations

import asyncio
from typing import Any

from app.transfer.upload import EarlyBody


def test_the_first_read_starts_at_once_and_is_handed_first() -> None:
    async def run() -> None:
        reads: list[int] = []
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def receive() -> dict[str, Any]:
            reads.append(len(reads))
            return await queue.get()

        body = EarlyBody(receive)
        await asyncio.sleep(0)
        assert reads == [0]  # asked for before anyone awaits the body
        for part in (b"one", b"two"):
            queue.put_nowait({"type": "http.request", "body": part, "more_body": True})
        assert (await body.receive())["body"] == b"one"
        assert (await body.receive())["body"] == b"two"
        assert reads == [0, 1]

    asyncio.run(run())


def test_cancelled_before_it_is_read_the_pending_read_is_given_up() -> None:
    async def run() -> None:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def receive() -> dict[str, Any]:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("unreachable")

        body = EarlyBody(receive)
        await started.wait()
        body.cancel()
        await asyncio.wait_for(cancelled.wait(), 5)
        body.cancel()  # twice is harmless

    asyncio.run(run())
