"""Watching ROOT for changes made by other programs (the index keeper's, watch.py): inotify on
every directory, asked only for what changes the index. Linux; elsewhere watch.py uses
watchfiles.

Why not watchfiles here: it asks inotify for IN_OPEN and IN_MODIFY too, so every file Ferry opens
to serve it (every download, every archive member) and every chunk an upload writes queued an
event in the kernel and woke the watcher's thread, on the same two cores that serve. A file's
new bytes are announced by IN_CLOSE_WRITE when its writer closes it (a writer that never closes
is caught by the periodic rescan, as is anything else inotify misses: a full queue, the watch
limit), so neither is asked for.

`changes(root, stop)` yields sets of changed absolute paths, grouped as watchfiles groups them: a
batch is handed on once no change came for `step` seconds, or `debounce` seconds after its first.
Every directory below ROOT is watched before the first batch is awaited (one walk, on the caller's
thread), so what changes after `changes` first runs is reported. A directory created or moved in
is watched with everything below it and reported itself, so its files made before their watch
existed are found by the keeper's rescan of it. A full event queue raises `Overflow`, and ROOT
itself going away `RootGone`: the keeper then starts again (once ROOT is back), rescanning first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import AsyncIterator

logger = logging.getLogger("ferry.index")

IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

# What the index needs to hear of: names made, removed or moved, bytes written and closed, and
# attributes (a touch, a chmod). Not IN_OPEN, IN_ACCESS or IN_MODIFY (see the module's docstring).
MASK = (
    IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class Overflow(Exception):
    """The kernel's event queue filled up: changes were lost, so watching starts again."""


class RootGone(Exception):
    """ROOT itself was removed, moved or unmounted: its watches are gone, so watching starts
    again (the keeper waits for ROOT to be back, then rescans)."""


def _libc() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return lib


_LIBC = _libc()


def available() -> bool:
    return _LIBC is not None


class Watches:
    """One inotify instance and the directory each of its watches is on."""

    def __init__(self, root: str) -> None:
        assert _LIBC is not None
        fd = _LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self.fd = fd
        self.paths: dict[int, str] = {}  # watch descriptor -> directory (absolute)
        self.root = root
        self.root_wd = -1  # ROOT's own watch
        self._full = False  # the watch limit was met (told once)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def add_tree(self, top: str) -> None:
        """Watch `top` and every directory below it (symlinks not followed)."""
        pending = [top]
        while pending:
            directory = pending.pop()
            if not self._add(directory):
                continue
            with contextlib.suppress(OSError):
                with os.scandir(directory) as entries:
                    for entry in entries:
                        with contextlib.suppress(OSError):
                            if entry.is_dir(follow_symlinks=False):
                                pending.append(entry.path)

    def _add(self, directory: str) -> bool:
        assert _LIBC is not None
        wd = _LIBC.inotify_add_watch(self.fd, os.fsencode(directory), MASK)
        if wd >= 0:
            self.paths[wd] = directory
            if directory == self.root:
                self.root_wd = wd
            return True
        code = ctypes.get_errno()
        if code == errno.ENOSPC and not self._full:
            self._full = True
            logger.warning(
                "inotify's watch limit is reached (fs.inotify.max_user_watches): directories past "
                "it are kept current by the periodic rescan only"
            )
        return False  # gone, not a directory, not readable, or over the limit: the rescan covers it

    def drop_tree(self, top: str) -> None:
        """Stop watching `top` and what was below it (moved away: its watches' paths are stale)."""
        assert _LIBC is not None
        prefix = top + "/"
        for wd, path in list(self.paths.items()):
            if path == top or path.startswith(prefix):
                _LIBC.inotify_rm_watch(self.fd, wd)
                del self.paths[wd]

    def read(self) -> set[str]:
        """The paths the queued events name (empty when none are queued)."""
        changed: set[str] = set()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return changed
            if not data:
                return changed
            self._parse(data, changed)

    def _parse(self, data: bytes, changed: set[str]) -> None:
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                raise Overflow("inotify's event queue overflowed")
            if wd == self.root_wd and mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED):
                raise RootGone("ROOT was removed, moved or unmounted")
            directory = self.paths.get(wd)
            if directory is None:
                continue
            if mask & IN_IGNORED:
                self.paths.pop(wd, None)  # its directory is gone (or was unwatched)
                continue
            if not raw:  # about the watched directory itself (deleted, moved away)
                changed.add(directory)
                continue
            path = f"{directory}/{os.fsdecode(raw)}"
            changed.add(path)
            if mask & IN_ISDIR:
                if mask & IN_MOVED_FROM:
                    self.drop_tree(path)
                elif mask & (IN_CREATE | IN_MOVED_TO):
                    self.add_tree(path)


async def changes(
    root: str, stop: asyncio.Event, *, debounce: float = 0.3, step: float = 0.05
) -> AsyncIterator[set[str]]:
    """The changed paths below `root` in batches, until `stop` is set (see the module's docstring)."""
    loop = asyncio.get_running_loop()
    watches = Watches(root)
    arrived = asyncio.Event()
    pending: set[str] = set()
    failure: list[BaseException] = []

    def readable() -> None:
        try:
            pending.update(watches.read())
        except Exception as exc:  # Overflow, or the descriptor failed: the consumer hears of it
            failure.append(exc)
            loop.remove_reader(watches.fd)
        arrived.set()

    try:
        watches.add_tree(root)
        loop.add_reader(watches.fd, readable)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                waiting = asyncio.ensure_future(arrived.wait())
                await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if stop.is_set():
                    return
                first = loop.time()
                while not failure:  # more may follow: wait for a quiet `step`, at most `debounce`
                    arrived.clear()
                    left = debounce - (loop.time() - first)
                    if left <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(arrived.wait(), timeout=min(step, left))
                        continue
                    break
                arrived.clear()
                if failure:
                    raise failure[0]
                if pending:
                    batch = set(pending)
                    pending.clear()
                    yield batch
        finally:
            stopping.cancel()
            with contextlib.suppress(Exception):
                loop.remove_reader(watches.fd)
    finally:
        watches.close()
