"""The local file system under ROOT as Ferry's storage (the `Storage` protocol of backend.py).

Nothing here decides what is safe or how a file is stored: names pass the path gate (paths.py:
the lexical rules of `split_key`, so a path is refused exactly as the object store refuses a key,
then `resolve_to_open`/`open_beneath`/`stat_beneath`/`open_write_target`), writes are an
`AtomicWrite` renamed into place and deletes writes.delete (writes.py), and listings and walks keep
what the scanner keeps (scanner.servable_stat: hidden names and symlinks per policy, never an
upload in progress). Every blocking call runs in a worker thread.

A local file's ETag is the one downloads send today (app/http/conditional.py make_validators over
dev, ino, size, mtime), given by whoever makes the storage (storage knows nothing of HTTP: the
layers of tests/architecture.py); its `version` is that identity. A range is read with pread from
the descriptor opened for it, in chunks of `chunk_size`: an atomic replace makes a new inode, so a
download in progress keeps the bytes it started with; a file changed in place under it (size or
mtime moved) ends it with Changed.

Unlike the object store, the local storage keeps no digest beside a file (`Stat.sha256` and `crc32` are
None from `stat`; the index's digest store holds local digests) and ignores `content_type` (the name's
extension decides it, as today).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TypeVar

from app.storage.backend import ByteStream, Stat, StatPage
from app.storage.errors import Changed, InvalidInput, NameTooLong, NotServable, StorageError, write_refusal
from app.storage.paths import (
    PathPolicy,
    open_beneath,
    open_write_target,
    resolve_to_open,
    split_key,
    stat_beneath,
)
from app.storage.scanner import servable_stat
from app.storage.writes import AtomicWrite, current, delete, too_long

T = TypeVar("T")
ETag = Callable[[os.stat_result], str]  # a local file's ETag from its stat


async def _blocking(call: Callable[..., T], *args: object, **kwargs: object) -> T:
    """A blocking step of a write in a worker thread, a write the file system refused as storage's
    error (reads need none: the gate answers a refused open as NotServable)."""
    try:
        return await asyncio.to_thread(call, *args, **kwargs)
    except OSError as exc:
        refusal = write_refusal(exc)
        if refusal is None:
            raise
        raise refusal from exc


class LocalStorage:
    def __init__(
        self, policy: PathPolicy, *, etag: ETag, chunk_size: int = 1024**2, fsync: bool = False
    ) -> None:
        self.policy = policy
        self.etag = etag
        self.chunk_size = chunk_size
        self.fsync = fsync

    def path(self, path: str) -> str:
        """The canonical path, refused as the gate refuses it (and '.' segments, as a key's)."""
        return "/".join(split_key(path, show_hidden=self.policy.show_hidden))

    def to_stat(
        self, path: str, st: os.stat_result, sha256: bytes | None = None, crc32: int | None = None
    ) -> Stat:
        is_dir = stat.S_ISDIR(st.st_mode)
        version = f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"
        size, etag = (0, None) if is_dir else (st.st_size, self.etag(st))
        return Stat(path, is_dir, size, st.st_mtime_ns, etag, version, sha256, crc32)

    def _condition(
        self, if_match: str | None, if_none_match: bool
    ) -> Callable[[os.stat_result | None], None]:
        """The check a write or delete makes (under the directory lock) on what is there now."""

        def check(st: os.stat_result | None) -> None:
            if if_none_match and st is not None:
                raise Changed()
            if if_match is not None and (st is None or self.etag(st) != if_match):
                raise Changed()

        return check

    # --- reads -----------------------------------------------------------------------------------

    async def stat(self, path: str) -> Stat:
        clean = self.path(path)
        st = await asyncio.to_thread(stat_beneath, resolve_to_open(clean, self.policy), self.policy)
        return self.to_stat(clean, st)

    async def open_range(self, path: str, start: int, end: int, *, if_match: str | None = None) -> ByteStream:
        safe = resolve_to_open(self.path(path), self.policy)
        fd, st = await asyncio.to_thread(open_beneath, safe, self.policy)
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            raise NotServable()
        if if_match is not None and self.etag(st) != if_match:
            os.close(fd)
            raise Changed()
        return _Reads(fd, st, start, end, self.chunk_size)

    def _children(self, folder: str) -> list[tuple[Stat, bool]]:
        """A folder's servable children, by name, and whether each is a real folder to descend
        into (a symlinked folder is listed, not walked: no loops), as the scanner reads it."""
        fd, st = open_beneath(resolve_to_open(folder, self.policy), self.policy)
        try:
            if not stat.S_ISDIR(st.st_mode):
                raise NotServable()
            found = []
            with os.scandir(fd) as entries:
                for d in entries:
                    child = servable_stat(fd, d, self.policy)
                    if child is None or not (stat.S_ISDIR(child.st_mode) or stat.S_ISREG(child.st_mode)):
                        continue
                    path = f"{folder}/{d.name}" if folder else d.name
                    found.append(
                        (self.to_stat(path, child), stat.S_ISDIR(child.st_mode) and not d.is_symlink())
                    )
        finally:
            os.close(fd)
        return sorted(found, key=lambda pair: pair[0].name)

    async def list_page(self, folder: str, *, cursor: str | None = None, limit: int = 1000) -> StatPage:
        children = await asyncio.to_thread(self._children, self.path(folder))
        entries = [s for s, _ in children if cursor is None or s.name > cursor]
        page = entries[:limit]
        return StatPage(page, page[-1].name if len(entries) > limit else None)

    async def walk(self, top: str = "") -> AsyncIterator[Stat]:
        """Each folder before its children; a folder that vanished or cannot be read is passed
        over, as the scanner passes it over (a missing `top` yields nothing)."""
        stack = [self.path(top)]
        while stack:
            try:
                children = await asyncio.to_thread(self._children, stack.pop())
            except (OSError, StorageError):
                continue
            for child, descend in children:
                yield child
                if descend:
                    stack.append(child.path)

    # --- writes ----------------------------------------------------------------------------------

    async def write(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        sha256: bytes | None = None,
        crc32: int | None = None,
        content_type: str | None = None,
    ) -> Stat:
        clean = self.path(path)
        if not clean:
            raise NotServable()
        reason = too_long(self.policy.root, clean)
        if reason is not None:
            raise NameTooLong(reason)
        check = self._condition(if_match, if_none_match)
        target = await _blocking(open_write_target, clean, self.policy, create_parents=True)
        try:
            check(await _blocking(current, target))  # before the body: a refusal costs no upload
            upload = AtomicWrite(target, self.fsync)
            try:
                await _blocking(upload.open)
                async for chunk in chunks:
                    await _blocking(_put, upload, chunk)
                digest, crc = upload.builder.whole.digest(), upload.builder.crc32
                if (sha256 is not None and digest != sha256) or (crc32 is not None and crc != crc32):
                    raise InvalidInput("the body does not match its digest")
                _, st = await _blocking(upload.commit, check)
            except BaseException:
                await asyncio.to_thread(upload.abort)
                raise
        finally:
            target.close()
        return self.to_stat(clean, st, digest, crc)

    async def delete(self, path: str, *, if_match: str | None = None) -> None:
        clean = self.path(path)
        if not clean:
            raise NotServable()
        condition = self._condition(if_match, False)

        def check(st: os.stat_result | None) -> None:
            if st is None or stat.S_ISDIR(st.st_mode):
                raise NotServable()  # a file is deleted here, never a folder
            condition(st)

        target = await _blocking(open_write_target, clean, self.policy, create_parents=False)
        try:
            await _blocking(delete, target, check)
        finally:
            target.close()

    async def aclose(self) -> None:
        """Nothing to release: every descriptor belongs to one call or one stream."""


def _put(upload: AtomicWrite, chunk: bytes) -> None:
    upload.hash(chunk)
    upload.write(chunk)


class _Reads:
    """A range read with pread from an open descriptor, `chunk` bytes at a time (closed when
    exhausted or on `aclose`)."""

    def __init__(self, fd: int, st: os.stat_result, start: int, end: int, chunk: int) -> None:
        self._fd, self._st, self._next, self._end, self._chunk = fd, st, start, end, chunk
        self._pending: asyncio.Future[bytes] | None = None  # the read a worker thread is making

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    def _read(self, size: int) -> bytes:
        data = os.pread(self._fd, size, self._next)
        now = os.fstat(self._fd)
        if len(data) != size or (now.st_size, now.st_mtime_ns) != (self._st.st_size, self._st.st_mtime_ns):
            raise Changed("the file changed while it was read")
        return data

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            while self._next < self._end and self._fd >= 0:
                size = min(self._chunk, self._end - self._next)
                self._pending = asyncio.ensure_future(asyncio.to_thread(self._read, size))
                data = await asyncio.shield(self._pending)
                self._pending = None
                self._next += len(data)
                yield data
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the descriptor, once no worker thread reads it any more (a read still running
        when the reader went away closes it when it ends)."""
        fd, self._fd, pending, self._pending = self._fd, -1, self._pending, None
        if fd < 0:
            return
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda done: _close(fd, done))
        else:
            _close(fd, pending)


def _close(fd: int, read: asyncio.Future[bytes] | None) -> None:
    if read is not None and not read.cancelled():
        read.exception()  # retrieved: an abandoned read's failure is nobody's to report
    with contextlib.suppress(OSError):
        os.close(fd)
