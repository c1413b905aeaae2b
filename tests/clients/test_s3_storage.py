"""The S3 storage backend (app/storage/s3.py) against a real engine (`weed mini`, tests/support/seaweed.py).

Each test gets a storage on a prefix of its own in the session's bucket, and closes it (the
store's connections must be gone before the interpreter finalises: see s3.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import obstore
import pytest
from pydantic import SecretStr

from app.storage.backend import Storage
from app.storage.errors import Changed, InvalidInput, NotServable, Unreachable
from app.storage.locations import AwsCredentials, S3Location
from app.storage.s3 import S3Config, S3Storage
from tests.support.seaweed import Seaweed

pytestmark = [pytest.mark.engine, pytest.mark.anyio]

KiB, MiB = 1024, 1024**2


def credentials(engine: Seaweed, secret: str | None = None) -> AwsCredentials:
    return AwsCredentials(
        aws_access_key_id=SecretStr(engine.access_key),
        aws_secret_access_key=SecretStr(secret or engine.secret_key),
    )


def config(engine: Seaweed, prefix: str, **options: object) -> S3Config:
    return S3Config(
        S3Location(engine.bucket, prefix),
        endpoint=engine.endpoint,
        region=engine.region,
        allow_http=True,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
async def storage(seaweed: Seaweed, request: pytest.FixtureRequest) -> AsyncIterator[S3Storage]:
    prefix = f"t-{request.node.name[:40]}-{os.urandom(4).hex()}/".replace("[", "-").replace("]", "")
    backend = S3Storage(
        config(seaweed, prefix, chunk_size=256 * KiB, part_size=5 * MiB), credentials(seaweed)
    )
    yield backend
    await backend.aclose()


async def body(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read(backend: Storage, path: str, start: int, end: int, **kw: str) -> bytes:
    stream = await backend.open_range(path, start, end, **kw)
    return b"".join([chunk async for chunk in stream])


async def test_write_stat_read_ranges_and_delete(storage: S3Storage) -> None:
    data = os.urandom(3 * MiB + 123)
    written = await storage.write("dir/sub/file.bin", body(data[:MiB], data[MiB:]))
    assert written.sha256 == hashlib.sha256(data).digest()
    stat = await storage.stat("dir/sub/file.bin")
    assert (stat.path, stat.is_dir, stat.size, stat.etag) == (
        "dir/sub/file.bin",
        False,
        len(data),
        written.etag,
    )
    assert stat.etag and stat.etag.startswith('"') and stat.mtime_ns > 0
    assert (await storage.stat("dir")).is_dir and (await storage.stat("dir/sub")).is_dir
    assert await read(storage, "dir/sub/file.bin", 0, len(data)) == data
    for start, end in [(0, 1), (5, 65541), (MiB - 1, MiB + 1), (len(data) - 10, len(data))]:
        assert await read(storage, "dir/sub/file.bin", start, end) == data[start:end]
    await storage.delete("dir/sub/file.bin")
    with pytest.raises(NotServable):
        await storage.stat("dir/sub/file.bin")
    with pytest.raises(NotServable):
        await storage.stat("dir")  # a folder is a prefix: gone with its last key


async def test_a_range_is_read_in_bounded_windows_and_stops_when_the_reader_stops(storage: S3Storage) -> None:
    data = os.urandom(2 * MiB)
    await storage.write("big.bin", body(data))
    stream = await storage.open_range("big.bin", 0, len(data))
    sizes = []
    async for chunk in stream:
        sizes.append(len(chunk))
        if len(sizes) == 2:
            break
    await stream.aclose()
    assert sizes == [256 * KiB, 256 * KiB]  # CHUNK_SIZE windows, never the whole object


async def test_a_download_never_mixes_two_versions(storage: S3Storage) -> None:
    # 16 windows of 256 KiB: more than are ever requested ahead of the one being read.
    await storage.write("v.bin", body(b"a" * 4 * MiB))
    stream = await storage.open_range("v.bin", 0, 4 * MiB)
    chunks = aiter(stream)
    first = await anext(chunks)
    await storage.write("v.bin", body(b"b" * 4 * MiB))
    with pytest.raises(Changed):
        async for chunk in chunks:
            assert set(first + chunk) == {ord("a")}
    old = (await storage.stat("v.bin")).etag
    await storage.write("v.bin", body(b"c" * 10))
    with pytest.raises(Changed):
        await read(storage, "v.bin", 0, 10, if_match=old or "")


async def test_conditional_writes_small_and_multipart(storage: S3Storage) -> None:
    for size in (10, 6 * MiB):  # one conditional PUT; a multipart upload
        path = f"cond-{size}.bin"
        first = await storage.write(path, body(b"1" * size), if_none_match=True)
        with pytest.raises(Changed):
            await storage.write(path, body(b"2" * size), if_none_match=True)
        with pytest.raises(Changed):
            await storage.write(path, body(b"3" * size), if_match='"not-the-etag"')
        assert await read(storage, path, 0, 4) == b"1111"
        second = await storage.write(path, body(b"4" * size), if_match=first.etag)
        assert second.etag != first.etag and await read(storage, path, 0, 4) == b"4444"


async def test_a_failing_body_leaves_nothing_visible(seaweed: Seaweed, storage: S3Storage) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (6 * MiB)
        raise ConnectionResetError("the client went away")

    for path in ("new.bin", "kept.bin"):
        if path == "kept.bin":
            await storage.write(path, body(b"old"))
        with pytest.raises(ConnectionResetError):
            await storage.write(path, broken())
    with pytest.raises(NotServable):
        await storage.stat("new.bin")
    assert await read(storage, "kept.bin", 0, 3) == b"old"
    assert [e.name for e in (await storage.list_page("")).entries] == ["kept.bin"]
    assert seaweed.pending_uploads() == []  # the multipart uploads were aborted, not left behind


async def test_a_declared_digest_is_verified_and_stored(seaweed: Seaweed, storage: S3Storage) -> None:
    data = os.urandom(6 * MiB)
    good = hashlib.sha256(data).digest()
    with pytest.raises(InvalidInput):
        await storage.write("d.bin", body(data), sha256=hashlib.sha256(b"other").digest())
    with pytest.raises(NotServable):
        await storage.stat("d.bin")
    assert seaweed.pending_uploads() == []
    await storage.write("d.bin", body(data), sha256=good)
    assert (await storage.stat("d.bin")).sha256 == good


async def test_delete_honours_if_match(storage: S3Storage) -> None:
    stat = await storage.write("x.txt", body(b"x"))
    with pytest.raises(Changed):
        await storage.delete("x.txt", if_match='"other"')
    await storage.delete("x.txt", if_match=stat.etag)
    with pytest.raises(NotServable):
        await storage.delete("x.txt")


@pytest.mark.parametrize(
    "path",
    [
        "../x",
        "a/../../x",
        "a//b",
        "./a",
        "a/./b",
        ".hidden",
        "a/.env",
        "a\x01b",
        "a\\b",
        ".ferry-upload-1.part",
    ],
)
async def test_names_are_refused_as_the_path_gate_refuses_them(storage: S3Storage, path: str) -> None:
    with pytest.raises((NotServable, InvalidInput)):
        await storage.stat(path)
    with pytest.raises((NotServable, InvalidInput)):
        await storage.write(path, body(b"x"))
    with pytest.raises((NotServable, InvalidInput)):
        await storage.open_range(path, 0, 1)


async def test_listing_and_walk_show_only_servable_names(seaweed: Seaweed, storage: S3Storage) -> None:
    prefix = storage.config.location.prefix
    store = seaweed.store()
    names = ["a.txt", "résumé 数据.bin", "100% #1?.txt", "sub/inner.txt", "sub/deep/z.txt"]
    # (keys with "..", "//" or control characters cannot even be written through obstore)
    hidden = [".hidden", "sub/.env", ".git/config", "sub/.ferry-upload-x.part"]
    for name in names + hidden:
        await obstore.put_async(store, prefix + name, name.encode())
    page = await storage.list_page("")
    assert [(e.name, e.is_dir) for e in page.entries] == [
        ("100% #1?.txt", False),
        ("a.txt", False),
        ("résumé 数据.bin", False),
        ("sub", True),
    ]
    first = await storage.list_page("", limit=2)
    rest = await storage.list_page("", cursor=first.cursor)
    assert [e.name for e in first.entries + rest.entries] == [e.name for e in page.entries]
    assert rest.cursor is None
    walked = [(s.path, s.is_dir) async for s in storage.walk()]
    assert sorted(walked) == sorted([(n, False) for n in names] + [("sub", True), ("sub/deep", True)])
    assert [s.path async for s in storage.walk("sub/deep")] == ["sub/deep/z.txt"]
    with pytest.raises(NotServable):
        await storage.stat(".git/config")


async def test_hidden_names_are_served_with_show_hidden(seaweed: Seaweed) -> None:
    backend = S3Storage(
        config(seaweed, f"hidden-{os.urandom(4).hex()}/", show_hidden=True), credentials(seaweed)
    )
    try:
        await backend.write(".env", body(b"A=1\n"))
        assert await read(backend, ".env", 0, 4) == b"A=1\n"
        with pytest.raises(NotServable):
            await backend.write(".ferry-upload-1.part", body(b"x"))  # never, hidden names or not
    finally:
        await backend.aclose()


async def test_wrong_credentials_and_a_stopped_engine_are_unreachable(seaweed: Seaweed) -> None:
    wrong = S3Storage(config(seaweed, "x/"), credentials(seaweed, secret="not-the-secret"))
    nobody = S3Storage(
        S3Config(
            S3Location("ferry", ""),
            endpoint="http://127.0.0.1:9",
            allow_http=True,
            timeout="5s",
            retry_seconds=2,
        ),
        credentials(seaweed),
    )
    try:
        for backend in (wrong, nobody):
            with pytest.raises(Unreachable):
                await backend.stat("a.txt")
    finally:
        await wrong.aclose()
        await nobody.aclose()


# --- the interpreter exits cleanly after abandoned streams -----------------------------------------------

EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import obstore
    from pydantic import SecretStr
    from app.storage.locations import AwsCredentials, S3Location
    from app.storage.s3 import S3Config, S3Storage

    endpoint, bucket, access, secret, prefix = sys.argv[1:6]

    async def main():
        storage = S3Storage(
            S3Config(S3Location(bucket, prefix), endpoint=endpoint, allow_http=True, chunk_size=256 * 1024),
            AwsCredentials(aws_access_key_id=SecretStr(access), aws_secret_access_key=SecretStr(secret)),
        )
        async def abandon(i):
            stream = await storage.open_range("big.bin", i * 65536, 4 * 1024 * 1024)
            async for _ in stream:
                break  # the reader goes away mid-range, as a client disconnecting does

        async def abandon_body(i):
            # What aborted the interpreter at exit: a streaming GET left with its body half read.
            got = await obstore.get_async(storage.store(), "big.bin", options={"range": (i * 65536, 4 << 20)})
            async for _ in got.stream(min_chunk_size=256 * 1024):
                break

        await asyncio.gather(*(abandon(i) for i in range(16)), *(abandon_body(i) for i in range(16)))
        if sys.argv[6] == "close":
            await storage.aclose()

    asyncio.run(main())
    """
)


async def test_the_process_exits_cleanly_after_abandoned_concurrent_streams(
    seaweed: Seaweed, storage: S3Storage, tmp_path: Path
) -> None:
    # Without aclose (last argument "keep"), this script aborted (SIGABRT) in 6 runs of 30:
    # twelve clean runs in a row would then happen by chance about once in fourteen times.
    await storage.write("big.bin", body(os.urandom(4 * MiB)))
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    args = [seaweed.endpoint, seaweed.bucket, seaweed.access_key, seaweed.secret_key]
    args += [storage.config.location.prefix, "close"]
    codes = []
    for _ in range(12):
        done = subprocess.run(
            [sys.executable, str(script), *args],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            timeout=120,
        )
        codes.append(done.returncode)
        assert done.returncode == 0, (codes, done.stderr.decode(errors="replace")[-2000:])


FORK_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from pydantic import SecretStr
    from app.storage.locations import AwsCredentials, S3Location
    from app.storage.s3 import S3Config, S3Storage

    endpoint, bucket, access, secret, prefix = sys.argv[1:6]
    storage = S3Storage(
        S3Config(S3Location(bucket, prefix), endpoint=endpoint, allow_http=True),
        AwsCredentials(aws_access_key_id=SecretStr(access), aws_secret_access_key=SecretStr(secret)),
    )

    async def use():
        try:
            return (await storage.stat("f.txt")).size
        finally:
            await storage.aclose()

    def child():
        try:
            print("child", asyncio.run(asyncio.wait_for(use(), 60)), flush=True)
        except RuntimeError as exc:
            print("child refused:", exc, flush=True)
        os._exit(0)

    for round in ("before any use", "after the parent used it"):
        pid = os.fork()
        if pid == 0:
            child()
        os.waitpid(pid, 0)
        if round == "before any use":
            print("parent", asyncio.run(storage.stat("f.txt")).size, flush=True)
    """
)


async def test_a_worker_forked_before_use_works_and_one_forked_after_is_refused_at_once(
    seaweed: Seaweed, storage: S3Storage, tmp_path: Path
) -> None:
    await storage.write("f.txt", body(b"12345"))
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    args = [seaweed.endpoint, seaweed.bucket, seaweed.access_key, seaweed.secret_key]
    done = subprocess.run(
        [sys.executable, str(script), *args, storage.config.location.prefix],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "child 5",
        "parent 5",
        "child refused: this S3 storage was used before the process forked; make one per worker",
    ], done.stderr[-2000:]
