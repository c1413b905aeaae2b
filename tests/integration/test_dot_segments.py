"""'.' segments name the directory they stand in, for every reader of a path: writes, the API and
signed links agree with downloads (tests/clients/test_traversal.py sends the raw targets).

httpx resolves a literal '.' segment before sending, so these requests spell it '%2e': the server
decodes it to '.', exactly as it does a literal one."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from app.http import signing
from app.main import create_app
from tests.conftest import make_settings
from tests.support.inprocess import in_process

TOKEN = "dot-segments-write-token"
KEY = "k" * 32


def _client(tmp_path: Path, **settings: object) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True, exist_ok=True)
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "x.txt").write_bytes(b"x\n")
    (root / "colon:name.txt").write_bytes(b"colon\n")
    app = create_app(make_settings(root, index_path=tmp_path / "index.sqlite3", watch=False, **settings))
    app.services.index.scan()
    return in_process(app, lifespan=False)


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(tmp_path, write_token=TOKEN, fsync=False) as client:
        client.headers["authorization"] = f"Bearer {TOKEN}"
        yield client


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["/files/a/%2e/b.txt", "/files/%2e/a/b.txt", "/files/a/%2E/%2e/b.txt"])
async def test_a_put_through_a_dot_segment_lands_at_the_plain_path(
    writer: httpx.AsyncClient, tmp_path: Path, url: str
) -> None:
    created = await writer.put(url, content=b"put\n")
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/files/a/b.txt"
    assert created.json()["path"] == "a/b.txt"
    assert (tmp_path / "root" / "a" / "b.txt").read_bytes() == b"put\n"
    assert [p.name for p in (tmp_path / "root" / "a").iterdir()] == ["b.txt"]
    assert (await writer.get("/files/a/b.txt")).content == b"put\n"
    listing = (await writer.get("/api/files/%2e/a")).json()
    assert [e["path"] for e in listing["entries"]] == ["a/b.txt"]
    deleted = await writer.delete("/files/%2e/a/%2e/b.txt")
    assert deleted.status_code == 204
    assert not (tmp_path / "root" / "a" / "b.txt").exists()


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["/files/a/%2e", "/files/a/%2e/", "/files/%2e"])
async def test_a_put_to_a_directory_spelled_with_a_dot_is_refused(
    writer: httpx.AsyncClient, url: str
) -> None:
    response = await writer.put(url, content=b"put\n")
    assert response.status_code == 400
    assert "file path" in response.json()["detail"]


@pytest.mark.anyio
async def test_a_multipart_post_to_a_dotted_directory_lands_in_it(
    writer: httpx.AsyncClient, tmp_path: Path
) -> None:
    response = await writer.post("/files/%2e/a/%2e/", files={"file": ("up.txt", b"up\n")})
    assert response.status_code in (200, 201), response.text
    assert (tmp_path / "root" / "a" / "up.txt").read_bytes() == b"up\n"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "prefix", "url"),
    [
        pytest.param("/colon:name.txt", False, "/files/%2e/colon:name.txt", id="file-link-go-escaped"),
        pytest.param("/docs/x.txt", False, "/files/docs/%2e/x.txt", id="file-link"),
        pytest.param("/docs/", True, "/files/docs/%2e/x.txt", id="prefix-link"),
        pytest.param("/docs/", True, "/files/%2e/docs/x.txt", id="prefix-link-dot-first"),
    ],
)
async def test_signed_links_cover_their_path_spelled_with_dots(
    tmp_path: Path, path: str, prefix: bool, url: str
) -> None:
    async with _client(tmp_path, download_auth="signed", signing_keys=KEY) as client:
        link = signing.new_link(path, ttl=600, now=int(time.time()), prefix=prefix)
        query = urlencode(signing.link_params(KEY.encode(), link), safe="/")
        response = await client.get(f"{url}?{query}")
        assert response.status_code == 200, response.text
        assert response.content in (b"x\n", b"colon\n")
        # '..' stays refused, however it is spelled next to dots
        refused = await client.get(f"/files/docs/%2e/%2e%2e/colon:name.txt?{query}")
        assert refused.status_code in (403, 404)
