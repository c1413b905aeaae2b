"""The index database: a fixed pool of connections, write transactions, and a damaged file
replaced rather than repaired.

Connections are not per thread: every statement or transaction borrows one from a fixed pool of
`_POOL_SIZE` opened at start-up and shared by all threads (waiting when all are busy), and WAL lets
readers work beside one writer.

The index is only a cache of the disk, so a corrupt one is replaced, never repaired: `PRAGMA
quick_check` at start-up and SQLite's corruption errors at run time swap in an empty database and
scan the disk into it in the background (one process at a time, under ``<index>.rebuild``).
Listings stay right meanwhile (a directory the new index has not seen is read from disk), search
answers 503 with Retry-After until the scan ends, and writes go to the new database.

Long because: opening, pooling and replacing the database share their state and locks; split,
each half would reach into the other's.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from app import metrics
from app.storage.errors import IndexRebuilding
from app.storage.paths import PathPolicy
from app.storage.schema import (
    check_location,
    create_schema,
    is_corruption,
    migrate,
    quick_check,
    schema_identity,
)

_POOL_SIZE = 4
logger = logging.getLogger("ferry.index")


class Replaced(Exception):
    """The database was replaced during this call: the call may run again, on the new one."""


_P = ParamSpec("_P")
_T = TypeVar("_T")
_D = TypeVar("_D", bound="Database")


def recovering(method: Callable[Concatenate[_D, _P], _T]) -> Callable[Concatenate[_D, _P], _T]:
    """Run an index method again when the database was replaced under it (corruption found):
    the request that found the corruption is answered from the new database, not with an error."""

    def again(self: _D, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        except Replaced:
            try:
                return method(self, *args, **kwargs)
            except Replaced:
                raise IndexRebuilding() from None

    again.__name__, again.__doc__ = method.__name__, method.__doc__
    return again


class Database:
    """The index database of one ROOT under one path policy: its connections, and its replacement
    when damaged. The table modules (entry_store.py, digest_store.py, upload_store.py) add the
    queries; `refill` (the scanner's) fills a replaced database from the disk."""

    def __init__(self, db_path: Path, policy: PathPolicy) -> None:
        self.db_path = db_path
        self.policy = policy
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._current: set[sqlite3.Connection] = set()  # the pool's connections to today's file
        self._inode: int | None = None  # the database file those connections opened
        self._pool_lock = threading.Lock()
        self._rebuild_lock = threading.Lock()
        self._rebuild_fd: int | None = None  # held while this process rebuilds
        check_location(db_path)
        self._prepare()

    def _fill(self) -> None:
        with self._pool_lock:
            while len(self._current) < _POOL_SIZE:
                conn = self._open()
                self._current.add(conn)
                self._idle.put(conn)
            with contextlib.suppress(OSError):
                self._inode = os.stat(self.db_path).st_ino

    # -- connections -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        _write_ahead(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for one statement or transaction, from a fixed pool opened at start-up:
        worker threads come and go, and a connection per thread would keep descriptors (SQLite
        holds a closed connection's files open while others use the database) for every thread
        that ever ran. Callers never hold two at once, so the pool cannot deadlock.

        SQLite's corruption errors start a rebuild (`Replaced` then lets the caller run again)."""
        self._follow_replacement()
        try:
            conn = self._idle.get(timeout=60)  # a fixed pool: a busy moment waits, it never opens more
        except queue.Empty:
            raise RuntimeError("no index connection came free within 60 s") from None
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            logger.error("the index is corrupt (%s): rebuilding it from the disk", exc)
            if self.rebuild():
                raise Replaced() from exc
            raise IndexRebuilding() from exc
        finally:
            self._release(conn)

    def _release(self, conn: sqlite3.Connection) -> None:
        with self._pool_lock:
            if conn in self._current:
                self._idle.put(conn)
                return
        conn.close()  # opened on a database that has been replaced since

    def _follow_replacement(self) -> None:
        """Reopen the pool if another process replaced the database file (a rebuild)."""
        try:
            inode = os.stat(self.db_path).st_ino
        except OSError:
            return
        if self._inode is not None and inode != self._inode:
            self._reopen()

    def _reopen(self) -> None:
        self._drain()
        self._fill()

    def _drain(self) -> None:
        """Close the idle connections; those in use close when returned (`_release`)."""
        with self._pool_lock:
            self._current.clear()
            while True:
                try:
                    self._idle.get_nowait().close()
                except queue.Empty:
                    return

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # a corrupt file may refuse even this
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _prepare(self) -> None:
        """Create the schema; start afresh if it belongs to another ROOT, policy or version, and
        rebuild from the disk if SQLite finds the file damaged."""
        try:
            self._fill()
            with self._connection() as conn:
                quick_check(conn)
            with self._write() as w:
                migrate(w, schema_identity(self.policy))
        except Replaced:
            return  # found damaged by SQLite itself, and replaced
        except IndexRebuilding:
            self._wait_for_replacement()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF in (
                sqlite3.SQLITE_BUSY,
                sqlite3.SQLITE_LOCKED,
            ):
                raise  # in use by another process, not damaged
            logger.error("the index is corrupt (%s): rebuilding it from the disk", exc)
            if not self.rebuild():
                self._wait_for_replacement()

    def _wait_for_replacement(self) -> None:
        """Another process is replacing the damaged file: use its new one once it is there."""
        seen = self._inode
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                inode = os.stat(self.db_path).st_ino
                if seen is None:
                    seen = inode
                elif inode != seen:
                    break
            time.sleep(0.05)
        self._reopen()

    # -- rebuilding --------------------------------------------------------------------------

    @property
    def _rebuild_lock_path(self) -> str:
        return str(self.db_path) + ".rebuild"

    @property
    def rebuilding(self) -> bool:
        """Whether a rebuild (in this process or another) is scanning the disk into the index."""
        if self._rebuild_fd is not None:
            return True
        fd = os.open(self._rebuild_lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def rebuild(self) -> bool:
        """Replace a damaged database with an empty one and scan the disk into it in the
        background. Returns whether the file is a new one now (False: another process is
        replacing it, and this one reopens when it is there)."""
        with self._rebuild_lock:
            if self._rebuild_fd is not None:
                return True  # already replaced by this process, still scanning
            fd = os.open(self._rebuild_lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                if self._inode is not None and os.stat(self.db_path).st_ino != self._inode:
                    os.close(fd)  # another process replaced it a moment ago
                    self._reopen()
                    return True
                self._replace_file()
            except BaseException:
                os.close(fd)
                raise
            self._rebuild_fd = fd
        metrics.INDEX_REBUILDS.inc()
        threading.Thread(target=self._rebuild_scan, name="ferry-index-rebuild", daemon=True).start()
        return True

    def _replace_file(self) -> None:
        """An empty database with the schema, renamed over the damaged one (its -wal and -shm
        removed first, so no stale page reaches the new file)."""
        fresh = Path(f"{self.db_path}.new")
        for path in (fresh, Path(f"{fresh}-journal")):
            path.unlink(missing_ok=True)
        conn = sqlite3.connect(fresh, isolation_level=None)
        try:
            conn.execute("BEGIN")
            create_schema(conn, schema_identity(self.policy))
            conn.execute("COMMIT")
        finally:
            conn.close()
        self._drain()
        for suffix in ("-wal", "-shm"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        os.replace(fresh, self.db_path)
        self._fill()

    def _rebuild_scan(self) -> None:
        try:
            self.refill()
        except Exception:
            logger.exception("rebuilding the index failed; the next scan continues it")
        finally:
            with self._rebuild_lock:
                if self._rebuild_fd is not None:
                    os.close(self._rebuild_fd)
                    self._rebuild_fd = None

    def refill(self) -> None:
        """Scan the disk into a database just replaced (the scanner's: scanner.py)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the idle connections (those in use close when returned to a full pool)."""
        self._drain()


def _write_ahead(conn: sqlite3.Connection, patience: float = 30.0) -> None:
    """Put a new index in WAL mode. The switch takes an exclusive lock and SQLite answers "database
    is locked" at once rather than waiting on the busy timeout, so two workers opening a new index
    at the same instant (forked ones do) would fail to start: the switch is tried again, briefly,
    for up to `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
