"""The index's SQLite file and schema, and the queries every table module builds on.

`SCHEMA_VERSION` is part of the identity stored in the database: a database made by another
version (or for another ROOT or path policy) is started afresh, never migrated in place, since the
index is only a cache of the disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from app.storage.paths import PathPolicy
from app.storage.values import EMPTY_SHA256, Entry, join

SCHEMA_VERSION = 9

SCHEMA = (
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
    crc32 INTEGER,
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
    # Resumable uploads (resumable.py): the target, the declared length (NULL: not declared yet),
    # the offset durably stored, the SHA-256 (OpenSSL's saved state) and CRC-32 of the bytes below
    # it, who may continue it and until when. Dropped with the rest on a schema change: an upload
    # in progress then starts over.
    """CREATE TABLE IF NOT EXISTS resumable (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    temp TEXT NOT NULL,
    length INTEGER,
    offset INTEGER NOT NULL,
    sha256 BLOB,
    crc32 INTEGER NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    owner TEXT NOT NULL,
    metadata TEXT NOT NULL
)""",
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
TABLES = ("names", "pending", "digests", "entries", "dirs", "uploads", "resumable", "meta")
# An entry with the digest and CRC-32 of its identity, if known (an empty file's are constants:
# empty files are neither queued nor stored, and a million of them cost nothing).
SHA256_COLUMN = (
    f"CASE WHEN e.size = 0 AND NOT e.is_dir THEN x'{EMPTY_SHA256.hex()}' ELSE d.sha256 END AS sha256"
)
CRC32_COLUMN = "CASE WHEN e.size = 0 AND NOT e.is_dir THEN 0 ELSE d.crc32 END AS crc32"
DIGEST_JOIN = (
    "LEFT JOIN digests d ON d.dev = e.dev AND d.ino = e.ino AND d.size = e.size AND d.mtime_ns = e.mtime_ns"
)
WITH_DIGEST = f"SELECT e.*, {SHA256_COLUMN}, {CRC32_COLUMN} FROM entries e {DIGEST_JOIN}"


def create_schema(w: sqlite3.Connection, identity: str) -> None:
    for table in TABLES:
        w.execute(f"DROP TABLE IF EXISTS {table}")
    for statement in SCHEMA:
        w.execute(statement)
    w.execute("INSERT INTO meta (key, value) VALUES ('identity', ?)", (identity,))


def schema_identity(policy: PathPolicy) -> str:
    """What a database was made for: this schema, ROOT and the path policy's choices."""
    return json.dumps([SCHEMA_VERSION, str(policy.root), policy.show_hidden, policy.follow_symlinks])


def migrate(w: sqlite3.Connection, identity: str) -> None:
    """Start afresh (in the write transaction `w`) unless the database was made for `identity`."""
    try:
        row = w.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
    except sqlite3.OperationalError:
        row = None  # a new database
    if row is None or row["value"] != identity:
        create_schema(w, identity)


def quick_check(conn: sqlite3.Connection) -> None:
    """PRAGMA quick_check: damage that leaves the header intact is found before serving."""
    problems = [r[0] for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
    if problems != ["ok"]:
        raise sqlite3.DatabaseError("; ".join(str(p) for p in problems))


def entry_from_row(row: sqlite3.Row) -> Entry:
    columns = row.keys()
    return Entry(
        path=join(row["parent"], row["name"]),
        name=row["name"],
        is_dir=bool(row["is_dir"]),
        size=row["size"],
        mtime_ns=row["mtime_ns"],
        dev=row["dev"],
        ino=row["ino"],
        sha256=row["sha256"] if "sha256" in columns else None,
        crc32=row["crc32"] if "crc32" in columns else None,
    )


def subtree_bounds(path: str) -> tuple[str, str]:
    # Every parent under `path/` sorts in [path + "/", path + "0"): "0" follows "/" in code points.
    return path + "/", path + "0"


def scope(directory: str, recursive: bool) -> tuple[str, tuple[str, ...]]:
    """The SQL condition (on entries `e`) for a directory's own entries or its whole subtree."""
    if not recursive:
        return "e.parent = ?", (directory,)
    if not directory:
        return "1", ()
    low, high = subtree_bounds(directory)
    return "(e.parent = ? OR (e.parent >= ? AND e.parent < ?))", (directory, low, high)


class IndexLocationError(Exception):
    """The index database cannot be created or written where the settings put it."""


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
