"""THE path gate: every URL path becomes a `SafePath` here, or is refused.

Two passes, both in this module and nowhere else:

1. lexical (pure): reject ``..``/``.``/empty segments, NUL and control characters, backslashes,
   and hidden names unless allowed;
2. physical: resolve symlinks and require the real location to stay under ROOT (unless
   FOLLOW_SYMLINKS), and hidden real names too; after ``open()``, check the opened file descriptor
   itself, so a component swapped for a symlink between the check and the open (TOCTOU) is caught.

Only this module constructs `SafePath`; code downstream accepts nothing else.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NewType

from app.errors import BadRequest, NotFound

SafePath = NewType("SafePath", Path)

_PROC_FD = Path("/proc/self/fd")


@dataclass(frozen=True, slots=True)
class PathPolicy:
    root: Path  # already resolved (realpath) once at start-up
    show_hidden: bool = False
    follow_symlinks: bool = False


def split_url_path(url_path: str, policy: PathPolicy) -> list[str]:
    """The segments of a decoded URL path below ROOT; refuses anything that is not a plain name."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in url_path):
        raise BadRequest("control characters are not allowed in paths")
    trimmed = url_path[:-1] if url_path.endswith("/") else url_path
    if not trimmed:
        return []
    segments = trimmed.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or "\\" in segment:
            raise NotFound()
        if segment.startswith(".") and not policy.show_hidden:
            raise NotFound()
    return segments


def _allowed(real: Path, policy: PathPolicy) -> bool:
    """Whether a fully resolved location may be served under the policy."""
    if not real.is_relative_to(policy.root):
        return policy.follow_symlinks
    # A symlink inside ROOT must not lead to a hidden name either.
    return policy.show_hidden or not any(p.startswith(".") for p in real.relative_to(policy.root).parts)


def resolve(url_path: str, policy: PathPolicy) -> SafePath:
    """Map a decoded URL path (relative to ROOT) to a path that is safe to open, or raise."""
    segments = split_url_path(url_path, policy)
    joined = policy.root.joinpath(*segments)
    if not _allowed(Path(os.path.realpath(joined)), policy):
        raise NotFound()
    return SafePath(joined)


def _fd_location(fd: int) -> Path | None:
    try:
        return Path(os.readlink(_PROC_FD / str(fd)))
    except OSError:
        return None  # no /proc: the realpath check in resolve() stands alone


def open_beneath(path: SafePath, policy: PathPolicy) -> tuple[int, os.stat_result]:
    """Open a gated path read-only and fstat it; the descriptor is checked to be under ROOT.

    Raises NotFound for anything missing, unreadable, or not a regular file or directory.
    """
    try:
        # O_NONBLOCK: opening a FIFO someone left in the tree must not hang the server.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError) as exc:
        raise NotFound() from exc
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG, errno.ENXIO):
            raise NotFound() from exc
        raise
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise NotFound()
        location = _fd_location(fd)
        if location is not None and not _allowed(location, policy):
            raise NotFound()
    except BaseException:
        os.close(fd)
        raise
    return fd, st
