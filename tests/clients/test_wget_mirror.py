"""`wget -r -np` mirrors a nested tree from the HTML listings, byte for byte, hidden files absent.

The listings' plain relative `<a href>` links are all wget needs; sorting is a form, so wget fetches
each directory once (plus its "Next page" links), never once per sort order.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.clients.test_real_clients import run
from tests.conftest import ServerFactory
from tests.support.servers import BOTH_TRANSFER_PATHS

pytestmark = pytest.mark.clients

FILES = [
    "README.md",
    "empty.txt",
    "résumé 数据.bin",
    "with space.txt",
    "100% #1?.txt",
    "docs/guide.html",
    "docs/index.txt",
    "docs/Ünïcödé ✓.md",
    "docs/images/logo.svg",
    "docs/images/photo 1.jpg",
    "docs/images/photo 2.jpg",
    "data/2024/q1.csv",
    "data/2024/q2.csv",
    "data/2024/big.bin",
    "data/2023/q4.csv",
    "data/archive/old copy.tar.gz",
    "data/archive/数据/deep.bin",
    "music/a b c/track #1.flac",
    "music/a b c/track #2.flac",
    "music/it's.m3u",
]
HIDDEN = [".env", ".git/config", "docs/.draft.md", "data/.cache/blob.bin"]


def _content(rel: str) -> bytes:
    """Distinct bytes per file; a few are large enough to take several blocks."""
    seed = hashlib.sha256(rel.encode()).digest()
    size = 0 if rel.endswith("empty.txt") else 3 * 1024**2 + 17 if rel.endswith("big.bin") else 1000
    return (seed * (size // len(seed) + 1))[:size]


def _tree(root: Path) -> None:
    for rel in FILES + HIDDEN:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_content(rel))


def _files_under(top: Path) -> set[str]:
    return {
        Path(dirpath, name).relative_to(top).as_posix()
        for dirpath, _, names in os.walk(top)
        for name in names
    }


@BOTH_TRANSFER_PATHS
def test_wget_recursive_mirrors_the_tree(ferry: ServerFactory, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root)
    server = ferry(root)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    args = ["-r", "-np", "-nH", "--cut-dirs=1", "-R", "index.html*", "-e", "robots=off", "-nv"]
    result = run("wget", *args, f"{server.url}/files/", cwd=mirror)
    assert _files_under(mirror) == set(FILES), result.stderr
    for rel in FILES:
        assert (mirror / rel).read_bytes() == _content(rel), rel
    # One request per directory page and per file: no sort orders, no parent pages, no assets.
    requested = [line for line in result.stderr.splitlines() if " URL:" in line]
    directories = {str(Path(rel).parent) for rel in FILES}
    parents = {p.as_posix() for d in directories for p in Path(d).parents} | directories
    assert len(requested) == len(FILES) + len(parents), result.stderr
