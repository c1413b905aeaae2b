"""The storage index: what is under ROOT, in SQLite, for listings and name search.

One row per servable entry (the path gate decides what is servable: hidden names and symlinks
leading out of ROOT are never stored when the policy refuses them). Names are searched through an
FTS5 trigram index, so a substring query reads the index, not every row. Each directory's mtime is
kept, so a restart rescans only directories whose entries changed, and a listing first refreshes
its directory if the disk says it changed since it was indexed.

A download reads the index for one thing, its file's digest (Repr-Digest, Digest and the Link to
the .meta4; `.meta4` and `?checksums` too), through the worker's `DigestCache` (digests.py): at
most one read a second per file version while it has no digest, in a thread, and a download does
not wait long for it. A download of a path the disk no longer has drops it from the index. The
index is written by the scanner and watcher (watch.py), the digest worker and Ferry's own writes.
Code on the event loop never calls it directly: it goes through `AsyncIndex` (async_index.py),
which reads in threads and writes on one writer thread. Connections are not per
thread: every statement or transaction borrows one from a fixed pool of `_POOL_SIZE` opened at
start-up and shared by all threads (waiting when all are busy), and WAL lets readers work beside
one writer.

The index is only a cache of the disk, so a corrupt one is replaced, never repaired: `PRAGMA
quick_check` at start-up and SQLite's corruption errors at run time swap in an empty database and
scan the disk into it in the background (one process at a time, under ``<index>.rebuild``). Listings
stay right meanwhile (a directory the new index has not seen is read from disk), search answers 503
with Retry-After until the scan ends, and writes go to the new database.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import queue
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Concatenate, Literal, ParamSpec, TypeVar

from app import metrics
from app.errors import BadRequest, FerryError, IndexRebuilding
from app.storage.digests import EMPTY_DIGEST, EMPTY_SHA256, FileDigest, Identity, identity, stored_ns
from app.storage.paths import (
    TEMP_PREFIX,
    PathPolicy,
    SafePath,
    open_beneath,
    relative,
    resolve,
    servable_name,
    stat_child,
)

SCHEMA_VERSION = 6
_POOL_SIZE = 4
# A temporary upload file untouched for this long, and locked by no writer, belongs to no live
# upload: a live one is written to (mtime) or held open and locked (AtomicWrite) by its writer.
STALE_UPLOAD_SECONDS = 3600
_STOP_CHECK_ENTRIES = 1000  # a scan stopping checks between directories and every this many names
_FOUND_OWNER = ""  # an uploads row for a temporary file seen on disk, not begun by this index
logger = logging.getLogger("ferry.index")
SortKey = Literal["name", "size", "mtime"]
_SORT_COLUMNS: dict[str, str] = {"name": "name", "size": "size", "mtime": "mtime_ns"}

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    parent TEXT NOT NULL,
    name TEXT NOT NULL,
    folded TEXT NOT NULL,
    is_dir INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    UNIQUE (parent, name)
)""",
    """CREATE INDEX IF NOT EXISTS entries_by_size ON entries (parent, size, name)""",
    """CREATE INDEX IF NOT EXISTS entries_by_mtime ON entries (parent, mtime_ns, name)""",
    # One digest per inode, valid only for the identity it was computed from (digests.py).
    """CREATE TABLE IF NOT EXISTS digests (
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    piece_length INTEGER NOT NULL,
    pieces BLOB NOT NULL,
    PRIMARY KEY (dev, ino)
)""",
    # Files whose bytes are new or changed since they were hashed: the digest worker's queue.
    # (Not INSERT OR IGNORE: the UPSERT that fires these triggers would override its policy.)
    """CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY)""",
    """CREATE TRIGGER IF NOT EXISTS entries_pending_ai AFTER INSERT ON entries
WHEN NOT new.is_dir AND new.size > 0 BEGIN
    INSERT INTO pending (id) SELECT new.id WHERE NOT EXISTS (SELECT 1 FROM pending WHERE id = new.id);
END""",
    """CREATE TRIGGER IF NOT EXISTS entries_pending_au AFTER UPDATE OF size, mtime_ns, dev, ino ON entries
WHEN NOT new.is_dir AND new.size > 0 BEGIN
    INSERT INTO pending (id) SELECT new.id WHERE NOT EXISTS (SELECT 1 FROM pending WHERE id = new.id);
END""",
    """CREATE TABLE IF NOT EXISTS dirs (path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS uploads (path TEXT PRIMARY KEY, owner TEXT NOT NULL)""",
    """CREATE VIRTUAL TABLE IF NOT EXISTS names USING fts5(
    name, content='entries', content_rowid='id', tokenize='trigram'
)""",
    """CREATE TRIGGER IF NOT EXISTS entries_ai AFTER INSERT ON entries BEGIN
    INSERT INTO names (rowid, name) VALUES (new.id, new.name);
END""",
    """CREATE TRIGGER IF NOT EXISTS entries_ad AFTER DELETE ON entries BEGIN
    INSERT INTO names (names, rowid, name) VALUES ('delete', old.id, old.name);
    DELETE FROM pending WHERE id = old.id;
END""",
)
_TABLES = ("names", "pending", "digests", "entries", "dirs", "uploads", "meta")
# An entry with the digest of its identity, if one is known (an empty file's is a constant: empty
# files are neither queued nor stored, and a million of them cost nothing).
_SHA256 = f"CASE WHEN e.size = 0 AND NOT e.is_dir THEN x'{EMPTY_SHA256.hex()}' ELSE d.sha256 END AS sha256"
_DIGEST_JOIN = (
    "LEFT JOIN digests d ON d.dev = e.dev AND d.ino = e.ino AND d.size = e.size AND d.mtime_ns = e.mtime_ns"
)
_WITH_DIGEST = f"SELECT e.*, {_SHA256} FROM entries e {_DIGEST_JOIN}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One indexed file or directory; `path` is '/'-separated below ROOT."""

    path: str
    name: str
    is_dir: bool
    size: int
    mtime_ns: int
    dev: int
    ino: int
    sha256: bytes | None = field(default=None, compare=False)  # known digest of this identity


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Entry]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ScanStats:
    directories: int = 0
    rescanned: int = 0
    seconds: float = 0.0
    stopped: bool = False


class IndexLocationError(Exception):
    """The index database cannot be created or written where the settings put it."""


class _Replaced(Exception):
    """The database was replaced during this call: the call may run again, on the new one."""


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """SQLITE_CORRUPT (and its extended codes, FTS5's included) or SQLITE_NOTADB."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def check_location(db_path: Path) -> None:
    """Create the index's folder and make sure the database and its -wal/-shm files can be written
    there; raises IndexLocationError with a one-line reason otherwise."""
    where = str(db_path)
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        if db_path.exists() and not db_path.is_file():
            raise IndexLocationError(f"{where!r} is not a file")
        fd = os.open(db_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.close(fd)
        probe = db_path.with_name(f"{db_path.name}.probe-{os.getpid()}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise IndexLocationError(f"cannot write the index at {where!r}: {reason}") from None


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _recovering(method: Callable[Concatenate[Index, _P], _T]) -> Callable[Concatenate[Index, _P], _T]:
    """Run an index method again when the database was replaced under it (corruption found):
    the request that found the corruption is answered from the new database, not with an error."""

    def again(self: Index, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        except _Replaced:
            try:
                return method(self, *args, **kwargs)
            except _Replaced:
                raise IndexRebuilding() from None

    again.__name__, again.__doc__ = method.__name__, method.__doc__
    return again


# The name AtomicWrite (writes.py) gives a temporary upload file; nothing else is ever swept.
TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]{16}\.part")


def decodable(name: str) -> bool:
    """Whether a file name read from disk is valid UTF-8 (undecodable bytes arrive as surrogate
    escapes, which neither a URL nor SQLite can carry)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


def _subtree_bounds(path: str) -> tuple[str, str]:
    # Every parent under `path/` sorts in [path + "/", path + "0"): "0" follows "/" in code points.
    return path + "/", path + "0"


def _scope(directory: str, recursive: bool) -> tuple[str, tuple[str, ...]]:
    """The SQL condition (on entries `e`) for a directory's own entries or its whole subtree."""
    if not recursive:
        return "e.parent = ?", (directory,)
    if not directory:
        return "1", ()
    low, high = _subtree_bounds(directory)
    return "(e.parent = ? OR (e.parent >= ? AND e.parent < ?))", (directory, low, high)


# A cursor holds SQLite values: integers are 64-bit, and a genuine cursor is one flat JSON list.
_INT64 = range(-(2**63), 2**63)
_MAX_CURSOR = 65536  # characters; a genuine cursor holds at most one path (PATH_MAX, escaped)


def encode_cursor(values: list[object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[object]:
    """The values of a cursor made by `encode_cursor`, each of the given type, or 400.

    A cursor comes back from the client, so it is checked as input: nested JSON deep enough to
    exhaust the parser's recursion, or a value SQLite cannot bind, is refused here rather than
    failing later as a server error."""
    if len(cursor) > _MAX_CURSOR:
        raise BadRequest("invalid cursor")
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest("invalid cursor") from exc
    if not isinstance(values, list) or len(values) != len(types):
        raise BadRequest("invalid cursor")
    # bool is an int to isinstance; a cursor never holds one.
    if not all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(values, types, strict=True)):
        raise BadRequest("invalid cursor")
    if not all(_bindable(v) for v in values):
        raise BadRequest("invalid cursor")
    return values


def _create_schema(w: sqlite3.Connection, identity: str) -> None:
    for table in _TABLES:
        w.execute(f"DROP TABLE IF EXISTS {table}")
    for statement in _SCHEMA:
        w.execute(statement)
    w.execute("INSERT INTO meta (key, value) VALUES ('identity', ?)", (identity,))


def _bindable(value: object) -> bool:
    """Whether SQLite takes the value as it is: a 64-bit integer, or text that is valid UTF-8."""
    if isinstance(value, int):
        return value in _INT64
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # JSON may carry lone surrogates ("\\ud800")
        except UnicodeEncodeError:
            return False
    return True


def _entry_from_row(row: sqlite3.Row) -> Entry:
    return Entry(
        path=_join(row["parent"], row["name"]),
        name=row["name"],
        is_dir=bool(row["is_dir"]),
        size=row["size"],
        mtime_ns=row["mtime_ns"],
        dev=row["dev"],
        ino=row["ino"],
        sha256=row["sha256"] if "sha256" in row.keys() else None,
    )


def entry_from_stat(path: str, st: os.stat_result) -> Entry:
    parent, name = _split(path)
    is_dir = stat.S_ISDIR(st.st_mode)
    dev, ino, size, mtime_ns = identity(st)
    return Entry(path, name, is_dir, 0 if is_dir else size, mtime_ns, dev, ino)


def _process_key(pid: int) -> str | None:
    """pid plus its start time: a restarted container reuses pids, never both."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return f"{pid}:{fields[19]}"  # field 22 of stat(5): starttime


class Index:
    """The SQLite index of one ROOT under one path policy."""

    def __init__(self, db_path: Path, policy: PathPolicy) -> None:
        self.db_path = db_path
        self.policy = policy
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._current: set[sqlite3.Connection] = set()  # the pool's connections to today's file
        self._inode: int | None = None  # the database file those connections opened
        self._pool_lock = threading.Lock()
        self._rebuild_lock = threading.Lock()
        self._rebuild_fd: int | None = None  # held while this process rebuilds
        self._stop_scans = threading.Event()
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
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for one statement or transaction, from a fixed pool opened at start-up:
        worker threads come and go, and a connection per thread would keep descriptors (SQLite
        holds a closed connection's files open while others use the database) for every thread
        that ever ran. Callers never hold two at once, so the pool cannot deadlock.

        SQLite's corruption errors start a rebuild (`_Replaced` then lets the caller run again)."""
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
                raise _Replaced() from exc
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
        with self._pool_lock:
            self._current.clear()
            while True:
                try:
                    self._idle.get_nowait().close()
                except queue.Empty:
                    break
        self._fill()

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

    def _identity(self) -> str:
        return json.dumps(
            [SCHEMA_VERSION, str(self.policy.root), self.policy.show_hidden, self.policy.follow_symlinks]
        )

    def _prepare(self) -> None:
        """Create the schema; start afresh if it belongs to another ROOT, policy or version, and
        rebuild from the disk if SQLite finds the file damaged."""
        identity = self._identity()
        try:
            self._fill()
            self._check()
            self._migrate(identity)
        except _Replaced:
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

    def _check(self) -> None:
        """PRAGMA quick_check: damage that leaves the header intact is found before serving."""
        with self._connection() as conn:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(str(p) for p in problems))

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

    def _migrate(self, identity: str) -> None:
        with self._write() as w:
            try:
                row = w.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
            except sqlite3.OperationalError:
                row = None  # a new database
            if row is not None and row["value"] == identity:
                return
            _create_schema(w, identity)

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
            _create_schema(conn, self._identity())
            conn.execute("COMMIT")
        finally:
            conn.close()
        with self._pool_lock:
            self._current.clear()
            while True:
                try:
                    self._idle.get_nowait().close()
                except queue.Empty:
                    break
        for suffix in ("-wal", "-shm"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        os.replace(fresh, self.db_path)
        self._fill()

    def _rebuild_scan(self) -> None:
        try:
            stats = self.scan(incremental=False)
            if stats.stopped:
                logger.info("index rebuild stopped; the next start reads the rest of the disk")
                return
            metrics.INDEX_SCAN_SECONDS.set(stats.seconds)
            logger.info(
                "index scan: %d directories, %d read from disk, %.2fs (the index is rebuilt: %d entries)",
                stats.directories,
                stats.rescanned,
                stats.seconds,
                self.count(),
            )
        except Exception:
            logger.exception("rebuilding the index failed; the next scan continues it")
        finally:
            with self._rebuild_lock:
                if self._rebuild_fd is not None:
                    os.close(self._rebuild_fd)
                    self._rebuild_fd = None

    def stop_scans(self) -> None:
        """Make running and future scans stop at the next directory (shutdown)."""
        self._stop_scans.set()

    def close(self) -> None:
        """Close the idle connections (those in use close when returned to a full pool)."""
        with self._pool_lock:
            self._current.clear()
            while True:
                try:
                    self._idle.get_nowait().close()
                except queue.Empty:
                    return

    # -- reads -------------------------------------------------------------------------------

    @_recovering
    def count(self) -> int:
        with self._connection() as conn:
            row = conn.execute("SELECT count(*) AS n FROM entries").fetchone()
        return int(row["n"])

    @_recovering
    def get(self, path: str) -> Entry | None:
        parent, name = _split(path)
        with self._connection() as conn:
            row = conn.execute(f"{_WITH_DIGEST} WHERE e.parent = ? AND e.name = ?", (parent, name)).fetchone()
        return None if row is None else _entry_from_row(row)

    @_recovering
    def list_dir(
        self,
        directory: str,
        *,
        limit: int,
        cursor: str | None = None,
        sort: SortKey = "name",
        descending: bool = False,
    ) -> Page:
        """One page of a directory's entries, in (sort key, name) order; keyset pagination."""
        self.refresh_if_changed(directory)
        column = _SORT_COLUMNS[sort]
        keys = [column] if column == "name" else [column, "name"]
        op, order = ("<", "DESC") if descending else (">", "ASC")
        where, args = "e.parent = ?", list[object]([directory])
        columns = [f"e.{k}" for k in keys]
        if cursor is not None:
            values = decode_cursor(cursor, tuple(str if k == "name" else int for k in keys))
            where += f" AND ({', '.join(columns)}) {op} ({', '.join('?' * len(keys))})"
            args += values
        query = f"{_WITH_DIGEST} WHERE {where} ORDER BY {', '.join(f'{c} {order}' for c in columns)} LIMIT ?"
        with self._connection() as conn:
            rows = conn.execute(query, (*args, limit + 1)).fetchall()
        entries = [_entry_from_row(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor([last[k] for k in keys])
        return Page(entries, next_cursor)

    @_recovering
    def search(self, query: str, *, limit: int, cursor: str | None = None) -> Page:
        """Entries whose name contains `query`, ignoring case, anywhere under ROOT."""
        if any(ord(c) < 0x20 or c == "\x7f" for c in query):
            raise BadRequest("control characters cannot be part of a name")
        if self.rebuilding:
            raise IndexRebuilding()  # half an index would give half the answers, silently
        after = 0
        if cursor is not None:
            (last_id,) = decode_cursor(cursor, (int,))
            assert isinstance(last_id, int)
            after = last_id
        with self._connection() as conn:
            rows = self._search_rows(conn, query, after, limit)
        entries = [_entry_from_row(r) for r in rows[:limit]]
        next_cursor = encode_cursor([rows[limit - 1]["id"]]) if len(rows) > limit else None
        return Page(entries, next_cursor)

    @staticmethod
    def _search_rows(conn: sqlite3.Connection, query: str, after: int, limit: int) -> list[sqlite3.Row]:
        if len(query) >= 3:
            # The trigram tokenizer matches a quoted phrase as a substring, case-insensitively.
            phrase = '"' + query.replace('"', '""') + '"'
            return conn.execute(
                f"SELECT e.*, {_SHA256} FROM names JOIN entries e ON e.id = names.rowid {_DIGEST_JOIN} "
                "WHERE names MATCH ? AND names.rowid > ? ORDER BY names.rowid LIMIT ?",
                (phrase, after, limit + 1),
            ).fetchall()
        # Shorter than a trigram: a LIKE over the case-folded names (LIKE itself folds ASCII
        # only), stopped at the page size.
        folded = query.casefold()
        pattern = "%" + folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return conn.execute(
            f"{_WITH_DIGEST} WHERE e.id > ? AND e.folded LIKE ? ESCAPE '\\' ORDER BY e.id LIMIT ?",
            (after, pattern, limit + 1),
        ).fetchall()

    # -- writes ------------------------------------------------------------------------------

    @_recovering
    def put(self, entry: Entry) -> None:
        parent, name = _split(entry.path)
        with self._write() as w:
            self._upsert(w, parent, entry)

    @_recovering
    def forget(self, path: str) -> None:
        """Drop an entry found missing on disk, if the index still has it (a read first: a flood
        of 404s must not turn into a flood of write transactions)."""
        # With ROOT itself gone (an unmounted volume), nothing is known to be deleted: keep it all.
        if os.path.isdir(self.policy.root) and self.get(path) is not None:
            self.remove(path)

    @_recovering
    def remove(self, path: str) -> None:
        """Forget an entry and, if it was a directory, everything below it."""
        with self._write() as w:
            self._delete(w, path)

    @staticmethod
    def _upsert(w: sqlite3.Connection, parent: str, e: Entry) -> None:
        w.execute(
            "INSERT INTO entries (parent, name, folded, is_dir, size, mtime_ns, dev, ino) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (parent, name) DO UPDATE SET is_dir = excluded.is_dir, size = excluded.size, "
            "mtime_ns = excluded.mtime_ns, dev = excluded.dev, ino = excluded.ino",
            (parent, e.name, e.name.casefold(), int(e.is_dir), e.size, e.mtime_ns, e.dev, e.ino),
        )

    @staticmethod
    def _delete(w: sqlite3.Connection, path: str) -> None:
        parent, name = _split(path)
        low, high = _subtree_bounds(path)
        w.execute("DELETE FROM entries WHERE parent = ? AND name = ?", (parent, name))
        w.execute("DELETE FROM entries WHERE parent = ? OR (parent >= ? AND parent < ?)", (path, low, high))
        w.execute("DELETE FROM dirs WHERE path = ? OR (path >= ? AND path < ?)", (path, low, high))

    # -- digests -----------------------------------------------------------------------------

    @_recovering
    def digest(self, ident: Identity) -> FileDigest | None:
        """The digest of exactly this file identity, if known."""
        if ident[2] == 0:
            return EMPTY_DIGEST
        with self._connection() as conn:
            row = conn.execute(
                "SELECT sha256, piece_length, pieces FROM digests "
                "WHERE dev = ? AND ino = ? AND size = ? AND mtime_ns = ?",
                ident,
            ).fetchone()
        return None if row is None else FileDigest(row["sha256"], row["piece_length"], row["pieces"])

    @_recovering
    def put_digest(self, ident: Identity, digest: FileDigest, *, done: int | None = None) -> None:
        """Store a digest for an identity (and, with `done`, take that entry off the queue)."""
        if ident[2] == 0:
            return  # every empty file's digest is known
        with self._write() as w:
            if done is not None:
                w.execute("DELETE FROM pending WHERE id = ?", (done,))
            w.execute(
                "INSERT INTO digests (dev, ino, size, mtime_ns, sha256, piece_length, pieces) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dev, ino) DO UPDATE SET size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, "
                "piece_length = excluded.piece_length, pieces = excluded.pieces",
                (*ident, digest.sha256, digest.piece_length, digest.pieces),
            )

    @_recovering
    def pending_digests(self, limit: int, after: int = 0) -> list[tuple[int, Entry]]:
        """Files whose bytes are new or changed since last hashed, in entry order after `after`."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT e.* FROM pending p JOIN entries e ON e.id = p.id "
                "WHERE p.id > ? ORDER BY p.id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [(r["id"], _entry_from_row(r)) for r in rows]

    @_recovering
    def pending_count(self) -> int:
        with self._connection() as conn:
            return int(conn.execute("SELECT count(*) AS n FROM pending").fetchone()["n"])

    @_recovering
    def done_digest(self, entry_id: int) -> None:
        with self._write() as w:
            w.execute("DELETE FROM pending WHERE id = ?", (entry_id,))

    @_recovering
    def prune_digests(self) -> int:
        """Forget the digests of inodes no entry has any more; returns how many."""
        with self._write() as w:
            cursor = w.execute("DELETE FROM digests WHERE (dev, ino) NOT IN (SELECT dev, ino FROM entries)")
            return cursor.rowcount

    @_recovering
    def files_with_digests(
        self,
        directory: str,
        *,
        recursive: bool,
        limit: int,
        after: tuple[str, str] = ("", ""),
        missing_only: bool = False,
    ) -> list[Entry]:
        """The files in a directory (or its whole subtree), by (parent, name), each with its digest
        if known: one page of at most `limit` after the file `after` (its parent and name), so a
        caller walks a large tree a page at a time (keyset pagination: each page is an index seek).
        `missing_only`: only the files whose digest is not known yet."""
        if recursive and self.rebuilding:
            raise IndexRebuilding()  # subfolders the rebuild has not reached yet would be missing
        # Each form below is one range of the (parent, name) index, walked in order.
        after = max(after, (directory, ""))
        args: tuple[str, ...]
        if not recursive:
            if after[0] != directory:
                return []  # past the directory's own files
            where, args = "e.parent = ? AND e.name > ?", after
        elif not directory:
            where, args = "(e.parent, e.name) > (?, ?)", after
        else:
            low, high = _subtree_bounds(directory)
            where = "(e.parent, e.name) > (?, ?) AND e.parent < ? AND (e.parent = ? OR e.parent >= ?)"
            args = (*after, high, directory, low)
        if missing_only:
            where += " AND d.sha256 IS NULL AND e.size > 0"
        with self._connection() as conn:
            rows = conn.execute(
                f"{_WITH_DIGEST} WHERE NOT e.is_dir AND {where} ORDER BY e.parent, e.name LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_entry_from_row(r) for r in rows]

    @_recovering
    def digest_coverage(self, directory: str, *, recursive: bool, limit: int) -> tuple[int, int, int]:
        """(files, files without a known digest, their bytes) in a directory or its subtree, after
        bringing a directory that changed on disk up to date; counts stop past `limit` files."""
        if recursive and self.rebuilding:
            raise IndexRebuilding()  # subfolders the rebuild has not reached yet would be missing
        self.refresh_if_changed(directory)
        where, args = _scope(directory, recursive)
        with self._connection() as conn:
            row = conn.execute(
                "SELECT count(*) AS files, count(*) - count(sha256) AS missing, "
                "coalesce(sum(CASE WHEN sha256 IS NULL THEN size END), 0) AS missing_bytes "
                f"FROM ({_WITH_DIGEST} WHERE NOT e.is_dir AND {where} LIMIT ?)",
                (*args, limit),
            ).fetchone()
        return int(row["files"]), int(row["missing"]), int(row["missing_bytes"])

    # -- uploads in progress ------------------------------------------------------------------

    @_recovering
    def begin_upload(self, temp_path: str) -> None:
        """Record a temporary upload file, so a crash cannot leave it behind unnoticed."""
        with self._write() as w:
            owner = _process_key(os.getpid()) or str(os.getpid())
            w.execute("INSERT OR REPLACE INTO uploads (path, owner) VALUES (?, ?)", (temp_path, owner))

    @_recovering
    def end_upload(self, temp_path: str) -> None:
        with self._write() as w:
            w.execute("DELETE FROM uploads WHERE path = ?", (temp_path,))

    @_recovering
    def orphaned_uploads(self) -> list[str]:
        """Temporary upload files whose writing process is gone."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT path, owner FROM uploads WHERE owner != ?", (_FOUND_OWNER,)
            ).fetchall()
        return [r["path"] for r in rows if _process_key(int(r["owner"].partition(":")[0])) != r["owner"]]

    @_recovering
    def found_uploads(self) -> list[str]:
        """Temporary upload files a scan saw on disk that no upload of this index began: left by
        a crash that lost the index, by a failed upload, or in progress on another replica."""
        with self._connection() as conn:
            rows = conn.execute("SELECT path FROM uploads WHERE owner = ?", (_FOUND_OWNER,)).fetchall()
        return [r["path"] for r in rows]

    # -- scanning ----------------------------------------------------------------------------

    @_recovering
    def sync_path(self, path: str) -> None:
        """Bring one path up to date with the disk: add, update or drop it (a new directory is
        scanned whole)."""
        if not os.path.isdir(self.policy.root):
            return  # ROOT itself is gone (an unmounted volume): nothing is known to be deleted
        try:
            safe = resolve(path, self.policy)
            st = os.stat(safe)
        except (OSError, ValueError, FerryError):
            self.remove(path)  # gone, or no longer allowed by the policy
            return
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            self.remove(path)
            return
        entry = entry_from_stat(path, st)
        self.put(entry)
        # A directory is walked: those never read (created, copied or moved in, or only seen in
        # a listing of their parent) or changed since are read; the rest cost one stat each.
        if entry.is_dir and not os.path.islink(safe):
            self.scan(start=path, incremental=True)

    @_recovering
    def refresh_if_changed(self, directory: str) -> None:
        """Rescan a directory's own entries if its mtime differs from the indexed one."""
        try:
            safe = resolve(directory, self.policy)
            mtime_ns = stored_ns(os.stat(safe).st_mtime_ns)
        except (OSError, ValueError, FerryError):
            return
        with self._connection() as conn:
            row = conn.execute("SELECT mtime_ns FROM dirs WHERE path = ?", (directory,)).fetchone()
        if row is None or row["mtime_ns"] != mtime_ns:
            self._rescan_dir(directory, safe)

    def scan(self, *, start: str = "", incremental: bool = True) -> ScanStats:
        """Walk ROOT (or a subtree); with `incremental`, directories whose mtime matches the index
        are not read again, only descended through. A directory that cannot be read is logged and
        passed over, never the end of the scan; `stop_scans` ends it at the next directory."""
        began = time.monotonic()
        stack = [start]
        directories = rescanned = 0
        while stack:
            if self._stop_scans.is_set():
                return ScanStats(directories, rescanned, time.monotonic() - began, stopped=True)
            directory = stack.pop()
            directories += 1
            try:
                subdirs, read = self._scan_one(directory, incremental=incremental)
            except (_Replaced, IndexRebuilding):
                raise  # the index was replaced: its rebuild scans everything again
            except Exception:
                logger.exception("index scan: reading %r failed; going on with the rest", directory)
                continue
            rescanned += read
            stack.extend(_join(directory, name) for name in subdirs)
        return ScanStats(directories, rescanned, time.monotonic() - began)

    def _scan_one(self, directory: str, *, incremental: bool) -> tuple[list[str], bool]:
        """One directory of a scan: its subdirectories, and whether it was read from disk."""
        try:
            safe = resolve(directory, self.policy)
            mtime_ns = stored_ns(os.stat(safe).st_mtime_ns)
        except (OSError, ValueError, FerryError):
            if directory:
                self.remove(directory)  # gone, or no longer allowed by the policy
            return [], False
        subdirs = self._known_subdirs(directory, mtime_ns) if incremental else None
        if subdirs is not None:
            return subdirs, False
        return self._rescan_dir(directory, safe), True

    def _known_subdirs(self, directory: str, mtime_ns: int) -> list[str] | None:
        """The indexed subdirectories of a directory whose mtime is unchanged; None if it changed."""
        with self._connection() as conn:
            row = conn.execute("SELECT mtime_ns FROM dirs WHERE path = ?", (directory,)).fetchone()
            if row is None or row["mtime_ns"] != mtime_ns:
                return None
            rows = conn.execute("SELECT name FROM entries WHERE parent = ? AND is_dir = 1", (directory,))
            return [r["name"] for r in rows]

    def _rescan_dir(self, directory: str, safe: SafePath) -> list[str]:
        """Read one directory from disk into the index; returns the subdirectories to descend into
        (real directories only: a symlinked directory is listed but not walked, so no loops).

        The directory is opened through the gate and read by descriptor, so a path swapped for a
        symlink after the check cannot make the index list another directory.
        """
        found: dict[str, Entry] = {}
        walk: list[str] = []
        temporary: list[str] = []
        try:
            fd, st_dir = open_beneath(safe, self.policy)
        except (OSError, FerryError):
            if directory:
                self.remove(directory)
            return []
        try:
            mtime_ns = stored_ns(st_dir.st_mtime_ns)
            with os.scandir(fd) as it:
                for count, d in enumerate(it, 1):
                    if count % _STOP_CHECK_ENTRIES == 0 and self._stop_scans.is_set():
                        return []  # shutting down: the next start reads this directory again
                    if TEMP_NAME.fullmatch(d.name):
                        temporary.append(d.name)
                        continue
                    st = self._entry_stat(fd, d)
                    if st is None or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                        continue
                    found[d.name] = entry_from_stat(_join(directory, d.name), st)
                    if stat.S_ISDIR(st.st_mode) and not d.is_symlink():
                        walk.append(d.name)
        except OSError:
            return []
        finally:
            os.close(fd)
        with self._write() as w:
            known = {
                r["name"]: r
                for r in w.execute(
                    "SELECT name, is_dir, size, mtime_ns, dev, ino FROM entries WHERE parent = ?",
                    (directory,),
                )
            }
            for name in known.keys() - found.keys():
                self._delete(w, _join(directory, name))
            for name, e in found.items():
                old = known.get(name)
                if old is None or (old["is_dir"], old["size"], old["mtime_ns"], old["dev"], old["ino"]) != (
                    int(e.is_dir),
                    e.size,
                    e.mtime_ns,
                    e.dev,
                    e.ino,
                ):
                    self._upsert(w, directory, e)
            # Temporary upload files are remembered, so the sweep (watch.py) finds them even in a
            # directory no later scan reads again; an upload begun here keeps its own row.
            w.executemany(
                "INSERT OR IGNORE INTO uploads (path, owner) VALUES (?, ?)",
                [(_join(directory, name), _FOUND_OWNER) for name in temporary],
            )
            w.execute(
                "INSERT INTO dirs (path, mtime_ns) VALUES (?, ?) "
                "ON CONFLICT (path) DO UPDATE SET mtime_ns = excluded.mtime_ns",
                (directory, mtime_ns),
            )
        return walk

    def _entry_stat(self, dir_fd: int, d: os.DirEntry[str]) -> os.stat_result | None:
        """The stat of an entry the index may hold (None: skip it); one entry that fails in an
        unexpected way is skipped, never the end of its directory's scan."""
        try:
            return self._servable_stat(dir_fd, d)
        except Exception:
            logger.exception("index scan: skipping %r", d.name)
            return None

    def _servable_stat(self, dir_fd: int, d: os.DirEntry[str]) -> os.stat_result | None:
        if not decodable(d.name):
            metrics.INDEX_SKIPPED_NAMES.inc()  # not valid UTF-8: no URL can name it
            return None
        if d.is_symlink():
            return stat_child(dir_fd, d.name, self.policy)  # followed only where the gate allows
        if not servable_name(d.name, self.policy):
            return None
        try:
            return d.stat(follow_symlinks=False)
        except OSError:
            return None

    @_recovering
    def entry_for(self, safe: SafePath) -> Entry | None:
        """A live entry for a gated path (stat now), keeping the index in step with what it saw."""
        path = relative(safe, self.policy)
        try:
            st = os.stat(safe)
        except OSError:
            if path:
                self.forget(path)
            return None
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            return None
        entry = entry_from_stat(path, st)
        known = self.get(path) if path else None
        if known == entry:
            return known  # with its digest, if known
        if path:
            self.put(entry)
        digest = self.digest((entry.dev, entry.ino, entry.size, entry.mtime_ns))
        return entry if digest is None else replace(entry, sha256=digest.sha256)
