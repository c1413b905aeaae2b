"""app/storage/kept.py: a file's descriptor kept open between requests for its path, used only
while the path names that very file unchanged, and closed — at the end of the loop's turn, when
answers of the turn may still be sending from it — once forgotten, pushed out or idle."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from app.storage.kept import KeptFiles
from tests.support.transports import fd_closed


def is_open(fd: int) -> bool:
    return not fd_closed(fd)


def kept_file(kept: KeptFiles, path: Path) -> tuple[bytes, int]:
    raw = os.fsencode(path)
    fd = os.open(path, os.O_RDONLY)
    kept.keep(raw, fd, os.fstat(fd))
    return raw, fd


def test_an_unchanged_file_is_given_its_kept_descriptor(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    kept = KeptFiles()
    raw, fd = kept_file(kept, tmp_path / "f")
    assert kept.get(os.fsencode(tmp_path / "other")) is None
    for _ in range(3):
        found = kept.get(raw)
        assert found is not None and found[0] == fd and found[1].st_size == 4
    kept.close()
    assert not is_open(fd) and kept.get(raw) is None


def _write(path: Path) -> None:
    path.write_bytes(b"longer data")


def _chmod(path: Path) -> None:
    path.chmod(0o600)


def _link(path: Path) -> None:
    os.link(path, path.with_name("second-name"))


def _replace(path: Path) -> None:
    path.with_name("new").write_bytes(b"data")
    os.replace(path.with_name("new"), path)


def _rename_away(path: Path) -> None:
    path.rename(path.with_name("moved"))


def _symlink(path: Path) -> None:
    path.rename(path.with_name("moved"))
    path.symlink_to("moved")  # the very file, through a symlink: opened again, by open_beneath


def _unlink(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("change", [_write, _chmod, _link, _replace, _rename_away, _symlink, _unlink])
def test_a_changed_moved_or_replaced_file_is_forgotten_and_closed_after_the_turn(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"data")
    path.chmod(0o644)

    async def run() -> tuple[bool, bool, bool]:
        kept = KeptFiles()
        raw, fd = kept_file(kept, path)
        assert kept.get(raw) is not None
        change(path)
        forgotten = kept.get(raw) is None
        open_in_the_turn = is_open(fd)  # an answer of this turn may still send from it
        await asyncio.sleep(0)
        closed = not is_open(fd)
        kept.close()
        return forgotten, open_in_the_turn, closed

    assert asyncio.run(run()) == (True, True, True)


def test_the_oldest_is_pushed_out_past_the_limit(tmp_path: Path) -> None:
    kept = KeptFiles(limit=2)
    files = []
    for name in "abc":
        (tmp_path / name).write_bytes(name.encode())
        files.append(kept_file(kept, tmp_path / name))
    (raw_a, fd_a), (raw_b, fd_b), (raw_c, fd_c) = files
    assert len(kept) == 2 and kept.get(raw_a) is None and not is_open(fd_a)  # (no loop: at once)
    assert kept.get(raw_b) is not None and kept.get(raw_c) is not None
    kept.close()
    assert not is_open(fd_b) and not is_open(fd_c)


def test_a_descriptor_not_asked_for_between_two_sweeps_is_closed(tmp_path: Path) -> None:
    (tmp_path / "asked").write_bytes(b"a")
    (tmp_path / "idle").write_bytes(b"i")

    async def run() -> None:
        kept = KeptFiles(idle=3600)  # (swept by hand below)
        asked, asked_fd = kept_file(kept, tmp_path / "asked")
        idle, idle_fd = kept_file(kept, tmp_path / "idle")
        kept._swept()  # both kept since the last sweep
        assert len(kept) == 2
        assert kept.get(asked) is not None
        kept._swept()
        await asyncio.sleep(0)
        assert len(kept) == 1 and kept.get(idle) is None and not is_open(idle_fd)
        kept._swept()
        await asyncio.sleep(0)
        assert len(kept) == 0 and not is_open(asked_fd)
        kept.close()

    asyncio.run(run())


def test_the_sweep_runs_by_itself_while_descriptors_are_kept(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"f")

    async def run() -> None:
        kept = KeptFiles(idle=0.01)
        raw, fd = kept_file(kept, tmp_path / "f")
        for _ in range(3000):  # two sweeps at least: up to 30 s on a loaded machine
            if not len(kept):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        assert len(kept) == 0 and not is_open(fd) and kept._sweep is None
        kept.close()

    asyncio.run(run())
