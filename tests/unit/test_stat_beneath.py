"""paths.stat_beneath: the stat the index takes of a gated path, checked on a pinned descriptor as
open_beneath checks it, without opening the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.storage.errors import NotServable
from app.storage.paths import PathPolicy, SafePath, stat_beneath


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "file.txt").write_bytes(b"hello")
    (root / ".hidden").write_bytes(b"secret")
    (tmp_path / "outside.txt").write_bytes(b"outside")
    (root / "out").symlink_to(tmp_path / "outside.txt")
    (root / "to-hidden").symlink_to(root / ".hidden")
    (root / "to-file").symlink_to(root / "dir" / "file.txt")
    os.mkfifo(root / "fifo")
    return root.resolve()


def _stat(root: Path, path: str, **policy: bool) -> os.stat_result:
    rules = PathPolicy(root=root, **policy)
    return stat_beneath(SafePath(rules.root / path), rules)


@pytest.mark.parametrize("path", ["dir", "dir/file.txt", "to-file", ""])
def test_a_servable_path_gets_the_stat_of_what_it_names(root: Path, path: str) -> None:
    assert os.path.samestat(_stat(root, path), os.stat(root / path))


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("out", id="symlink-out-of-root"),
        pytest.param("to-hidden", id="symlink-to-a-hidden-name"),
        pytest.param("fifo", id="fifo"),
        pytest.param("missing", id="missing"),
        pytest.param("dir/file.txt/below", id="below-a-file"),
    ],
)
def test_what_the_gate_refuses_is_not_servable(root: Path, path: str) -> None:
    with pytest.raises(NotServable):
        _stat(root, path)


def test_the_policy_decides_where_a_symlink_may_lead(root: Path) -> None:
    assert _stat(root, "out", follow_symlinks=True).st_size == len(b"outside")
    assert _stat(root, "to-hidden", show_hidden=True).st_size == len(b"secret")


def test_a_file_it_may_not_read_is_still_stat_ed(root: Path) -> None:
    """Nothing is opened for reading: the index lists a file whether or not Ferry can read it."""
    target = root / "dir" / "file.txt"
    target.chmod(0)
    try:
        assert _stat(root, "dir/file.txt").st_size == 5
    finally:
        target.chmod(0o644)
