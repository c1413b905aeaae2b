"""Writes the file system refuses, in-process: each gets its own 4xx/507, never a 500.

Names and paths too long to store are refused before a directory is made or a body byte is read;
a full disk is 507 (making parent folders too); a read-only or immutable folder is 403; a form
whose later file cannot be stored stores none of its files. The disk and permission cases mount a
small tmpfs (or set the immutable flag) and so need root, as CI has.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from app.main import FerryApp, create_app
from tests.conftest import make_settings
from tests.support.inprocess import in_process

pytestmark = pytest.mark.anyio

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEMP_PREFIX = ".ferry-upload-"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Body:
    """A request body that notes whether the server started reading it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.read = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.read = True
        yield self.data


def _app(root: Path, index: Path) -> FerryApp:
    return create_app(make_settings(root, write_token=TOKEN, index_path=index))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
async def client(root: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = _app(root, tmp_path / "index.sqlite3")
    async with in_process(app, lifespan=False) as c:
        yield c


def everything(root: Path) -> list[str]:
    """Every entry below `root`, temporary files included, '/'-separated and sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            found.append(str(Path(dirpath, name).relative_to(root)))
    return sorted(found)


def form(parts: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    body = b""
    for name, content in parts:
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="{name}"\r\n'.encode()
        body += b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}


# -- names and paths too long ----------------------------------------------------------------


@pytest.mark.parametrize("target", ["n" * 256, "new/" + "n" * 256, "n" * 256 + "/f.txt", "é" * 128])
async def test_a_name_over_255_bytes_is_414_before_anything_is_made_or_read(
    client: httpx.AsyncClient, root: Path, target: str
) -> None:
    body = Body(b"never read")
    response = await client.put(f"/files/{target}", content=body, headers=AUTH)
    assert response.status_code == 414, response.text
    assert "255 bytes" in response.json()["detail"]
    assert not body.read
    assert everything(root) == []


async def test_a_name_of_255_bytes_is_stored(client: httpx.AsyncClient, root: Path) -> None:
    name = "é" * 127 + "n"  # 255 bytes in UTF-8
    response = await client.put(f"/files/{name}", content=b"ok", headers=AUTH)
    assert response.status_code == 201, response.text
    assert (await client.get(f"/files/{name}")).content == b"ok"


def _relative_path(length: int) -> str:
    """A '/'-separated path of exactly `length` bytes, in names of at most 200 bytes."""
    names = []
    while length > 201:
        names.append("d" * 200)
        length -= 201
    names.append("f" * length)
    return "/".join(names)


async def test_a_path_over_path_max_is_414_before_anything_is_made_or_read(
    client: httpx.AsyncClient, root: Path
) -> None:
    room = 4095 - len(os.fsencode(root)) - 1  # ROOT + '/' + path + NUL fills PATH_MAX exactly
    too_long = _relative_path(room + 1)
    body = Body(b"never read")
    response = await client.put(f"/files/{too_long}", content=body, headers=AUTH)
    assert response.status_code == 414, response.text[-300:]
    assert "4095 bytes" in response.json()["detail"]
    assert not body.read
    assert everything(root) == []
    directory = _relative_path(room - 2)  # fits, but not with '/x.bin' after it
    posted, headers = form([("x.bin", b"x")])
    response = await client.post(f"/files/{directory}/", content=posted, headers=headers)
    assert response.status_code == 400, response.text[-300:]  # the part's name is what does not fit
    assert not [p for p in everything(root) if p.endswith("x.bin") or TEMP_PREFIX in p]

    # The longest path that fits is stored, and can be read back and listed.
    longest = _relative_path(room)
    response = await client.put(f"/files/{longest}", content=b"fits", headers=AUTH)
    assert response.status_code == 201, response.text[-300:]
    assert (await client.get(f"/files/{longest}")).content == b"fits"
    parent, _, name = longest.rpartition("/")
    listing = await client.get(f"/files/{parent}/", params={"format": "json"})
    assert name in {e["name"] for e in listing.json()["entries"]}


async def test_a_form_part_whose_name_is_too_long_is_400_and_nothing_is_kept(
    client: httpx.AsyncClient, root: Path
) -> None:
    body, headers = form([("first.txt", b"1"), ("n" * 256, b"2"), ("third.txt", b"3")])
    response = await client.post("/files/in/", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert "255 bytes" in response.json()["detail"]
    assert [p for p in everything(root) if p != "in"] == []


# -- a form is stored whole or not at all -------------------------------------------------------


@pytest.mark.parametrize("obstacle", ["directory", "symlink"])
async def test_a_form_whose_later_file_conflicts_stores_none_of_its_files(
    client: httpx.AsyncClient, root: Path, obstacle: str
) -> None:
    (root / "in").mkdir()
    (root / "in" / "kept.txt").write_bytes(b"old")
    if obstacle == "directory":
        (root / "in" / "b.txt").mkdir()
    else:
        (root / "in" / "b.txt").symlink_to("kept.txt")
    before = everything(root)
    body, headers = form([("a.txt", b"new a"), ("kept.txt", b"new kept"), ("b.txt", b"new b")])
    response = await client.post("/files/in/", content=body, headers=headers)
    assert response.status_code == 409, response.text
    assert everything(root) == before  # no a.txt, no temporary file
    assert "b.txt" in response.json()["detail"]
    assert (root / "in" / "kept.txt").read_bytes() == b"old"

    # Without the obstacle, the same form is stored whole.
    if obstacle == "directory":
        (root / "in" / "b.txt").rmdir()
    else:
        (root / "in" / "b.txt").unlink()
    response = await client.post("/files/in/", content=body, headers=headers)
    assert response.status_code == 201, response.text
    assert [e["name"] for e in response.json()["entries"]] == ["a.txt", "kept.txt", "b.txt"]
    assert (root / "in" / "kept.txt").read_bytes() == b"new kept"


# -- full disks and folders Ferry may not write -----------------------------------------------------


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs and setting the immutable flag need root (CI runs as root)")
    for tool in ("mount", "umount", "chattr"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"{' '.join(command)} failed: {done.stderr.strip()}")


@pytest.fixture
def tmpfs(root: Path) -> Iterator[Path]:
    """ROOT/disk: a mount point; the test mounts a tmpfs there with `_run("mount", ...)`."""
    _need_root()
    point = root / "disk"
    point.mkdir()
    yield point
    if os.path.ismount(point):
        subprocess.run(["umount", str(point)], check=False)
        if os.path.ismount(point):
            subprocess.run(["umount", "-l", str(point)], check=False)


async def test_no_room_for_parent_folders_is_507(client: httpx.AsyncClient, tmpfs: Path) -> None:
    _run("mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=8", "tmpfs", str(tmpfs))
    for i in range(100):  # use up the inodes: a folder needs one
        try:
            (tmpfs / f"f{i}").touch()
        except OSError:
            break
    body = Body(b"never stored")
    response = await client.put("/files/disk/new/deeper/f.bin", content=body, headers=AUTH)
    assert response.status_code == 507, response.text
    assert not body.read
    posted, headers = form([("x.bin", b"x")])
    response = await client.post("/files/disk/other/", content=posted, headers=headers)
    assert response.status_code == 507, response.text
    assert not any(p.name.startswith(("new", "other", TEMP_PREFIX)) for p in tmpfs.iterdir())


async def test_no_room_for_the_body_is_507_and_nothing_is_kept(
    client: httpx.AsyncClient, tmpfs: Path
) -> None:
    _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmpfs))
    response = await client.put("/files/disk/big.bin", content=os.urandom(2 * 1024**2), headers=AUTH)
    assert response.status_code == 507, response.text
    assert list(tmpfs.iterdir()) == []


async def test_a_read_only_folder_is_403(client: httpx.AsyncClient, root: Path, tmpfs: Path) -> None:
    _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmpfs))
    (tmpfs / "old.txt").write_bytes(b"old")
    (tmpfs / "sub").mkdir()
    _run("mount", "-o", "remount,ro", str(tmpfs))
    put = await client.put("/files/disk/new.txt", content=b"x", headers=AUTH)
    nested = await client.put("/files/disk/newdir/new.txt", content=b"x", headers=AUTH)
    replaced = await client.put("/files/disk/old.txt", content=b"x", headers=AUTH)
    posted, headers = form([("x.bin", b"x")])
    post = await client.post("/files/disk/sub/", content=posted, headers=headers)
    deleted = await client.delete("/files/disk/old.txt", headers=AUTH)
    for response in (put, nested, replaced, post, deleted):
        assert response.status_code == 403, (response.request.method, response.request.url, response.text)
    assert (tmpfs / "old.txt").read_bytes() == b"old"
    assert (await client.get("/files/disk/old.txt")).content == b"old"  # reads go on


@pytest.fixture
def immutable(root: Path) -> Iterator[Path]:
    """ROOT/frozen with a file, marked immutable (chattr +i): even root may not change it."""
    _need_root()
    frozen = root / "frozen"
    frozen.mkdir()
    (frozen / "old.txt").write_bytes(b"old")
    _run("chattr", "+i", str(frozen))
    yield frozen
    subprocess.run(["chattr", "-i", str(frozen)], check=False)


async def test_an_immutable_folder_is_403(client: httpx.AsyncClient, immutable: Path) -> None:
    put = await client.put("/files/frozen/new.txt", content=b"x", headers=AUTH)
    nested = await client.put("/files/frozen/newdir/new.txt", content=b"x", headers=AUTH)
    posted, headers = form([("x.bin", b"x")])
    post = await client.post("/files/frozen/", content=posted, headers=headers)
    deleted = await client.delete("/files/frozen/old.txt", headers=AUTH)
    for response in (put, nested, post, deleted):
        assert response.status_code == 403, (response.request.method, response.request.url, response.text)
    assert sorted(p.name for p in immutable.iterdir()) == ["old.txt"]
