"""What storage reports when it cannot do what was asked: the path gate, the index and atomic
writes raise these, never HTTP errors. `app/errors.py` maps each to its HTTP answer, once.

StorageError          base: an optional detail (None: the answer's usual words)
├── InvalidInput      a path, name or cursor Ferry cannot make sense of (control characters, a
│                     name that is not a plain file name, a tampered cursor)
├── NotServable       nothing servable here: missing, unreadable, or refused by the path gate
├── InTheWay          something in the way of a write or delete (a directory, a symlink, a
│                     directory not empty)
├── WriteRefused      the file system does not allow writing here (EACCES, EPERM, EROFS)
├── NameTooLong       a path too long for the file system
├── NoSpace           no space (or quota) left
├── OutOfDescriptors  the process is out of file descriptors, for now
├── IndexRebuilding   the index was found damaged and is being rebuilt from the disk
├── Changed           an object store's copy no longer matches the version a request named
│                     (If-Match / If-None-Match evaluated by the store itself)
└── Unreachable       the object store did not answer
    └── Refused       … or refused Ferry's credentials or bucket
"""

from __future__ import annotations

import errno
from typing import ClassVar


class StorageError(Exception):
    default_detail: ClassVar[str | None] = None

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.default_detail
        super().__init__(self.detail or type(self).__name__)


class InvalidInput(StorageError):
    pass


class NotServable(StorageError):
    pass


class InTheWay(StorageError):
    pass


class WriteRefused(StorageError):
    default_detail = "the storage does not allow writing here"


class NameTooLong(StorageError):
    pass


class NoSpace(StorageError):
    pass


class OutOfDescriptors(StorageError):
    default_detail = "out of file descriptors"


class IndexRebuilding(StorageError):
    """Listings and downloads are unaffected; what needs the whole index waits for the rebuild."""

    default_detail = "the index is being rebuilt from the disk; try again shortly"


# errno classes of a write the file system refused.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NOT_ALLOWED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def write_refusal(exc: OSError) -> StorageError | None:
    """What a write the file system refused means; None for a failure Ferry did not expect."""
    if exc.errno in _NO_SPACE:
        return NoSpace()
    if exc.errno in _NOT_ALLOWED:
        return WriteRefused()
    if exc.errno == errno.ENAMETOOLONG:
        return NameTooLong()
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return OutOfDescriptors()
    return None


class Changed(StorageError):
    default_detail = "the file changed meanwhile"


class Unreachable(StorageError):
    default_detail = "the storage is not reachable; try again shortly"


class Refused(Unreachable):
    """The store answered, and refused: wrong credentials, or no such bucket. Waiting does not
    help (`ferry serve` exits 2 on it at start-up)."""
