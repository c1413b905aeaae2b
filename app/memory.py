"""Heap memory a worker has freed, given back to the kernel every few seconds.

`ferry serve` raises glibc's trim threshold (app/server.py `_keep_request_memory`): the buffers
of one request (a gathered upload chunk, a socket read) stay in the heap for the next instead of
being faulted in again each time. The price was memory kept after a burst for as long as the
worker lives: 64 KiB downloads on new connections (11,000 a second) left each worker 3.3 MiB
larger, of which malloc_trim gives back 1.3. `FreedMemory` calls malloc_trim(0) every `EVERY`
seconds from the event loop (tens of µs when there is nothing to give back, ~1 ms when there
is): a freed buffer serves the requests that follow within seconds and is returned after that.
Nothing happens where the C library has no malloc_trim (not glibc)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

EVERY = 10.0  # seconds between trims


def libc_function(name: str) -> Callable[..., int] | None:
    """glibc's `name` (mallopt, malloc_trim), or None under a C library without it."""
    try:
        found: Callable[..., int] = getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError):  # another C library: nothing to call
        return None
    return found


def _malloc_trim() -> Callable[[int], int] | None:
    return libc_function("malloc_trim")


class FreedMemory:
    """malloc_trim(0) every `every` seconds on the running loop, from `start` until `stop`."""

    def __init__(self, every: float = EVERY, trim: Callable[[int], int] | None = None) -> None:
        self.every = every
        self.trim = trim if trim is not None else _malloc_trim()
        self._next: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.trim is not None and self._next is None:
            self._next = asyncio.get_running_loop().call_later(self.every, self._run)

    def _run(self) -> None:
        assert self.trim is not None
        self.trim(0)
        self._next = asyncio.get_running_loop().call_later(self.every, self._run)

    def stop(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None
