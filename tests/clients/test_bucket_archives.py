"""Folder archives of a bucket (FERRY_STORAGE=s3://…): the same zip and tar as from a disk, the
members' bytes read from their objects; ranges once the CRC-32s are known (the bucket hasher's);
an object replaced while its archive is being sent ends the body short.

Each test serves a key prefix of its own in the session's `weed mini` (marker `engine`).
"""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.support.buckets import bucket_env, new_prefix, plant, serving
from tests.support.seaweed import Seaweed
from tests.support.servers import PATIENCE, start_server

pytestmark = [pytest.mark.engine, pytest.mark.anyio]

OBJECTS = {
    "docs/a.txt": b"alpha\n",
    "docs/résumé #1 %.txt": b"unicode\n",
    "docs/sub/big.bin": os.urandom(3 * 1024**2 + 17),
    "docs/sub/small.bin": os.urandom(999),
    "other.txt": b"not in docs\n",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def members(body: bytes, kind: str) -> dict[str, bytes]:
    if kind == "zip":
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            assert z.testzip() is None
            return {i.filename: z.read(i) for i in z.infolist()}
    with tarfile.open(fileobj=io.BytesIO(body)) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers()}  # type: ignore[union-attr]


async def test_a_bucket_folder_comes_as_zip_and_tar_and_takes_ranges(
    seaweed: Seaweed, tmp_path: Path
) -> None:
    prefix = new_prefix("archives")
    await plant(seaweed, prefix, OBJECTS)
    wanted = {k: v for k, v in OBJECTS.items() if k.startswith("docs/")}
    async with serving(seaweed, tmp_path, prefix, "--chunk-size", "1MiB") as http:
        for kind in ("zip", "tar"):
            r = await http.get(f"/files/docs/?archive={kind}")
            assert r.status_code == 200 and r.headers["content-length"] == str(len(r.content))
            assert members(r.content, kind) == wanted
            assert f'filename="docs.{kind}"' in r.headers["content-disposition"]
        tar = await http.get("/files/docs/?archive=tar")
        part = await http.get("/files/docs/?archive=tar", headers={"range": "bytes=1000-2000000"})
        assert part.status_code == 206 and part.content == tar.content[1000:2000001]
        # The bucket hasher reaches every object: then a zip takes ranges, and is the same bytes.
        deadline = time.monotonic() + 4 * PATIENCE
        while (await http.head("/files/docs/?archive=zip")).headers["accept-ranges"] != "bytes":
            assert time.monotonic() < deadline, "the CRC-32s never reached the index"
            await asyncio.sleep(0.2)
        whole = await http.get("/files/docs/?archive=zip")
        assert members(whole.content, "zip") == wanted
        tail = await http.get(
            "/files/docs/?archive=zip", headers={"range": "bytes=-70000", "if-range": whole.headers["etag"]}
        )
        assert tail.status_code == 206 and tail.content == whole.content[-70000:]


def test_an_object_replaced_mid_archive_ends_the_body_short(seaweed: Seaweed, tmp_path: Path) -> None:
    prefix = new_prefix("archive-replaced")
    first, second = os.urandom(4 * 1024**2), os.urandom(4 * 1024**2)
    asyncio.run(plant(seaweed, prefix, {"d/1.bin": first, "d/2.bin": second}))
    root = tmp_path / "empty-root"
    root.mkdir()
    env = bucket_env(seaweed, prefix)
    server = start_server(root, tmp_path, "--rate-limit", "2MiB", "--chunk-size", "256KiB", env=env)
    try:
        url = server.url + "/files/d/?archive=tar"
        length = int(httpx.head(url, timeout=PATIENCE).headers["content-length"])
        got = 0
        with httpx.stream("GET", url, timeout=PATIENCE) as r:
            try:
                for chunk in r.iter_raw():
                    got += len(chunk)
                    if got >= 512 * 1024 and got - len(chunk) < 512 * 1024:  # while 1.bin is sent
                        asyncio.run(plant(seaweed, prefix, {"d/2.bin": os.urandom(4 * 1024**2)}))
            except (httpx.RemoteProtocolError, httpx.ReadError):
                pass
        assert got < length  # never a complete-looking archive with the new 2.bin in it
        assert httpx.get(server.url + "/files/d/1.bin", timeout=PATIENCE).content == first  # still serving
    finally:
        server.stop()
