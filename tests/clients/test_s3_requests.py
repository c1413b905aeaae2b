"""What a download from a bucket costs the store, in requests (app/routes/bucket_files.py,
app/storage/s3.py), against a real engine (`weed mini`), in process.

A ranged GET is one request to the store, not a HEAD and then a GET: the GET of the first bytes
carries the object's metadata, which is all the planner needs. What that GET cannot answer (a
folder, a range past the end, HEAD) falls back to a HEAD with the same answers as before. A long
read is one GET per window of several chunks, not one per chunk.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest

from app.main import create_app
from app.storage.s3 import S3Storage
from app.storage.s3_http import Upstream
from tests.support.inprocess import in_process, make_settings
from tests.support.seaweed import Seaweed
from tests.support.storage import body, config, credentials

pytestmark = [pytest.mark.engine, pytest.mark.anyio]

KiB, MiB = 1024, 1024**2


class Requests:
    """Every GET/HEAD Ferry makes to the store, as ("HEAD" | "GET", range or None): through obstore
    or through Ferry's own client of presigned URLs (app/storage/s3_http.py)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[str, Any]] = []
        original = obstore.get_async

        async def counted(store: Any, key: str, *, options: Any = None) -> Any:
            options = options or {}
            self.seen.append(("HEAD" if options.get("head") else "GET", options.get("range")))
            return await original(store, key, options=options)

        monkeypatch.setattr(obstore, "get_async", counted)
        own = Upstream.get

        async def counted_own(upstream: Upstream, url: str, headers: dict[str, str]) -> Any:
            first, _, last = headers["Range"].removeprefix("bytes=").partition("-")
            self.seen.append(("GET", (int(first), int(last) + 1)))
            return await own(upstream, url, headers)

        monkeypatch.setattr(Upstream, "get", counted_own)

    def take(self) -> list[tuple[str, Any]]:
        seen, self.seen = self.seen, []
        return seen


@pytest.fixture
async def bucket(seaweed: Seaweed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """A prefix of its own with a 3 MiB object, a folder, and an empty object."""
    prefix = "reqs-" + os.urandom(4).hex()
    planter = S3Storage(config(seaweed, prefix + "/"), credentials(seaweed))
    await planter.write("big.bin", body(bytes(range(256)) * (3 * MiB // 256)))
    await planter.write("folder/inside.txt", body(b"inside"))
    await planter.write("empty.bin", body(b""))
    await planter.aclose()
    for name, value in seaweed.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    yield prefix


@pytest.fixture
async def client(seaweed: Seaweed, bucket: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    root = tmp_path / "root"  # must exist; nothing is served from it
    root.mkdir()
    settings = make_settings(
        root,
        storage=f"s3://{seaweed.bucket}/{bucket}",
        s3_endpoint=seaweed.endpoint,
        s3_region=seaweed.region,
        s3_allow_http=True,
        chunk_size="256KiB",
        index_path=tmp_path / "index.sqlite3",
        checksums=False,  # the bucket's hasher would HEAD the objects too: only downloads count here
    )
    app = create_app(settings)
    async with in_process(app, timeout=60) as http:
        yield http


DATA = bytes(range(256)) * (3 * MiB // 256)


async def test_a_range_is_one_request_to_the_store(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = Requests(monkeypatch)
    got = await client.get("/files/big.bin", headers={"Range": "bytes=1000000-1065535"})
    assert got.status_code == 206
    assert got.content == DATA[1000000:1065536]
    assert got.headers["content-range"] == f"bytes 1000000-1065535/{len(DATA)}"
    assert requests.take() == [("GET", (1000000, 1065536))]

    got = await client.get("/files/big.bin", headers={"Range": f"bytes={len(DATA) - 10}-"})
    assert (got.status_code, got.content) == (206, DATA[-10:])
    assert requests.take() == [("GET", (len(DATA) - 10, len(DATA) - 10 + 256 * KiB))]


async def test_a_whole_download_needs_no_head_and_keeps_its_validators(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = Requests(monkeypatch)
    got = await client.get("/files/big.bin")
    assert got.status_code == 200 and got.content == DATA
    seen = requests.take()
    assert seen[0] == ("GET", (0, 256 * KiB))
    assert all(kind == "GET" for kind, _ in seen)
    # The first chunk came with the stat; the rest in windows from one chunk doubling up to four
    # (S3Config.window_chunks), not a GET per chunk.
    rest = [(256 * KiB, 512 * KiB), (512 * KiB, MiB), (MiB, 2 * MiB), (2 * MiB, 3 * MiB)]
    assert seen[1:] == [("GET", window) for window in rest]
    etag = got.headers["etag"]
    # The validators come from the GET's metadata: the same as a HEAD gives (HEAD asks the store).
    head = await client.head("/files/big.bin")
    assert head.headers["etag"] == etag
    assert head.headers["last-modified"] == got.headers["last-modified"]
    assert requests.take() == [("HEAD", None)]
    # A revalidation is mostly answered 304: a HEAD, no bytes fetched ahead for nothing.
    assert (await client.get("/files/big.bin", headers={"If-None-Match": etag})).status_code == 304
    assert requests.take() == [("HEAD", None)]


async def test_what_the_first_get_cannot_answer_is_answered_as_before(client: httpx.AsyncClient) -> None:
    past = await client.get("/files/big.bin", headers={"Range": f"bytes={len(DATA)}-"})
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{len(DATA)}"
    folder = await client.get("/files/folder")
    assert folder.status_code == 301 and folder.headers["location"] == "/files/folder/"
    assert (await client.get("/files/missing.bin")).status_code == 404
    empty = await client.get("/files/empty.bin")
    assert (empty.status_code, empty.content) == (200, b"")
    several = await client.get("/files/big.bin", headers={"Range": "bytes=0-1,10-11"})
    assert several.status_code == 206 and b"multipart" in several.headers["content-type"].encode()
    suffix = await client.get("/files/big.bin", headers={"Range": "bytes=-5"})
    assert (suffix.status_code, suffix.content) == (206, DATA[-5:])
