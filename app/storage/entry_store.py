"""The index's entries table: what is under ROOT, for listings and name search.

One row per servable entry (the path gate decides what is servable: hidden names and symlinks
leading out of ROOT are never stored when the policy refuses them). Names are searched through an
FTS5 trigram index, so a substring query reads the index, not every row. Each directory's mtime is
kept (`dirs`), so the scanner reads again only directories whose entries changed.
"""

from __future__ import annotations

import os
import sqlite3

from app.storage.cursor import decode_cursor, encode_cursor
from app.storage.database import Database, recovering
from app.storage.errors import IndexRebuilding, InvalidInput
from app.storage.schema import (
    CRC32_COLUMN,
    DIGEST_JOIN,
    SHA256_COLUMN,
    WITH_DIGEST,
    entry_from_row,
    subtree_bounds,
)
from app.storage.values import Entry, Page, SortKey, join, split

_SORT_COLUMNS: dict[str, str] = {"name": "name", "size": "size", "mtime": "mtime_ns"}


class EntryStore(Database):
    """Reads and writes of the entries table (and of `dirs`, which follows it)."""

    @recovering
    def dir_mtime(self, directory: str) -> int | None:
        """The mtime a directory had when it was last read from disk (None: never read)."""
        with self._connection() as conn:
            row = conn.execute("SELECT mtime_ns FROM dirs WHERE path = ?", (directory,)).fetchone()
        return None if row is None else int(row["mtime_ns"])

    @recovering
    def count(self) -> int:
        with self._connection() as conn:
            row = conn.execute("SELECT count(*) AS n FROM entries").fetchone()
        return int(row["n"])

    @recovering
    def get(self, path: str) -> Entry | None:
        parent, name = split(path)
        with self._connection() as conn:
            row = conn.execute(f"{WITH_DIGEST} WHERE e.parent = ? AND e.name = ?", (parent, name)).fetchone()
        return None if row is None else entry_from_row(row)

    @recovering
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
        column = _SORT_COLUMNS[sort]
        keys = [column] if column == "name" else [column, "name"]
        op, order = ("<", "DESC") if descending else (">", "ASC")
        where, args = "e.parent = ?", list[object]([directory])
        columns = [f"e.{k}" for k in keys]
        if cursor is not None:
            values = decode_cursor(cursor, tuple(str if k == "name" else int for k in keys))
            where += f" AND ({', '.join(columns)}) {op} ({', '.join('?' * len(keys))})"
            args += values
        query = f"{WITH_DIGEST} WHERE {where} ORDER BY {', '.join(f'{c} {order}' for c in columns)} LIMIT ?"
        with self._connection() as conn:
            rows = conn.execute(query, (*args, limit + 1)).fetchall()
        entries = [entry_from_row(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor([last[k] for k in keys])
        return Page(entries, next_cursor)

    @recovering
    def search(self, query: str, *, limit: int, cursor: str | None = None) -> Page:
        """Entries whose name contains `query`, ignoring case, anywhere under ROOT."""
        if any(ord(c) < 0x20 or c == "\x7f" for c in query):
            raise InvalidInput("control characters cannot be part of a name")
        if self.rebuilding:
            raise IndexRebuilding()  # half an index would give half the answers, silently
        after = 0
        if cursor is not None:
            (last_id,) = decode_cursor(cursor, (int,))
            assert isinstance(last_id, int)
            after = last_id
        with self._connection() as conn:
            rows = self._search_rows(conn, query, after, limit)
        entries = [entry_from_row(r) for r in rows[:limit]]
        next_cursor = encode_cursor([rows[limit - 1]["id"]]) if len(rows) > limit else None
        return Page(entries, next_cursor)

    @staticmethod
    def _search_rows(conn: sqlite3.Connection, query: str, after: int, limit: int) -> list[sqlite3.Row]:
        if len(query) >= 3:
            # The trigram tokenizer matches a quoted phrase as a substring, case-insensitively.
            phrase = '"' + query.replace('"', '""') + '"'
            return conn.execute(
                f"SELECT e.*, {SHA256_COLUMN}, {CRC32_COLUMN} "
                f"FROM names JOIN entries e ON e.id = names.rowid {DIGEST_JOIN} "
                "WHERE names MATCH ? AND names.rowid > ? ORDER BY names.rowid LIMIT ?",
                (phrase, after, limit + 1),
            ).fetchall()
        # Shorter than a trigram: a LIKE over the case-folded names (LIKE itself folds ASCII
        # only), stopped at the page size.
        folded = query.casefold()
        pattern = "%" + folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return conn.execute(
            f"{WITH_DIGEST} WHERE e.id > ? AND e.folded LIKE ? ESCAPE '\\' ORDER BY e.id LIMIT ?",
            (after, pattern, limit + 1),
        ).fetchall()

    @recovering
    def put(self, entry: Entry) -> None:
        parent, name = split(entry.path)
        with self._write() as w:
            self._upsert(w, parent, entry)

    @recovering
    def put_many(self, entries: list[Entry]) -> None:
        """Add or update entries in one transaction (a bucket listing's page)."""
        with self._write() as w:
            for entry in entries:
                self._upsert(w, split(entry.path)[0], entry)

    @recovering
    def last_entry_id(self) -> int:
        """The highest entry id: an entry added later has a higher one."""
        with self._connection() as conn:
            return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM entries").fetchone()[0])

    @recovering
    def keep_only(self, paths: set[str], *, up_to: int | None = None) -> int:
        """Drop every entry whose path is not in `paths` (what a full listing did not see) and,
        with `up_to`, whose id is at most that (`last_entry_id` when the listing began: what was
        added since, by Ferry's own writes, stays); returns how many were dropped."""
        with self._connection() as conn:
            rows = conn.execute("SELECT id, parent, name FROM entries").fetchall()
        gone = [
            (r["id"],)
            for r in rows
            if join(r["parent"], r["name"]) not in paths and (up_to is None or r["id"] <= up_to)
        ]
        if gone:
            with self._write() as w:
                w.executemany("DELETE FROM entries WHERE id = ?", gone)
        return len(gone)

    @recovering
    def forget(self, path: str) -> None:
        """Drop an entry found missing on disk, if the index still has it (a read first: a flood
        of 404s must not turn into a flood of write transactions)."""
        # With ROOT itself gone (an unmounted volume), nothing is known to be deleted: keep it all.
        if os.path.isdir(self.policy.root) and self.get(path) is not None:
            self.remove(path)

    @recovering
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
        parent, name = split(path)
        low, high = subtree_bounds(path)
        w.execute("DELETE FROM entries WHERE parent = ? AND name = ?", (parent, name))
        w.execute("DELETE FROM entries WHERE parent = ? OR (parent >= ? AND parent < ?)", (path, low, high))
        w.execute("DELETE FROM dirs WHERE path = ? OR (path >= ? AND path < ?)", (path, low, high))
