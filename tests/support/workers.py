"""What parallel test processes (`pytest -n`, pytest-xdist) share, and how they take turns at it.

Each worker is a session of its own: a session fixture (the `weed mini` engine, ~1 GB RSS) starts
once per worker, and pytest gives each worker its own temporary directories. What lives outside
them (an npm install into the checkout's .cache/, for one) is done by one process at a time:
`exclusive`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

# An npm install of a few packages takes seconds; a loaded machine may make it minutes.
LOCK_DEADLINE = 600.0


@contextmanager
def exclusive(place: Path) -> Iterator[None]:
    """The block run by one process at a time for `place` (a directory, created if missing): the
    others wait at the lock file beside it, then find whatever the first one left there."""
    place.mkdir(parents=True, exist_ok=True)
    with FileLock(str(place.with_name(place.name + ".lock")), timeout=LOCK_DEADLINE):
        yield
