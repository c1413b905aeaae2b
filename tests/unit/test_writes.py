"""AtomicWrite, commit_all, delete and remove_stale (app/storage/writes.py) on a real directory:
readers see the old file or the new one, never a partial one; a refused or aborted write leaves the
target and its directory as they were."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.storage.errors import InTheWay, NotServable
from app.storage.paths import TEMP_PREFIX, PathPolicy, WriteTarget, child_target, open_write_target
from app.storage.writes import AtomicWrite, commit_all, delete, remove_stale, too_long


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def policy(root: Path) -> PathPolicy:
    return PathPolicy(root=root)


@pytest.fixture
def targets(policy: PathPolicy) -> Iterator[list[WriteTarget]]:
    """Targets a test opens (open_target), closed when it ends."""
    opened: list[WriteTarget] = []
    yield opened
    for target in opened:
        target.close()


def open_target(policy: PathPolicy, targets: list[WriteTarget], path: str) -> WriteTarget:
    target = open_write_target(path, policy, create_parents=True)
    targets.append(target)
    return target


def started(target: WriteTarget, data: bytes) -> AtomicWrite:
    write = AtomicWrite(target, fsync=False)
    write.open()
    write.write(data)
    return write


def allow(_: os.stat_result | None) -> None:
    return None


def refuse(_: os.stat_result | None) -> None:
    raise InTheWay("refused by the check")


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX))


def test_a_commit_replaces_the_target_only_when_it_is_renamed_into_place(
    root: Path, policy: PathPolicy, targets: list[WriteTarget]
) -> None:
    (root / "a.txt").write_bytes(b"old")
    write = started(open_target(policy, targets, "a.txt"), b"new ")
    write.write(b"content")
    assert (root / "a.txt").read_bytes() == b"old"  # a reader meanwhile sees the old file whole
    assert temporaries(root) == [write.temp_name]
    created, st = write.commit(allow)
    assert not created
    assert (root / "a.txt").read_bytes() == b"new content"
    assert st.st_size == write.size == len(b"new content")
    assert temporaries(root) == []


def test_a_new_file_and_its_parents_are_reported_as_created(
    root: Path, policy: PathPolicy, targets: list[WriteTarget]
) -> None:
    target = open_target(policy, targets, "x/y/new.bin")
    assert target.created == ["x", "x/y"] and target.path == "x/y/new.bin"
    write = started(target, b"data")
    assert write.temp_path == f"x/y/{write.temp_name}"
    created, _ = write.commit(allow)
    assert created and (root / "x" / "y" / "new.bin").read_bytes() == b"data"


def test_an_abort_leaves_the_target_and_no_temporary_file(
    root: Path, policy: PathPolicy, targets: list[WriteTarget]
) -> None:
    (root / "a.txt").write_bytes(b"old")
    write = started(open_target(policy, targets, "a.txt"), b"partial")
    write.abort()
    assert (root / "a.txt").read_bytes() == b"old"
    assert temporaries(root) == []
    with pytest.raises(OSError) as raised:
        write.write(b"more")
    assert raised.value.errno == errno.ECANCELED
    write.abort()  # twice is harmless


@pytest.mark.parametrize("in_the_way", ["check", "directory", "symlink"])
def test_a_refused_commit_keeps_the_target_as_it_was(
    root: Path, policy: PathPolicy, targets: list[WriteTarget], in_the_way: str
) -> None:
    if in_the_way == "directory":
        (root / "a.txt").mkdir()
    elif in_the_way == "symlink":
        (root / "elsewhere.txt").write_bytes(b"old")
        (root / "a.txt").symlink_to("elsewhere.txt")
    else:
        (root / "a.txt").write_bytes(b"old")
    write = started(open_target(policy, targets, "a.txt"), b"new")
    with pytest.raises(InTheWay):
        write.commit(refuse if in_the_way == "check" else allow)
    write.abort()
    assert temporaries(root) == []
    if in_the_way == "directory":
        assert (root / "a.txt").is_dir()
    else:
        assert (root / "a.txt").read_bytes() == b"old"
        assert (root / "a.txt").is_symlink() == (in_the_way == "symlink")


def test_the_check_sees_the_current_target_under_the_lock(
    root: Path, policy: PathPolicy, targets: list[WriteTarget]
) -> None:
    seen: list[int | None] = []
    write = started(open_target(policy, targets, "a.txt"), b"one")
    write.commit(lambda st: seen.append(None if st is None else st.st_size))
    second = started(open_target(policy, targets, "a.txt"), b"second")
    second.commit(lambda st: seen.append(None if st is None else st.st_size))
    assert seen == [None, 3]


def test_commit_all_stores_every_file_or_none(
    root: Path, policy: PathPolicy, targets: list[WriteTarget]
) -> None:
    (root / "b.txt").mkdir()  # in the way of the second file
    form = open_target(policy, targets, "")  # one directory's descriptor, as a form upload has
    writes = [started(child_target(form, f"{n}.txt", policy), n.encode()) for n in "ab"]
    with pytest.raises(InTheWay):
        commit_all(writes, allow)
    for write in writes:
        write.abort()
    assert not (root / "a.txt").exists() and temporaries(root) == []

    (root / "b.txt").rmdir()
    writes = [started(child_target(form, f"{n}.txt", policy), n.encode()) for n in "ab"]
    results = commit_all(writes, allow)
    assert [created for created, _ in results] == [True, True]
    assert (root / "a.txt").read_bytes() == b"a" and (root / "b.txt").read_bytes() == b"b"


def test_commit_all_takes_the_files_of_one_directory(policy: PathPolicy, targets: list[WriteTarget]) -> None:
    writes = [started(open_target(policy, targets, p), b"x") for p in ("a.txt", "sub/b.txt")]
    with pytest.raises(ValueError):
        commit_all(writes, allow)
    for write in writes:
        write.abort()


def test_delete_removes_a_file_or_an_empty_directory_only(
    root: Path, policy: PathPolicy, targets: list[WriteTarget]
) -> None:
    (root / "f.txt").write_bytes(b"x")
    (root / "full").mkdir()
    (root / "full" / "inner.txt").write_bytes(b"x")
    (root / "empty").mkdir()
    with pytest.raises(NotServable):
        delete(open_target(policy, targets, "f.txt"), allow, directory=True)  # "f.txt/" names no file
    with pytest.raises(InTheWay):
        delete(open_target(policy, targets, "full"), allow)
    with pytest.raises(InTheWay):
        delete(open_target(policy, targets, "f.txt"), refuse)
    assert (root / "f.txt").exists() and (root / "full" / "inner.txt").exists()
    assert delete(open_target(policy, targets, "f.txt"), allow) is False
    assert delete(open_target(policy, targets, "empty"), allow, directory=True) is True
    assert not (root / "f.txt").exists() and not (root / "empty").exists()
    with pytest.raises(NotServable):
        delete(open_target(policy, targets, "f.txt"), allow)


def test_remove_stale_spares_live_young_and_foreign_files(root: Path) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        old = 1_000_000_000
        for name in ("live", "old", "young"):
            (root / f"{TEMP_PREFIX}{name}.part").write_bytes(b"x")
        for name in ("live", "old"):
            os.utime(root / f"{TEMP_PREFIX}{name}.part", (old, old))
        (root / "plain.txt").write_bytes(b"x")
        holder = os.open(root / f"{TEMP_PREFIX}live.part", os.O_RDONLY)
        fcntl.flock(holder, fcntl.LOCK_SH)  # a writer still holds it, as AtomicWrite does
        try:
            assert not remove_stale(fd, f"{TEMP_PREFIX}live.part", min_age=60)
            assert not remove_stale(fd, f"{TEMP_PREFIX}young.part", min_age=60)
            assert not remove_stale(fd, "plain.txt")
            assert remove_stale(fd, f"{TEMP_PREFIX}old.part", min_age=60)
            assert remove_stale(fd, f"{TEMP_PREFIX}gone.part", min_age=60)  # already gone: gone
        finally:
            os.close(holder)
        assert sorted(p.name for p in root.iterdir()) == sorted(
            [f"{TEMP_PREFIX}live.part", f"{TEMP_PREFIX}young.part", "plain.txt"]
        )
        assert remove_stale(fd, f"{TEMP_PREFIX}young.part")  # without min_age: at once
        assert not (root / f"{TEMP_PREFIX}young.part").exists()
    finally:
        os.close(fd)


def test_too_long_names_the_limit_a_path_breaks(root: Path) -> None:
    assert too_long(root, "a/b.txt") is None
    assert too_long(root, "a" * 255) is None
    assert too_long(root, "d/" + "a" * 256) == "a name is longer than 255 bytes"
    assert too_long(root, "é" * 128) == "a name is longer than 255 bytes"  # bytes, not characters
    deep = "/".join(["d" * 200] * 21)
    assert too_long(root, deep) == "the path is longer than 4095 bytes"
