"""The `Storage` contract (app/storage/backend.py), held by both implementations: the local file
system under a temporary ROOT (app/storage/local.py) and the S3 one against a real engine
(`weed mini`, marker `engine`). Each case asserts the same behaviour of both; where the two
legitimately differ, the case says so. What only one of them has stays beside it
(tests/clients/test_s3_storage.py: multipart uploads, credentials, the engine stopped, exit/fork).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import obstore
import pytest

from app.http.conditional import make_validators
from app.storage.backend import Storage
from app.storage.errors import Changed, InvalidInput, NotServable
from app.storage.local import LocalStorage
from app.storage.paths import TEMP_PREFIX, PathPolicy
from app.storage.s3 import S3Storage
from tests.support.seaweed import Seaweed
from tests.support.storage import body, config, credentials, read

pytestmark = pytest.mark.anyio

KiB, MiB = 1024, 1024**2
CHUNK = 256 * KiB


def etag(st: os.stat_result) -> str:
    """Ferry's ETag of a local file, as downloads send it (and as Ferry gives its local storage)."""
    return make_validators(dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns).etag


def local(root: Path, **policy: bool) -> LocalStorage:
    return LocalStorage(PathPolicy(root=root.resolve(), **policy), etag=etag, chunk_size=CHUNK)


@dataclass
class Backend:
    """One storage under test, and what a test needs to see behind it."""

    kind: str
    storage: Storage
    plant: Callable[[str, bytes], Awaitable[None]]  # a file put there behind the storage's back
    leftovers: Callable[[], list[str]]  # partial uploads left behind (none, ever)


def _local(root: Path, show_hidden: bool) -> Backend:
    async def plant(name: str, data: bytes) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)

    def leftovers() -> list[str]:
        return [str(p) for p in root.rglob(f"{TEMP_PREFIX}*")]

    return Backend("local", local(root, show_hidden=show_hidden), plant, leftovers)


def _s3(engine: Seaweed, name: str, show_hidden: bool) -> Backend:
    prefix = f"c-{name[:40]}-{os.urandom(4).hex()}/".replace("[", "-").replace("]", "")
    storage = S3Storage(
        config(engine, prefix, chunk_size=CHUNK, part_size=5 * MiB, show_hidden=show_hidden),
        credentials(engine),
    )

    async def plant(name: str, data: bytes) -> None:
        await obstore.put_async(engine.store(), prefix + name, data)

    return Backend("s3", storage, plant, engine.pending_uploads)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.engine)])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[..., Backend]]:
    made: list[Backend] = []

    def factory(show_hidden: bool = False) -> Backend:
        root = tmp_path / f"root{len(made)}"
        root.mkdir()
        if request.param == "local":
            made.append(_local(root, show_hidden))
        else:
            engine = request.getfixturevalue("seaweed")
            made.append(_s3(engine, request.node.name, show_hidden))
        return made[-1]

    yield factory
    for backend in made:
        await backend.storage.aclose()


@pytest.fixture
def backend(make: Callable[..., Backend]) -> Backend:
    return make()


async def test_write_stat_read_ranges_and_delete(backend: Backend) -> None:
    storage = backend.storage
    data = os.urandom(3 * MiB + 123)
    written = await storage.write("dir/sub/file.bin", body(data[:MiB], data[MiB:]))
    assert written.sha256 == hashlib.sha256(data).digest() and written.crc32 == zlib.crc32(data)
    stat = await storage.stat("dir/sub/file.bin")
    assert (stat.path, stat.is_dir, stat.size, stat.etag, stat.version) == (
        "dir/sub/file.bin",
        False,
        len(data),
        written.etag,
        written.version,
    )
    assert stat.etag and stat.etag.startswith('"') and stat.etag.endswith('"') and stat.mtime_ns > 0
    folder = await storage.stat("dir")
    assert (folder.path, folder.is_dir, folder.size, folder.etag) == ("dir", True, 0, None)
    assert (await storage.stat("dir/sub")).is_dir
    assert (await storage.stat("")).is_dir
    assert await read(storage, "dir/sub/file.bin", 0, len(data)) == data
    for start, end in [(0, 1), (5, 65541), (MiB - 1, MiB + 1), (len(data) - 10, len(data))]:
        assert await read(storage, "dir/sub/file.bin", start, end) == data[start:end]
    with pytest.raises(NotServable):
        await storage.open_range("dir/sub", 0, 1)  # a folder has no bytes
    await storage.delete("dir/sub/file.bin")
    with pytest.raises(NotServable):
        await storage.stat("dir/sub/file.bin")
    with pytest.raises(NotServable):
        await storage.delete("dir/sub/file.bin")
    # They differ here: an object store's folder is a prefix, gone with its last key; a folder on
    # disk stays (empty) until it is removed.
    if backend.kind == "s3":
        with pytest.raises(NotServable):
            await storage.stat("dir")
    else:
        assert (await storage.stat("dir/sub")).is_dir


async def test_a_range_is_read_in_bounded_chunks_and_stops_when_the_reader_stops(backend: Backend) -> None:
    data = os.urandom(2 * MiB)
    await backend.storage.write("big.bin", body(data))
    stream = await backend.storage.open_range("big.bin", 10, len(data))
    sizes = []
    async for chunk in stream:
        sizes.append(len(chunk))
        if len(sizes) == 2:
            break
    await stream.aclose()
    await stream.aclose()  # idempotent
    assert sizes == [CHUNK, CHUNK]  # chunks of the storage's size, never the whole range
    whole = await backend.storage.open_range("big.bin", 0, len(data))
    assert [len(c) async for c in whole] == [CHUNK] * 8


async def test_a_download_never_mixes_two_versions(backend: Backend) -> None:
    storage = backend.storage
    await storage.write("v.bin", body(b"a" * 4 * MiB))
    stream = await storage.open_range("v.bin", 0, 4 * MiB)
    chunks = aiter(stream)
    first = await anext(chunks)
    await storage.write("v.bin", body(b"b" * 4 * MiB))
    # They differ here, both never mixing: the object store's next window fails (If-Match on the
    # ETag the download began with); an open local file is the old inode, whole, after a replace.
    seen = bytes(first)  # a chunk may be a view of the storage's buffer (backend.Chunk)
    if backend.kind == "s3":
        with pytest.raises(Changed):
            async for chunk in chunks:
                seen += chunk
    else:
        async for chunk in chunks:
            seen += chunk
        assert len(seen) == 4 * MiB
    assert set(seen) == {ord("a")}
    old = await storage.stat("v.bin")
    newer = await storage.write("v.bin", body(b"c" * 10))
    assert (newer.etag, newer.version) != (old.etag, old.version)
    with pytest.raises(Changed):
        await read(storage, "v.bin", 0, 10, if_match=old.etag or "")
    assert await read(storage, "v.bin", 0, 10, if_match=newer.etag or "") == b"c" * 10


async def test_conditional_writes_small_and_large(backend: Backend) -> None:
    storage = backend.storage
    for size in (10, 6 * MiB):  # S3: one conditional PUT; a multipart upload
        path = f"cond-{size}.bin"
        with pytest.raises(Changed):
            await storage.write(path, body(b"0" * size), if_match='"nothing-there-yet"')
        first = await storage.write(path, body(b"1" * size), if_none_match=True)
        with pytest.raises(Changed):
            await storage.write(path, body(b"2" * size), if_none_match=True)
        with pytest.raises(Changed):
            await storage.write(path, body(b"3" * size), if_match='"not-the-etag"')
        assert await read(storage, path, 0, 4) == b"1111"
        second = await storage.write(path, body(b"4" * size), if_match=first.etag)
        assert second.etag != first.etag and await read(storage, path, 0, 4) == b"4444"
    assert backend.leftovers() == []


async def test_a_failing_body_leaves_nothing_visible(backend: Backend) -> None:
    storage = backend.storage

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (6 * MiB)
        raise ConnectionResetError("the client went away")

    await storage.write("kept.bin", body(b"old"))
    for path in ("new.bin", "kept.bin"):
        with pytest.raises(ConnectionResetError):
            await storage.write(path, broken())
    with pytest.raises(NotServable):
        await storage.stat("new.bin")
    assert await read(storage, "kept.bin", 0, 3) == b"old"
    assert [e.name for e in (await storage.list_page("")).entries] == ["kept.bin"]
    assert backend.leftovers() == []  # aborted, not left behind


@pytest.mark.parametrize("size", [10, 6 * MiB])
async def test_a_declared_digest_is_verified(backend: Backend, size: int) -> None:
    storage = backend.storage
    data = os.urandom(size)
    good = hashlib.sha256(data).digest()
    with pytest.raises(InvalidInput):  # a body that is not what was declared: 400, as today
        await storage.write("d.bin", body(data), sha256=hashlib.sha256(b"other").digest())
    with pytest.raises(NotServable):
        await storage.stat("d.bin")
    assert backend.leftovers() == []
    with pytest.raises(InvalidInput):  # nor what its declared CRC-32 says
        await storage.write("d.bin", body(data), sha256=good, crc32=zlib.crc32(data) ^ 1)
    with pytest.raises(NotServable):
        await storage.stat("d.bin")
    assert backend.leftovers() == []
    crc32 = zlib.crc32(data)
    written = await storage.write("d.bin", body(data), sha256=good, crc32=crc32)
    assert (written.sha256, written.crc32) == (good, crc32)
    # They differ here: the object store keeps the digest with the object; on disk the index's
    # digest store keeps it, not the storage.
    stat = await storage.stat("d.bin")
    assert (stat.sha256, stat.crc32) == ((good, crc32) if backend.kind == "s3" else (None, None))


async def test_delete_honours_if_match(backend: Backend) -> None:
    storage = backend.storage
    stat = await storage.write("x.txt", body(b"x"))
    with pytest.raises(Changed):
        await storage.delete("x.txt", if_match='"other"')
    assert await read(storage, "x.txt", 0, 1) == b"x"
    await storage.delete("x.txt", if_match=stat.etag)
    with pytest.raises(NotServable):
        await storage.delete("x.txt")


@pytest.mark.parametrize(
    "path",
    ["../x", "a/../../x", "a//b", "./a", "a/./b", ".hidden", "a/.env", "a\x01b", "a\\b"]
    + [".ferry-upload-1.part", "a/.ferry-upload-0123456789abcdef.part"],
)
async def test_names_are_refused_as_the_path_gate_refuses_them(backend: Backend, path: str) -> None:
    storage = backend.storage
    await storage.write("a/b", body(b"x"))  # what a normalised name would reach
    with pytest.raises((NotServable, InvalidInput)):
        await storage.stat(path)
    with pytest.raises((NotServable, InvalidInput)):
        await storage.write(path, body(b"x"))
    with pytest.raises((NotServable, InvalidInput)):
        await storage.open_range(path, 0, 1)
    with pytest.raises((NotServable, InvalidInput)):
        await storage.delete(path)
    assert await read(storage, "a/b", 0, 1) == b"x"
    assert backend.leftovers() == []


async def test_listing_and_walk_show_only_servable_names(backend: Backend) -> None:
    storage = backend.storage
    names = ["a.txt", "résumé 数据.bin", "100% #1?.txt", "sub/inner.txt", "sub/deep/z.txt"]
    hidden = [".hidden", "sub/.env", ".git/config", "sub/.ferry-upload-0123456789abcdef.part"]
    for name in names + hidden:
        await backend.plant(name, name.encode())
    page = await storage.list_page("")
    assert [(e.name, e.is_dir) for e in page.entries] == [
        ("100% #1?.txt", False),
        ("a.txt", False),
        ("résumé 数据.bin", False),
        ("sub", True),
    ]
    assert page.cursor is None
    assert [(e.path, e.size) for e in (await storage.list_page("sub")).entries] == [
        ("sub/deep", 0),
        ("sub/inner.txt", len(b"sub/inner.txt")),
    ]
    first = await storage.list_page("", limit=2)
    rest = await storage.list_page("", cursor=first.cursor)
    assert [e.name for e in first.entries + rest.entries] == [e.name for e in page.entries]
    assert rest.cursor is None
    walked = [(s.path, s.is_dir) async for s in storage.walk()]
    assert sorted(walked) == sorted([(n, False) for n in names] + [("sub", True), ("sub/deep", True)])
    folders = [s.path for s in [s async for s in storage.walk()] if s.is_dir]
    assert [p for p, _ in walked].index("sub") < [p for p, _ in walked].index("sub/inner.txt")
    assert folders == ["sub", "sub/deep"]  # each folder before its children
    assert [s.path async for s in storage.walk("sub/deep")] == ["sub/deep/z.txt"]
    assert [s.path async for s in storage.walk("nowhere")] == []
    for missing in ("nowhere", "a.txt"):
        with pytest.raises(NotServable):
            await storage.list_page(missing)  # no such folder
    with pytest.raises(NotServable):
        await storage.stat(".git/config")


async def test_hidden_names_are_served_with_show_hidden(make: Callable[..., Backend]) -> None:
    backend = make(show_hidden=True)
    await backend.storage.write(".env", body(b"A=1\n"))
    assert await read(backend.storage, ".env", 0, 4) == b"A=1\n"
    assert [e.name for e in (await backend.storage.list_page("")).entries] == [".env"]
    with pytest.raises(NotServable):
        await backend.storage.write(".ferry-upload-1.part", body(b"x"))  # never, hidden names or not


# --- the local storage only: what an object store has no notion of -----------------------------


async def test_local_etag_is_the_one_downloads_send(tmp_path: Path) -> None:
    storage = local(tmp_path)
    written = await storage.write("f.bin", body(b"12345"))
    st = os.stat(tmp_path / "f.bin")
    expected = make_validators(dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns)
    assert written.etag == (await storage.stat("f.bin")).etag == expected.etag


async def test_local_symlinks_follow_the_policy(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("s")
    (root / "real" / "f.txt").write_text("f")
    (root / "out").symlink_to(outside)
    (root / "out.txt").symlink_to(outside / "secret.txt")
    (root / "alias").symlink_to(root / "real")
    storage = local(root)
    assert [e.name for e in (await storage.list_page("")).entries] == ["alias", "real"]
    # A symlinked folder inside ROOT is listed, not walked (no loops), as the scanner does.
    assert sorted([s.path async for s in storage.walk()]) == ["alias", "real", "real/f.txt"]
    for refused in ("out/secret.txt", "out.txt"):
        with pytest.raises(NotServable):
            await storage.open_range(refused, 0, 1)
    with pytest.raises(NotServable):
        await storage.write("out/new.txt", body(b"x"))  # writes never follow a symlink out of ROOT
    assert not (outside / "new.txt").exists()
    followed = local(root, follow_symlinks=True)
    assert await read(followed, "out.txt", 0, 1) == b"s"


async def test_local_read_of_a_file_changed_in_place_fails(tmp_path: Path) -> None:
    storage = local(tmp_path)
    await storage.write("f.bin", body(b"a" * MiB))
    stream = aiter(await storage.open_range("f.bin", 0, MiB))
    await anext(stream)
    with open(tmp_path / "f.bin", "r+b") as f:
        f.truncate(MiB // 2)  # changed in place, behind Ferry's back
    with pytest.raises(Changed):
        await anext(stream)


async def test_local_descriptors_are_closed_when_a_read_ends_or_stops(tmp_path: Path) -> None:
    storage = local(tmp_path)
    await storage.write("f.bin", body(b"z" * MiB))

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    assert await read(storage, "f.bin", 0, MiB) == b"z" * MiB  # read to its end
    assert open_fds() == before
    stream = await storage.open_range("f.bin", 0, MiB)
    assert open_fds() == before + 1
    async for _ in stream:
        break  # the reader goes away after one chunk
    await stream.aclose()
    assert open_fds() == before
    with pytest.raises(Changed):
        await storage.open_range("f.bin", 0, 1, if_match='"other"')
    assert open_fds() == before
