"""The index's record of temporary upload files: those Ferry's own uploads began (with the
process that writes each), and those a scan found on disk that no upload of this index began; the
sweep (watch.py) removes the ones no live upload owns.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.storage.database import Database, recovering

# A temporary upload file untouched for this long, and locked by no writer, belongs to no live
# upload: a live one is written to (mtime) or held open and locked (AtomicWrite) by its writer.
STALE_UPLOAD_SECONDS = 3600
FOUND_OWNER = ""  # an uploads row for a temporary file seen on disk, not begun by this index


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
            rows = conn.execute("SELECT path, owner FROM uploads WHERE owner != ?", (FOUND_OWNER,)).fetchall()
        return [r["path"] for r in rows if _process_key(int(r["owner"].partition(":")[0])) != r["owner"]]

    @recovering
    def found_uploads(self) -> list[str]:
        """Temporary upload files a scan saw on disk that no upload of this index began: left by
        a crash that lost the index, by a failed upload, or in progress on another replica."""
        with self._connection() as conn:
            rows = conn.execute("SELECT path FROM uploads WHERE owner = ?", (FOUND_OWNER,)).fetchall()
        return [r["path"] for r in rows]
