"""The index's record of temporary upload files: those Ferry's own uploads began (with the
process that writes each), and those a scan found on disk that no upload of this index began; the
sweep (watch.py) removes the ones no live upload owns.

A resumable upload's temporary file outlives any process (resumable.py): its row names the
upload (RESUMABLE_OWNER + id) instead of a process, and it lives until the upload completes, is
terminated or expires (`expired_resumable`, swept likewise).
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from app.storage.database import Database, recovering

# A temporary upload file untouched for this long, and locked by no writer, belongs to no live
# upload: a live one is written to (mtime) or held open and locked (AtomicWrite) by its writer.
STALE_UPLOAD_SECONDS = 3600
FOUND_OWNER = ""  # an uploads row for a temporary file seen on disk, not begun by this index
RESUMABLE_OWNER = "resumable:"  # an uploads row of a resumable upload's file: alive until it expires


@dataclass
class Resumable:
    """One resumable upload as the index keeps it (a row of `resumable`)."""

    id: str
    path: str  # the target, '/'-separated below ROOT
    temp: str  # its temporary file beside the target, likewise
    length: int | None  # declared length; None until declared (tus creation-defer-length)
    offset: int  # bytes durably stored and acknowledged
    # The SHA-256 of the bytes below `offset` as OpenSSL's saved state (running_sha256.py: any
    # process continues it), None where that library is missing; and their CRC-32.
    sha256: bytes | None
    crc32: int
    created: int  # unix seconds
    expires: int
    owner: str  # sha256 hex of the token that created it: only that token sees it
    metadata: dict[str, str] = field(default_factory=dict)  # the protocol's own fields


def _resumable(row: sqlite3.Row) -> Resumable:
    values = {k: row[k] for k in row.keys()}
    values["metadata"] = json.loads(values["metadata"])
    return Resumable(**values)


def _process_key(pid: int) -> str | None:
    """pid plus its start time: a restarted container reuses pids, never both."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return f"{pid}:{fields[19]}"  # field 22 of stat(5): starttime


class UploadStore(Database):
    """Reads and writes of the uploads table."""

    @recovering
    def begin_upload(self, temp_path: str) -> None:
        """Record a temporary upload file, so a crash cannot leave it behind unnoticed."""
        with self._write() as w:
            owner = _process_key(os.getpid()) or str(os.getpid())
            w.execute("INSERT OR REPLACE INTO uploads (path, owner) VALUES (?, ?)", (temp_path, owner))

    @recovering
    def end_upload(self, temp_path: str) -> None:
        with self._write() as w:
            w.execute("DELETE FROM uploads WHERE path = ?", (temp_path,))

    @recovering
    def orphaned_uploads(self) -> list[str]:
        """Temporary upload files whose writing process is gone."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT path, owner FROM uploads WHERE owner != ? AND owner NOT LIKE ?",
                (FOUND_OWNER, RESUMABLE_OWNER + "%"),
            ).fetchall()
        return [r["path"] for r in rows if _process_key(int(r["owner"].partition(":")[0])) != r["owner"]]

    @recovering
    def found_uploads(self) -> list[str]:
        """Temporary upload files a scan saw on disk that no upload of this index began: left by
        a crash that lost the index, by a failed upload, or in progress on another replica."""
        with self._connection() as conn:
            rows = conn.execute("SELECT path FROM uploads WHERE owner = ?", (FOUND_OWNER,)).fetchall()
        return [r["path"] for r in rows]

    # -- resumable uploads -------------------------------------------------------------------

    @recovering
    def add_resumable(self, upload: Resumable) -> None:
        """Record a new resumable upload and its temporary file, in one transaction."""
        with self._write() as w:
            w.execute(
                "INSERT INTO resumable (id, path, temp, length, offset, sha256, crc32, created,"
                " expires, owner, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    upload.id,
                    upload.path,
                    upload.temp,
                    upload.length,
                    upload.offset,
                    upload.sha256,
                    upload.crc32,
                    upload.created,
                    upload.expires,
                    upload.owner,
                    json.dumps(upload.metadata),
                ),
            )
            w.execute(
                "INSERT OR REPLACE INTO uploads (path, owner) VALUES (?, ?)",
                (upload.temp, RESUMABLE_OWNER + upload.id),
            )

    @recovering
    def resumable(self, upload_id: str) -> Resumable | None:
        with self._connection() as conn:
            row = conn.execute("SELECT * FROM resumable WHERE id = ?", (upload_id,)).fetchone()
        return None if row is None else _resumable(row)

    @recovering
    def record_resumable(self, upload: Resumable) -> None:
        """Its offset, hashes, length and expiry as they are now (after the bytes are durable)."""
        with self._write() as w:
            w.execute(
                "UPDATE resumable SET offset = ?, sha256 = ?, crc32 = ?, length = ?, expires = ?"
                " WHERE id = ?",
                (upload.offset, upload.sha256, upload.crc32, upload.length, upload.expires, upload.id),
            )

    @recovering
    def drop_resumable(self, upload_id: str) -> None:
        """Forget an upload (completed, terminated or expired) and its temporary file's row."""
        with self._write() as w:
            w.execute("DELETE FROM resumable WHERE id = ?", (upload_id,))
            w.execute("DELETE FROM uploads WHERE owner = ?", (RESUMABLE_OWNER + upload_id,))

    @recovering
    def expired_resumable(self, now: float) -> list[Resumable]:
        with self._connection() as conn:
            rows = conn.execute("SELECT * FROM resumable WHERE expires <= ?", (int(now),)).fetchall()
        return [_resumable(r) for r in rows]

    @recovering
    def count_resumable(self, owner: str) -> tuple[int, int]:
        """How many uploads are open: of `owner`, and in all."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT COUNT(*) AS total, COALESCE(SUM(owner = ?), 0) AS mine FROM resumable", (owner,)
            ).fetchone()
        return row["mine"], row["total"]
