"""The index's digests: one per inode, valid only for the identity it was computed from
(digests.py says why), and the queue of files whose bytes are new or changed since last hashed
(`pending`, filled by triggers on the entries table), which the digest worker (integrity.py) works
through.
"""

from __future__ import annotations

from app.storage.database import Database, recovering
from app.storage.errors import IndexRebuilding
from app.storage.schema import CRC32_COLUMN, DIGEST_JOIN, WITH_DIGEST, entry_from_row, scope, subtree_bounds
from app.storage.values import EMPTY_DIGEST, Entry, FileDigest, Identity

# (parent, name, size, mtime_ns, dev, ino, crc32): a file as a folder archive lists it
ArchiveRow = tuple[str, str, int, int, int, int, int | None]


class DigestStore(Database):
    """Reads and writes of the digests and pending tables."""

    @recovering
    def digest(self, ident: Identity) -> FileDigest | None:
        """The digest of exactly this file identity, if known."""
        if ident[2] == 0:
            return EMPTY_DIGEST
        with self._connection() as conn:
            row = conn.execute(
                "SELECT sha256, piece_length, pieces, crc32 FROM digests "
                "WHERE dev = ? AND ino = ? AND size = ? AND mtime_ns = ?",
                ident,
            ).fetchone()
        if row is None:
            return None
        return FileDigest(row["sha256"], row["piece_length"], row["pieces"], row["crc32"])

    @recovering
    def put_digest(self, ident: Identity, digest: FileDigest, *, done: int | None = None) -> None:
        """Store a digest for an identity (and, with `done`, take that entry off the queue)."""
        if ident[2] == 0:
            return  # every empty file's digest is known
        with self._write() as w:
            if done is not None:
                w.execute("DELETE FROM pending WHERE id = ?", (done,))
            w.execute(
                "INSERT INTO digests (dev, ino, size, mtime_ns, sha256, piece_length, pieces, crc32) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dev, ino) DO UPDATE SET size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, "
                "piece_length = excluded.piece_length, pieces = excluded.pieces, crc32 = excluded.crc32",
                (*ident, digest.sha256, digest.piece_length, digest.pieces, digest.crc32),
            )

    @recovering
    def pending_digests(self, limit: int, after: int = 0) -> list[tuple[int, Entry]]:
        """Files whose bytes are new or changed since last hashed, in entry order after `after`."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT e.* FROM pending p JOIN entries e ON e.id = p.id "
                "WHERE p.id > ? ORDER BY p.id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [(r["id"], entry_from_row(r)) for r in rows]

    @recovering
    def pending_count(self) -> int:
        with self._connection() as conn:
            return int(conn.execute("SELECT count(*) AS n FROM pending").fetchone()["n"])

    @recovering
    def done_digest(self, entry_id: int) -> None:
        with self._write() as w:
            w.execute("DELETE FROM pending WHERE id = ?", (entry_id,))

    @recovering
    def prune_digests(self) -> int:
        """Forget the digests of inodes no entry has any more; returns how many."""
        with self._write() as w:
            cursor = w.execute("DELETE FROM digests WHERE (dev, ino) NOT IN (SELECT dev, ino FROM entries)")
            return cursor.rowcount

    @recovering
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
        where, args = _subtree_page(directory, recursive, after)
        if where is None:
            return []  # past the directory's own files
        if missing_only:
            where += " AND d.sha256 IS NULL AND e.size > 0"
        with self._connection() as conn:
            rows = conn.execute(
                f"{WITH_DIGEST} WHERE NOT e.is_dir AND {where} ORDER BY e.parent, e.name LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [entry_from_row(r) for r in rows]

    @recovering
    def archive_rows(
        self, directory: str, *, limit: int, after: tuple[str, str] = ("", "")
    ) -> list[ArchiveRow]:
        """What a folder archive needs of the files below `directory`, one page in (parent, name)
        order after `after`: (parent, name, size, mtime_ns, dev, ino, crc32 or None), as plain
        tuples (a 10,000-file manifest reads in a fraction of the time of `Entry`s)."""
        if self.rebuilding:
            raise IndexRebuilding()  # subfolders the rebuild has not reached yet would be missing
        where, args = _subtree_page(directory, True, after)
        with self._connection() as conn:
            cursor = conn.cursor()
            cursor.row_factory = None
            rows: list[ArchiveRow] = cursor.execute(
                f"SELECT e.parent, e.name, e.size, e.mtime_ns, e.dev, e.ino, {CRC32_COLUMN} "
                f"FROM entries e {DIGEST_JOIN} WHERE NOT e.is_dir AND {where} "
                "ORDER BY e.parent, e.name LIMIT ?",
                (*args, limit),
            ).fetchall()
        return rows

    @recovering
    def digest_coverage(self, directory: str, *, recursive: bool, limit: int) -> tuple[int, int, int]:
        """(files, files without a known digest, their bytes) in a directory or its subtree, as
        indexed (the caller brings a directory that changed on disk up to date first); counts stop
        past `limit` files."""
        if recursive and self.rebuilding:
            raise IndexRebuilding()  # subfolders the rebuild has not reached yet would be missing
        where, args = scope(directory, recursive)
        with self._connection() as conn:
            row = conn.execute(
                "SELECT count(*) AS files, count(*) - count(sha256) AS missing, "
                "coalesce(sum(CASE WHEN sha256 IS NULL THEN size END), 0) AS missing_bytes "
                f"FROM ({WITH_DIGEST} WHERE NOT e.is_dir AND {where} LIMIT ?)",
                (*args, limit),
            ).fetchone()
        return int(row["files"]), int(row["missing"]), int(row["missing_bytes"])


def _subtree_page(
    directory: str, recursive: bool, after: tuple[str, str]
) -> tuple[str | None, tuple[str, ...]]:
    """The SQL condition (on entries `e`) for the files of a directory (or its subtree) after the
    file `after`, and its arguments; None when no file of the directory's own can follow."""
    # Each form below is one range of the (parent, name) index, walked in order.
    after = max(after, (directory, ""))
    if not recursive:
        if after[0] != directory:
            return None, ()
        return "e.parent = ? AND e.name > ?", after
    if not directory:
        return "(e.parent, e.name) > (?, ?)", after
    low, high = subtree_bounds(directory)
    where = "(e.parent, e.name) > (?, ?) AND e.parent < ? AND (e.parent = ? OR e.parent >= ?)"
    return where, (*after, high, directory, low)
