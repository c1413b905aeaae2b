"""app/memory.py: heap memory a worker freed goes back to the kernel every few seconds (under the
trim threshold `ferry serve` raises, glibc alone would keep it), and the timer stops with the app."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from app.memory import FreedMemory, _malloc_trim

pytestmark = pytest.mark.anyio


async def test_trims_every_interval_until_stopped() -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    freed = FreedMemory(every=0.01, trim=trim)
    freed.start()
    freed.start()  # (started once)
    deadline = asyncio.get_running_loop().time() + 30
    while len(calls) < 3:
        assert asyncio.get_running_loop().time() < deadline, calls
        await asyncio.sleep(0.01)
    freed.stop()
    seen = len(calls)
    await asyncio.sleep(0.1)
    assert len(calls) == seen and set(calls) == {0}


async def test_without_malloc_trim_nothing_is_scheduled() -> None:
    freed = FreedMemory(every=0.01)
    freed.trim = None  # a C library without malloc_trim
    freed.start()
    assert freed._next is None
    freed.stop()


# A process with `ferry serve`'s thresholds frees 24 MiB of request-sized buffers (below the trim
# threshold, so glibc keeps them), then runs FreedMemory: its resident memory falls back.
_SCRIPT = textwrap.dedent(
    """
    import asyncio, os
    from app import server
    from app.memory import FreedMemory

    def resident():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    server._keep_request_memory(1024 * 1024)
    buffers = [bytearray(b"x" * (192 * 1024)) for _ in range(128)]  # 24 MiB from the heap
    keep = buffers[-1]  # the heap's top stays in use: only a trim gives the rest back
    del buffers
    freed = resident()

    async def main():
        trims = FreedMemory(every=0.05)
        trims.start()
        await asyncio.sleep(0.3)
        trims.stop()

    asyncio.run(main())
    print(freed, resident())
    """
)


@pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_freed_buffers_leave_the_resident_set() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    before, after = (int(n) for n in result.stdout.split())
    assert before - after > 16 * 1024 * 1024, (before, after)
