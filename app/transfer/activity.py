"""Whether any Ferry process sharing the index is moving file bytes: the transfer layer marks
each transfer, and the background digest worker (app/storage/hasher.py) yields while one is in
flight, so hashing never competes with a download or upload for the disk."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Activity:
    """Whether any Ferry process sharing this index has been moving file bytes lately.

    Every process holds a shared flock on `<index>.busy` while it has a transfer in flight and for
    `linger` seconds after its last one ended (small downloads end between requests, so without
    it a stream of them would look idle most of the time); the digest worker probes with a
    non-blocking exclusive lock on its own descriptor. `begin` and `end` run on the event loop;
    only taking the lock after an idle spell and releasing it cost a system call.
    """

    def __init__(self, path: Path, *, linger: float = 1.0) -> None:
        self.path = path
        self.linger = linger
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._probe_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._active = 0
        self._held = False
        self._last_end = 0.0
        self._release: asyncio.TimerHandle | None = None

    @contextmanager
    def transfer(self) -> Iterator[None]:
        """Marks one transfer for as long as the block runs (the downloads and uploads of
        app/transfer mark their own bytes)."""
        self.begin()
        try:
            yield
        finally:
            self.end()

    def begin(self) -> None:
        self._active += 1
        if not self._held:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                self._held = True
            except BlockingIOError:
                pass  # a probe holds it this instant: the hasher does one more read, no harm

    def end(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._last_end = time.monotonic()
            if self._release is None:
                self._release = asyncio.get_running_loop().call_later(self.linger, self._maybe_release)

    def mark(self) -> None:
        """A transfer begun and ended at once (a small answer written whole): `begin` then
        `end`, in one call."""
        if self._active:
            return  # (a transfer in flight: marked already, and its end is what counts)
        if not self._held:
            self.begin()
            self.end()
            return
        self._last_end = time.monotonic()
        if self._release is None:
            self._release = asyncio.get_running_loop().call_later(self.linger, self._maybe_release)

    def _maybe_release(self) -> None:
        self._release = None
        if self._active:
            return  # a transfer is in flight: `end` schedules the release again
        quiet = time.monotonic() - self._last_end
        if quiet < self.linger:
            self._release = asyncio.get_running_loop().call_later(self.linger - quiet, self._maybe_release)
        elif self._held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._held = False

    def busy(self) -> bool:
        try:
            fcntl.flock(self._probe_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._probe_fd, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        for fd in (self._fd, self._probe_fd):
            os.close(fd)
