"""The index as a request path uses it: reads in a thread pool, writes through one writer thread.

Every `Index` call blocks: a read may wait for one of the index's pooled connections, a write for
the database's write lock, which another process (the watcher of another worker, a backup, a
`sqlite3` shell) may hold for as long as it likes. So code running on the event loop never calls
`Index` itself; it awaits this facade:

- `read`: the call runs on one of a few reader threads of its own (so index reads queue neither
  behind nor in front of the file I/O on the loop's default thread pool); the loop goes on serving
  meanwhile.
- `write`: the call is queued for the one writer thread, which runs writes one after another. A
  write-locked database stalls that thread and the requests awaiting it, nothing else, and
  request writes hold at most one of the index's connections while they wait, so reads keep the
  others. A write once queued always runs: cancelling the task awaiting it does not drop it.
- `enqueue`: a write nobody waits for, such as the cleanup at the end of an upload. It is queued
  before `enqueue` returns, so a cancellation (a client gone, shutdown) cannot skip it.
- `call`: `write` for blocking code already on a worker thread (never on the loop).
- `refresh` / `refreshed`: bring a directory that changed on disk up to date before it is listed.
  The staleness check is a read; the rescan is a write, queued for the writer thread (one per
  directory at a time), and the listing waits for it at most `REFRESH_PATIENCE` seconds: with the
  database write-locked it answers from what the index knows, and the rescan lands once the lock
  is released.

The writer thread starts with the first write and ends after a quiet spell; `close` lets it run
what is queued (for a bounded time) at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, ParamSpec, TypeVar

from app.storage.index import Index

logger = logging.getLogger("ferry.index")
_P = ParamSpec("_P")
_T = TypeVar("_T")
_READ_THREADS = 4  # as many as the index has connections: more would only wait for one
REFRESH_PATIENCE = 2.0  # seconds a listing waits for the rescan of its changed directory
_IDLE_SECONDS = 30.0  # a writer thread with nothing to do for this long ends (the next write starts one)


class _Job:
    """One queued write; `done` is None for a write nobody awaits."""

    def __init__(self, run: Callable[[], object], done: Future[Any] | None) -> None:
        self.run = run
        self.done = done

    def __call__(self) -> None:
        try:
            result = self.run()
        except BaseException as exc:
            if self.done is None:
                logger.exception("an index write failed")
            else:
                self.done.set_exception(exc)
            return
        if self.done is not None:
            self.done.set_result(result)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class AsyncIndex:
    """Awaitable access to one `Index` for code on the event loop."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._rescans: dict[str, Future[None]] = {}  # queued rescans of changed directories, by path
        # Its threads start with the first reads and end when this object is collected.
        self._readers = ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="ferry-index-read")

    async def read(self, func: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """`func(*args, **kwargs)` (an index read) on a reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, partial(func, *args, **kwargs))

    async def write(self, func: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """`func(*args, **kwargs)` (index writes) on the writer thread, after the writes queued
        before it; it runs even if the awaiting task is cancelled."""
        done: Future[_T] = Future()
        self._submit(_Job(lambda: func(*args, **kwargs), done))
        result = asyncio.wrap_future(done)
        result.add_done_callback(_retrieved)  # a failure after its caller was cancelled: not logged as lost
        return await asyncio.shield(result)

    def enqueue(self, func: Callable[_P, object], /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        """Queue `func(*args, **kwargs)` for the writer thread and return at once; a failure is
        logged."""
        self._submit(_Job(lambda: func(*args, **kwargs), None))

    def call(self, func: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """`write` for a worker thread: blocks it (never the loop) until the write has run."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("AsyncIndex.call blocks: await write() on the event loop")
        done: Future[_T] = Future()
        self._submit(_Job(lambda: func(*args, **kwargs), done))
        return done.result()

    def refresh(self, directory: str, patience: float = REFRESH_PATIENCE) -> None:
        """For a worker thread: rescan `directory` through the writer if it changed on disk,
        waiting at most `patience` seconds for the rescan (it lands later if the wait ends)."""
        if self.index.changed(directory):
            with contextlib.suppress(TimeoutError):
                self._rescan(directory).result(patience)

    async def refreshed(self, directory: str, patience: float = REFRESH_PATIENCE) -> None:
        """`refresh` for the event loop."""
        if await self.read(self.index.changed, directory):
            rescan = asyncio.wrap_future(self._rescan(directory))
            rescan.add_done_callback(_retrieved)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(rescan), patience)

    def _rescan(self, directory: str) -> Future[None]:
        """The queued rescan of a directory; listings of it meanwhile share the one queued."""
        with self._lock:
            queued = self._rescans.get(directory)
            if queued is not None:
                return queued
            done: Future[None] = Future()
            self._rescans[directory] = done
        done.add_done_callback(lambda _: self._rescanned(directory, done))
        self._submit(_Job(lambda: self.index.refresh_if_changed(directory), done))
        return done

    def _rescanned(self, directory: str, done: Future[None]) -> None:
        with self._lock:
            if self._rescans.get(directory) is done:
                del self._rescans[directory]

    def close(self, timeout: float = 10.0) -> None:
        """Let the writer thread run what is queued, then end it (waiting at most `timeout`)."""
        with self._lock:
            writer = self._writer
            if writer is None:
                return
            self._jobs.put(None)
        writer.join(timeout)
        if writer.is_alive():
            logger.warning("index writes still queued at shutdown after %.0f s; leaving them", timeout)

    def _submit(self, job: _Job) -> None:
        with self._lock:
            self._jobs.put(job)
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="ferry-index-writer", daemon=True)
                self._writer.start()

    def _run(self) -> None:
        ending = False  # closing, or quiet for a while: end once nothing is queued
        while True:
            try:
                job = self._jobs.get_nowait() if ending else self._jobs.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                job = None
            if job is not None:
                job()
                continue
            ending = True
            with self._lock:
                if self._jobs.empty():
                    self._writer = None  # the next write starts another thread
                    return
