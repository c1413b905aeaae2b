"""Time limits for the long runs (`make bench`, `make load`): they always stop by themselves."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class TimeLimitReached(SystemExit):
    """Raised by SIGALRM: a SystemExit, so that it unwinds an event loop too."""


@contextmanager
def bounded(seconds: int) -> Iterator[None]:
    """SIGALRM after `seconds`; SIGTERM and SIGHUP exit too; either way the stack unwinds, so
    every server a run started gets stopped."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise TimeLimitReached(f"the run passed its {seconds} s time limit")

    def on_terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {
        signal.SIGALRM: signal.signal(signal.SIGALRM, on_alarm),
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_terminate),
        signal.SIGHUP: signal.signal(signal.SIGHUP, on_terminate),
    }
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
