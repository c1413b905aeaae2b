"""The identity of an object in a bucket (app/storage/values.py `entry_from_object`): what its
ETag and its digest in the index are keyed by."""

from __future__ import annotations

from pathlib import Path

from app.storage.index import Index
from app.storage.paths import PathPolicy
from app.storage.values import FileDigest, entry_from_object

SAME_BYTES = '"9b2cf535f27731c974343645a3985328-3":'  # a multipart ETag: the same for the same bytes


def test_two_objects_with_the_same_bytes_have_identities_of_their_own() -> None:
    a = entry_from_object("in/big.bin", False, 12, 1_000_000_000, SAME_BYTES)
    b = entry_from_object("form/copy.bin", False, 12, 2_000_000_000, SAME_BYTES)
    assert (a.dev, a.ino) != (b.dev, b.ino)
    # Stable: every replica, listing or download, makes the same one.
    assert entry_from_object("in/big.bin", False, 12, 1_000_000_000, SAME_BYTES) == a
    assert entry_from_object("in/big.bin", False, 12, 1_000_000_000, '"other":').ino != a.ino


def test_the_digest_of_one_is_not_lost_when_a_copy_is_stored(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    index = Index(tmp_path / "index.sqlite3", PathPolicy(root=root))
    try:
        a = entry_from_object("in/big.bin", False, 12, 1_000_000_000, SAME_BYTES)
        b = entry_from_object("form/copy.bin", False, 12, 2_000_000_000, SAME_BYTES)
        digest = FileDigest(b"\x01" * 32)
        for e in (a, b):
            index.put_digest((e.dev, e.ino, e.size, e.mtime_ns), digest)
        assert index.digest((a.dev, a.ino, a.size, a.mtime_ns)) == digest
        assert index.digest((b.dev, b.ino, b.size, b.mtime_ns)) == digest
    finally:
        index.close()
