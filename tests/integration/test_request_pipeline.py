"""One pipeline for every request under /files/: absolute links from one base URL (never a wildcard
bind address), one blank-value rule for the query, Ferry's errors answered in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.conftest import make_settings
from tests.support.inprocess import in_process

KEY = "pipeline-signing-key-0123456789ab"
WRITER = "pipeline-write-token"
AUTH = {"authorization": f"Bearer {WRITER}"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_bytes(b"a\n")
    return root


def _client(
    tmp_path: Path, root: Path, base_url: str, **overrides: object
) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    settings = make_settings(
        root,
        index_path=tmp_path / "index.sqlite3",
        watch=False,
        signing_keys=KEY,
        write_token=WRITER,
        **overrides,
    )
    app = create_app(settings)
    app.services.index.scan()
    return in_process(app, lifespan=False, base_url=base_url)


@pytest.fixture
async def wildcard(tmp_path: Path, root: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A server listening on 0.0.0.0:8000 (the defaults), reached by clients whose Host is unusable."""
    async with _client(tmp_path, root, "http://0.0.0.0:8000") as client:
        yield client


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["", "not a host", "x/y"])
async def test_a_minted_link_never_points_at_the_wildcard_address(
    wildcard: httpx.AsyncClient, host: str
) -> None:
    response = await wildcard.post(
        "/api/sign", json={"path": "docs/a.txt", "ttl": 60}, headers={**AUTH, "host": host}
    )
    assert response.status_code == 200, response.text
    link = response.json()
    assert link["url"] == "http://127.0.0.1:8000" + link["href"]


@pytest.mark.anyio
async def test_a_metalink_never_points_at_the_wildcard_address(wildcard: httpx.AsyncClient) -> None:
    response = await wildcard.get("/files/docs/a.txt?meta4", headers={"host": "not a host"})
    assert response.status_code == 200, response.text
    assert '<url priority="1">http://127.0.0.1:8000/files/docs/a.txt</url>' in response.text


@pytest.mark.anyio
async def test_links_use_the_host_the_client_reached(wildcard: httpx.AsyncClient) -> None:
    headers = {**AUTH, "host": "files.example:8443"}
    link = (await wildcard.post("/api/sign", json={"path": "docs/a.txt", "ttl": 60}, headers=headers)).json()
    assert link["url"] == "http://files.example:8443" + link["href"]
    meta4 = await wildcard.get("/files/docs/a.txt?meta4", headers={"host": "files.example:8443"})
    assert "http://files.example:8443/files/docs/a.txt</url>" in meta4.text


@pytest.mark.anyio
async def test_the_public_url_comes_first(tmp_path: Path, root: Path) -> None:
    async with _client(tmp_path, root, "http://0.0.0.0:8000", public_url="https://dl.example/base") as client:
        link = (await client.post("/api/sign", json={"path": "docs/a.txt", "ttl": 60}, headers=AUTH)).json()
        meta4 = await client.get("/files/docs/a.txt?meta4")
    assert link["url"] == "https://dl.example/base" + link["href"]
    assert "https://dl.example/base/files/docs/a.txt</url>" in meta4.text


@pytest.mark.anyio
async def test_a_blank_limit_or_cursor_counts_as_not_given(wildcard: httpx.AsyncClient) -> None:
    plain = await wildcard.get("/files/docs/?format=json")
    blank = await wildcard.get("/files/docs/?format=json&limit=&cursor=")
    assert plain.status_code == blank.status_code == 200
    assert blank.json() == plain.json()
    assert (await wildcard.get("/files/docs/?limit=")).status_code == 200  # the HTML page too
    assert (await wildcard.get("/files/docs/?format=json&limit=0")).status_code == 400


@pytest.mark.anyio
async def test_a_refused_write_is_answered_with_the_error_and_closes(wildcard: httpx.AsyncClient) -> None:
    response = await wildcard.put("/files/docs/b.txt", content=b"b", headers={"authorization": "Bearer no"})
    assert response.status_code == 401
    assert response.json() == {"detail": "a valid bearer token is required"}
    assert response.headers["www-authenticate"] == 'Bearer realm="ferry"'
    assert response.headers["connection"] == "close"
    # A refused download keeps the connection.
    missing = await wildcard.get("/files/docs/missing.txt")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}
    assert "connection" not in missing.headers
