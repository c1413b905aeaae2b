"""Files kept open between requests for the same path (the fast path's kept answers,
app/routes/fast_files.py), as nginx's open_file_cache keeps them: a file asked for again costs
one lstat instead of an openat2, an fstat and a close.

A kept descriptor is used only while the path names the very inode opened, unchanged since: its
device, inode, size, modification and change times, mode, links and owners, read with lstat (the
last component not followed). A write, a truncate, a chmod or chown, a new link and a rename of
the file each change one of them; a file replaced under its name is another inode; a name gone
fails the lstat. Any of these forgets the descriptor, and the caller opens the path again through
`open_beneath` (app/storage/paths.py), with every check it makes. What a kept descriptor can
still be asked for: the same unchanged inode reached by another route since (a directory of its
path swapped for a symlink to where the directory was moved), which is the file ROOT held when
it was opened beneath it: nothing that was not servable becomes servable.

The answers of a loop turn share a descriptor: one forgotten is closed at the end of the turn,
after the turn's answers are written (app/transfer/front.py `Outbox`; a later callback of the
same turn), and an answer that outlives its turn (a stream) sends from a dup of its own. At
most `LIMIT` are kept (the oldest forgotten first), and one not asked for during `IDLE` seconds
is closed: a deleted file's space is not held for long.
"""

from __future__ import annotations

import asyncio
import os

LIMIT = 64
IDLE = 10.0


class KeptFiles:
    """One worker's kept descriptors, by path (`os.fsencode` of the `SafePath` opened)."""

    def __init__(self, *, limit: int = LIMIT, idle: float = IDLE) -> None:
        self.limit, self.idle = limit, idle
        self._files: dict[bytes, tuple[int, tuple[int, ...]]] = {}  # fd, signature
        self._asked: set[bytes] = set()  # since the last sweep
        self._sweep: asyncio.TimerHandle | None = None

    def get(self, raw: bytes) -> tuple[int, os.stat_result] | None:
        """The descriptor kept for `raw` and the path's lstat, if it still names that unchanged
        file (the descriptor stays this object's: never closed by the caller); else None."""
        kept = self._files.get(raw)
        if kept is None:
            return None
        try:
            now = os.stat(raw, follow_symlinks=False)
        except OSError:
            now = None
        if now is None or _signature(now) != kept[1]:
            self._forget(raw)
            return None
        self._asked.add(raw)
        return kept[0], now

    def keep(self, raw: bytes, fd: int, st: os.stat_result) -> None:
        """Keep `fd`, a regular file `open_beneath` just opened for `raw` (`st` its fstat): it is
        this object's from now on."""
        self._forget(raw)
        if len(self._files) >= self.limit:
            self._forget(next(iter(self._files)))
        self._files[raw] = (fd, _signature(st))
        self._asked.add(raw)
        if self._sweep is None:
            try:
                self._sweep = asyncio.get_running_loop().call_later(self.idle, self._swept)
            except RuntimeError:  # no loop to sweep with: kept until forgotten or closed
                pass

    def __len__(self) -> int:
        return len(self._files)

    def close(self) -> None:
        """Close every descriptor kept (the app's end)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        files, self._files = self._files, {}
        for fd, _ in files.values():
            os.close(fd)

    def _forget(self, raw: bytes) -> None:
        kept = self._files.pop(raw, None)
        if kept is None:
            return
        try:
            asyncio.get_running_loop().call_soon(os.close, kept[0])  # after the turn's answers
        except RuntimeError:  # no loop: nothing of this turn is left to send
            os.close(kept[0])

    def _swept(self) -> None:
        self._sweep = None
        for raw in [raw for raw in self._files if raw not in self._asked]:
            self._forget(raw)
        self._asked.clear()
        if self._files:
            self._sweep = asyncio.get_running_loop().call_later(self.idle, self._swept)


def _signature(st: os.stat_result) -> tuple[int, ...]:
    """What changes when the file is written, truncated, chmod'ed, chown'ed, linked or renamed
    (the change time, on a clock whose grain is coarse, with each other field that can)."""
    return (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
    )
