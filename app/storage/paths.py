"""THE path gate: every URL path becomes a `SafePath` here, or is refused.

Two passes, both in this module and nowhere else:

1. lexical (pure): drop ``.`` segments (``a/./b`` is ``a/b``, as RFC 3986 resolves it), then
   reject ``..`` and empty segments, NUL and control characters, backslashes, hidden names unless
   allowed, and the temporary files of uploads in progress;
2. physical: resolve symlinks and require the real location to stay under ROOT (unless
   FOLLOW_SYMLINKS), and hidden real names too. Nothing is opened before it is approved: the path
   is first pinned with ``O_PATH`` (which runs no driver code: a terminal, FIFO or device sees no
   open), the type (regular file or directory) and location are checked on that descriptor, and
   only then is it reopened through ``/proc/self/fd`` (the same inode, whatever the path now
   names) with ``O_NOCTTY``. A component swapped for a symlink between the checks (TOCTOU) is
   caught because the checks are made on the pinned descriptor itself. A path that named a
   regular file when it was last opened so is opened for reading at once, without symlinks, and
   served only if it is still that inode (`_open_known`).

Writes go through `open_write_target`: every directory on the way is opened by descriptor and
checked to lie under ROOT (never through a symlink out of ROOT, whatever FOLLOW_SYMLINKS says), and
the file is then created and renamed relative to that pinned directory descriptor.

Only this module constructs `SafePath` and `WriteTarget`; code downstream accepts nothing else.

Long because: path safety lives in this one module (both passes, for reads, the index's stats and
writes), so one file is all a review of it has to read.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NewType

from app.storage.errors import InvalidInput, NotServable, OutOfDescriptors

SafePath = NewType("SafePath", Path)

_PROC_FD = Path("/proc/self/fd")
_HAS_PROC = _PROC_FD.is_dir()  # Linux: an opened descriptor's real location can be read back
_O_PATH: int = getattr(os, "O_PATH", 0)
# Linux: a path can be pinned without being opened, then reopened through /proc once approved.
_CAN_PIN = bool(_O_PATH) and _HAS_PROC
# How an approved file is opened: never as a controlling terminal, never waiting on a FIFO.
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
# Uploads are written to "<TEMP_PREFIX><random>.part" beside their target, then renamed into place.
TEMP_PREFIX = ".ferry-upload-"


class _PlainPins:
    """Linux 5.6+ `openat2(RESOLVE_NO_SYMLINKS)`: pin a path only if no component of it is a
    symlink. Such a descriptor lies exactly at the path, which the lexical pass approved: its
    location needs no reading back through /proc. A path with a symlink on the way (ELOOP), or a
    kernel or sandbox without the call, takes the general route (`_checked`)."""

    _SYSCALL = 437  # openat2: one number on every architecture (the unified syscall table)
    _RESOLVE = 0x02 | 0x04  # RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS

    def __init__(self) -> None:
        self.syscall: Any = None
        if sys.platform == "linux" and _CAN_PIN:
            try:
                self.syscall = ctypes.CDLL(None, use_errno=True).syscall
            except (OSError, AttributeError):
                self.syscall = None
        # struct open_how {u64 flags; u64 mode; u64 resolve}: the same for every call (read-only).
        self.how = (ctypes.c_uint64 * 3)(_O_PATH | os.O_CLOEXEC, 0, self._RESOLVE)
        self.how_read = (ctypes.c_uint64 * 3)(_READ_FLAGS, 0, self._RESOLVE)
        self.size = ctypes.sizeof(self.how)

    def pin(self, path: bytes) -> int | None:
        """An O_PATH descriptor of `path` if no component of it is a symlink; None to take the
        general route; raises what `os.open` would for a missing or unreadable path."""
        return self._open(path, self.how)

    def reopen(self, path: bytes, pinned: os.stat_result) -> tuple[int, os.stat_result] | None:
        """`path` opened for reading, again with no symlink on the way, if it is still the inode
        pinned (else None): cheaper than reopening through /proc. Should the name have been
        swapped in between, the open is of something that passed the same lexical and
        no-symlink checks, non-blocking, never as a terminal, and refused unless it is the
        pinned inode."""
        fd = self._open(path, self.how_read)
        if fd is None:
            return None
        try:
            opened = os.fstat(fd)
            if os.path.samestat(opened, pinned):
                return fd, opened
        except OSError:
            pass
        os.close(fd)
        return None

    def _open(self, path: bytes, how: Any) -> int | None:
        if self.syscall is None:
            return None
        fd: int = self.syscall(self._SYSCALL, _AT_FDCWD, path, how, self.size)
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err in (errno.ELOOP, errno.EXDEV, errno.EAGAIN):
            return None
        if err in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG):
            self.syscall = None  # not here (an old kernel, a seccomp filter): never ask again
            return None
        raise OSError(err, os.strerror(err), os.fsdecode(path))


_AT_FDCWD = -100
_PLAIN = _PlainPins()


@dataclass(frozen=True, slots=True)
class PathPolicy:
    root: Path  # already resolved (realpath) once at start-up
    show_hidden: bool = False
    follow_symlinks: bool = False


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or c == "\x7f" for c in text)


def _plain_name(segment: str, policy: PathPolicy) -> bool:
    if segment in ("", ".", "..") or "\\" in segment or "/" in segment:
        return False
    if segment.startswith(TEMP_PREFIX):
        return False  # an upload in progress is never listed or served, hidden names shown or not
    return policy.show_hidden or not segment.startswith(".")


def normal_url_path(url_path: str) -> str:
    """A decoded URL path without its '.' segments: 'a/./b' is 'a/b', './a' is 'a', 'a/.' is 'a/'.

    A '.' names the directory it stands in (RFC 3986 §5.2.4; nginx and most servers resolve it),
    and real clients send it: Go escapes a first segment holding ':' as './colon:name', so rclone
    asks for '/files/dir/./colon:name'. Every reader of a request path (downloads, listings,
    writes, signed links, the API through `split_url_path`) uses this one form. '..' is kept, for
    `split_url_path` to refuse: climbing is never resolved, only refused.
    """
    if "." not in url_path:
        return url_path
    segments = url_path.split("/")
    if "." not in segments:
        return url_path
    kept = [segment for segment in segments if segment != "."]
    if segments[-1] == ".":
        kept.append("")  # 'a/.' names the directory 'a/' itself
    return "/".join(kept)


def split_url_path(url_path: str, policy: PathPolicy) -> list[str]:
    """The segments of a decoded URL path below ROOT ('.' segments dropped); refuses anything
    that is not a plain name."""
    if _has_control(url_path):
        raise InvalidInput("control characters are not allowed in paths")
    url_path = normal_url_path(url_path)
    trimmed = url_path[:-1] if url_path.endswith("/") else url_path
    if not trimmed:
        return []
    segments = trimmed.split("/")
    if not all(_plain_name(segment, policy) for segment in segments):
        raise NotServable()
    return segments


def split_key(key: str, *, show_hidden: bool) -> list[str]:
    """The segments of an object key or key prefix ('a/b' or 'a/b/'), by the names' lexical rules:
    in an object store "folders" are key prefixes, and a key is served only if the same name
    would be as a path. Unlike a request path a key is not normalised: 'a/./b' is another object
    than 'a/b', so a '.' segment is refused like '..' and an empty one."""
    if _has_control(key):
        raise InvalidInput("control characters are not allowed in keys")
    trimmed = key[:-1] if key.endswith("/") else key
    if not trimmed:
        return []
    segments = trimmed.split("/")
    policy = PathPolicy(root=Path("/"), show_hidden=show_hidden)  # the lexical rules use no root
    if not all(_plain_name(segment, policy) for segment in segments):
        raise NotServable()
    return segments


def servable_name(name: str, policy: PathPolicy) -> bool:
    """Whether a directory entry's name could be requested at all (what listings may show)."""
    if _has_control(name) or not _plain_name(name, policy):
        return False
    try:
        name.encode("utf-8")  # undecodable bytes (surrogate escapes) have no URL
    except UnicodeEncodeError:
        return False
    return True


def stat_child(dir_fd: int, name: str, policy: PathPolicy) -> os.stat_result | None:
    """The stat of what a symlink in an opened directory leads to, if the policy allows it: a
    regular file or directory whose pinned descriptor lies where the policy allows (nothing is
    opened, so a symlink to a terminal or device costs one O_PATH lookup and no side effect)."""
    if not servable_name(name, policy):
        return None
    if not _CAN_PIN:
        return _stat_child_unpinned(dir_fd, name, policy)
    try:
        fd = os.open(name, _O_PATH | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        location = _fd_location(fd)
        if not _servable_type(st) or location is None or not _allowed(location, policy):
            return None
        return st
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat_child_unpinned(dir_fd: int, name: str, policy: PathPolicy) -> os.stat_result | None:
    """`stat_child` where descriptors cannot be pinned: stat and realpath, and still no open."""
    try:
        st = os.stat(name, dir_fd=dir_fd)
        location = Path(os.path.realpath(os.path.join(_dir_path(dir_fd), name)))
    except OSError:
        return None
    return st if _servable_type(st) and _allowed(location, policy) else None


def _dir_path(dir_fd: int) -> str:
    location = _fd_location(dir_fd)
    if location is None:
        raise OSError(errno.ENOTSUP, "an opened directory's path cannot be read back here")
    return str(location)


def _servable_type(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)


def relative(path: SafePath, policy: PathPolicy) -> str:
    """The '/'-separated path of a gated path below ROOT ('' for ROOT itself)."""
    rel = path.relative_to(policy.root).as_posix()
    return "" if rel == "." else rel


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
    try:
        real = Path(os.path.realpath(joined))
    except OSError as exc:
        raise NotServable() from exc  # e.g. a component swapped between lstat and readlink
    if not _allowed(real, policy):
        raise NotServable()
    return SafePath(joined)


def resolve_to_open(url_path: str, policy: PathPolicy) -> SafePath:
    """`resolve` for a path that is about to go through `open_beneath`: where /proc lets
    `open_beneath` check the opened descriptor itself (the authoritative check), the realpath
    walk before it would only repeat that check, racily; so only the lexical pass runs here."""
    if not _HAS_PROC:
        return resolve(url_path, policy)
    return _lexical(url_path, policy)


@functools.lru_cache(maxsize=8192)
def _lexical(url_path: str, policy: PathPolicy) -> SafePath:
    """The lexical pass alone: a pure function of the name and the policy, so kept for the
    names asked often (a refused name raises, and is not kept)."""
    return SafePath(policy.root.joinpath(*split_url_path(url_path, policy)))


def _fd_location(fd: int) -> Path | None:
    try:
        return Path(os.readlink(_PROC_FD / str(fd)))
    except OSError:
        return None  # no /proc: the realpath check in resolve() stands alone


def open_beneath(path: SafePath, policy: PathPolicy) -> tuple[int, os.stat_result]:
    """Open a gated path read-only and fstat it; the descriptor is checked to be under ROOT.

    Raises NotServable for anything missing, unreadable, or not a regular file or directory; only a
    regular file or directory that passed the checks is ever opened.
    """
    raw = os.fsencode(path)
    known = _REGULAR.get(raw)
    if known is not None:
        opened = _open_known(raw, known)
        if opened is not None:
            return opened
    with _refusals():
        if not _CAN_PIN:
            return _open_unpinned(path, policy)
        pinned = _PLAIN.pin(raw)
        plain = pinned is not None
        if pinned is None:
            pinned = os.open(path, _O_PATH | os.O_CLOEXEC)
    try:
        if plain:  # at the path itself, no symlink on the way: only its type is left to check
            st = os.fstat(pinned)
            if not _servable_type(st):
                raise NotServable()
            if stat.S_ISREG(st.st_mode):
                with _refusals():
                    opened = _PLAIN.reopen(raw, st)
                if opened is not None:
                    if len(_REGULAR) >= _REGULARS:
                        _REGULAR.clear()
                    _REGULAR[raw] = opened[1]
                    return opened
        else:
            st = _checked(pinned, policy)
        with _refusals():
            return _reopen(pinned, st)
    finally:
        os.close(pinned)


# Paths last opened as a regular file by the plain route (no symlink on the way), and that file's
# stat: asked again, such a path is opened for reading at once (one openat2 and one fstat instead
# of a pin, its fstat, the open, its fstat and a close), and served only if it is still that very
# inode and a regular file. A name swapped since for a FIFO or device is opened (non-blocking,
# never as a terminal, no symlink followed: as `_PlainPins.reopen` may in its own window) and
# refused; anything else takes the pinned route again.
_REGULAR: dict[bytes, os.stat_result] = {}
_REGULARS = 8192


def _open_known(raw: bytes, known: os.stat_result) -> tuple[int, os.stat_result] | None:
    """`raw` opened if it still names the regular file `known`; None (and forgotten) otherwise."""
    try:
        opened = _PLAIN.reopen(raw, known)
    except OSError:
        opened = None
    if opened is not None and stat.S_ISREG(opened[1].st_mode):
        return opened
    if opened is not None:
        os.close(opened[0])
    _REGULAR.pop(raw, None)
    return None


def _checked(pinned: int, policy: PathPolicy) -> os.stat_result:
    """The stat of a pinned (O_PATH) descriptor, if it is a regular file or directory lying where
    the policy allows; NotServable otherwise."""
    st = os.fstat(pinned)
    location = _fd_location(pinned)
    if not _servable_type(st) or location is None or not _allowed(location, policy):
        raise NotServable()
    return st


class FolderOpener:
    """Opens many files below ROOT in turn (an archive's members), folder by folder: each folder
    through `open_beneath` (its own location checked, as any path's), then each file in it by its
    one plain name relative to that descriptor, never following a symlink, pinned and checked to
    be a regular file before it is opened. A symlink among them goes through `open_beneath` whole.
    The same answers as `open_beneath(resolve_to_open(path))` at a fifth of the cost per file
    (no /proc walk of each file's location, nor /proc reopen: the folder's descriptor holds it).
    Close it after."""

    def __init__(self, policy: PathPolicy) -> None:
        self.policy = policy
        self._folder: str | None = None
        self._fd = -1

    def open(self, path: str) -> tuple[int, os.stat_result]:
        """`path` ('/'-separated below ROOT) opened read-only with its stat; NotServable else."""
        parent, _, name = path.rpartition("/")
        if not _CAN_PIN or not name or len(split_url_path(name, self.policy)) != 1:
            return open_beneath(resolve_to_open(path, self.policy), self.policy)
        if parent != self._folder:
            self.close()
            fd, st = open_beneath(resolve_to_open(parent, self.policy), self.policy)
            if not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise NotServable()
            self._folder, self._fd = parent, fd
        with _refusals():
            pinned = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)
        try:
            st = os.fstat(pinned)
            if stat.S_ISLNK(st.st_mode):
                return open_beneath(resolve_to_open(path, self.policy), self.policy)
            if not stat.S_ISREG(st.st_mode):
                raise NotServable()
            with _refusals():
                return self._reopen(name, pinned, st)
        finally:
            os.close(pinned)

    def _reopen(self, name: str, pinned: int, st: os.stat_result) -> tuple[int, os.stat_result]:
        """The pinned regular file opened by its name beside it (no symlink followed, never
        blocking, never as a terminal), refused unless it is still the inode pinned; swapped in
        between, the /proc route opens the pinned inode itself. No /proc walk per member."""
        fd = os.open(name, _READ_FLAGS | os.O_NOFOLLOW, dir_fd=self._fd)
        try:
            opened = os.fstat(fd)
            if os.path.samestat(opened, st):
                return fd, opened
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return _reopen(pinned, st)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._folder, self._fd = None, -1


def stat_beneath(path: SafePath, policy: PathPolicy) -> os.stat_result:
    """The stat of a gated path, checked as `open_beneath` checks it (a regular file or directory
    whose pinned descriptor lies where the policy allows) but never opened: for the index, which
    needs a file's facts, not its bytes (a file it may not read is still listed).

    Raises NotServable for anything missing or refused.
    """
    with _refusals():
        if not _CAN_PIN:
            st = os.stat(path)
            if not _servable_type(st) or not _allowed(Path(os.path.realpath(path)), policy):
                raise NotServable()
            return st
        pinned = os.open(path, _O_PATH | os.O_CLOEXEC)
    try:
        return _checked(pinned, policy)
    finally:
        os.close(pinned)


@contextmanager
def _refusals() -> Iterator[None]:
    """What opening a gated path can fail with, as Ferry answers it."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError) as exc:
        raise NotServable() from exc
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG, errno.ENXIO):
            raise NotServable() from exc
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise OutOfDescriptors() from exc
        raise


def _reopen(pinned: int, st: os.stat_result) -> tuple[int, os.stat_result]:
    """Open the very inode a pinned descriptor holds (its /proc link is not a path that can be
    swapped); the result is checked to be that inode all the same. Its stat is taken now, as the
    file is when opened."""
    flags = _READ_FLAGS | (os.O_DIRECTORY if stat.S_ISDIR(st.st_mode) else 0)
    fd = os.open(f"/proc/self/fd/{pinned}", flags)
    try:
        opened = os.fstat(fd)
        if not os.path.samestat(opened, st):
            raise NotServable()
    except BaseException:
        os.close(fd)
        raise
    return fd, opened


def _open_unpinned(path: SafePath, policy: PathPolicy) -> tuple[int, os.stat_result]:
    """`open_beneath` where descriptors cannot be pinned: stat first, open only a regular file or
    directory (never as a controlling terminal), and refuse it unless it is the inode stat saw."""
    before = os.stat(path)
    if not _servable_type(before):
        raise NotServable()
    flags = _READ_FLAGS | (os.O_DIRECTORY if stat.S_ISDIR(before.st_mode) else 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        location = _fd_location(fd)
        if not os.path.samestat(st, before) or (location is not None and not _allowed(location, policy)):
            raise NotServable()
    except BaseException:
        os.close(fd)
        raise
    return fd, st


class LinkScope:
    """What a signed link grants below a folder, after resolution: the real folder its prefix (or,
    for a link to one folder's listing, that folder) leads to, and nothing a symlink inside it
    leads to elsewhere, even elsewhere in ROOT. Lexical coverage is the link's own check
    (app/http/signing.py); this is the physical one. One per request (it caches parent folders).
    """

    def __init__(self, real: Path, policy: PathPolicy) -> None:
        self.real = real
        self.policy = policy
        self._parents: dict[str, bool] = {}

    @classmethod
    def of(cls, folder: str, policy: PathPolicy) -> LinkScope:
        """The scope of a folder named as a URL path below ROOT ('/docs/', 'docs', '' for ROOT)."""
        safe = resolve(folder.strip("/"), policy)
        try:
            return cls(Path(os.path.realpath(safe)), policy)
        except OSError as exc:
            raise NotServable() from exc

    def holds_open(self, fd: int, path: SafePath) -> bool:
        """Whether an opened gated path (its descriptor's own location) lies in the scope."""
        location = _fd_location(fd)
        if location is None:
            location = Path(os.path.realpath(path))
        return location.is_relative_to(self.real)

    def holds(self, path: str) -> bool:
        """Whether an indexed entry ('/'-separated below ROOT) leads into the scope, now."""
        parent, _, name = path.rpartition("/")
        known = self._parents.get(parent)
        if known is None:
            real_parent = Path(os.path.realpath(os.path.join(self.policy.root, parent)))
            known = self._parents[parent] = real_parent.is_relative_to(self.real)
        if not known:
            return False
        entry = os.path.join(self.policy.root, path)
        try:
            if not stat.S_ISLNK(os.lstat(entry).st_mode):
                return True  # a real entry of a folder in the scope
        except OSError:
            return False
        return Path(os.path.realpath(entry)).is_relative_to(self.real)


@dataclass(slots=True)
class WriteTarget:
    """Where a write lands: an open descriptor of its (checked) directory and the entry's name.

    `created` lists the directories made on the way, '/'-separated below ROOT, outermost first.
    """

    dir_fd: int
    name: str
    path: str
    created: list[str]

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def _writable_location(fd: int, policy: PathPolicy) -> bool:
    location = _fd_location(fd)
    if location is None:
        return True  # no /proc: the per-component O_NOFOLLOW opens below already refused symlinks
    if not location.is_relative_to(policy.root):
        return False  # writes never follow a symlink out of ROOT
    return policy.show_hidden or not any(p.startswith(".") for p in location.relative_to(policy.root).parts)


def _open_dir(name: str, dir_fd: int | None, policy: PathPolicy) -> int:
    # O_DIRECTORY: the kernel refuses anything else before opening it (no device or FIFO is opened).
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOCTTY
    if not _HAS_PROC:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise NotServable() from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotServable() from exc
        raise
    if not _writable_location(fd, policy):
        os.close(fd)
        raise NotServable()
    return fd


def open_write_target(url_path: str, policy: PathPolicy, *, create_parents: bool) -> WriteTarget:
    """The checked directory and name a write to `url_path` goes to; a directory itself when the
    path ends with '/' (name ''). Missing parents are made when `create_parents`."""
    segments = split_url_path(url_path, policy)
    is_dir = normal_url_path(url_path).endswith("/") or not segments
    parents, name = (segments, "") if is_dir else (segments[:-1], segments[-1])
    fd = _open_dir(str(policy.root), None, policy)
    created: list[str] = []
    try:
        for i, segment in enumerate(parents):
            if create_parents:
                try:
                    os.mkdir(segment, 0o755, dir_fd=fd)
                    created.append("/".join(parents[: i + 1]))
                except FileExistsError:
                    pass
            next_fd = _open_dir(segment, fd, policy)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return WriteTarget(fd, name, "/".join(segments), created)


def child_target(directory: WriteTarget, name: str, policy: PathPolicy) -> WriteTarget:
    """A write to the entry `name` of an opened write directory (the same descriptor, not owned).

    `name` must already be a single plain name (an uploaded file name reduced to its base name).
    """
    if not servable_name(name, policy):
        raise InvalidInput("not a usable file name")
    path = f"{directory.path}/{name}" if directory.path else name
    return WriteTarget(directory.dir_fd, name, path, [])
