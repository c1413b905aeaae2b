"""Tampered cursors on every paginated endpoint: 400 with Ferry's error body, never 500."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.conftest import make_settings
from tests.support.inprocess import in_process


def raw_cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")


HOSTILE = [
    pytest.param(raw_cursor(json.dumps([2**63])), id="int64-overflow"),
    pytest.param(raw_cursor(json.dumps([-(2**63) - 1])), id="int64-underflow"),
    pytest.param(raw_cursor(json.dumps([2**63, "a"])), id="int64-overflow-with-name"),
    pytest.param(raw_cursor("[" * 10_000 + "]" * 10_000), id="deeply-nested"),
    pytest.param(raw_cursor('["\\udc80"]'), id="lone-surrogate"),
    pytest.param(raw_cursor('["\\udc80", 1]'), id="lone-surrogate-first"),
]
ENDPOINTS = [
    pytest.param("/api/search?q=file", id="search"),
    pytest.param("/api/files/many", id="api-files"),
    pytest.param("/files/many/?format=json", id="listing-json"),
    pytest.param("/files/many/", id="listing-html"),
    pytest.param("/files/many/?sort=size", id="listing-by-size"),
    pytest.param("/files/many/?sort=mtime&order=desc", id="listing-by-mtime"),
]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    root = tmp_path / "root"
    (root / "many").mkdir(parents=True)
    for i in range(5):
        (root / "many" / f"file-{i}.txt").write_bytes(b"x" * i)
    app = create_app(make_settings(root, index_path=tmp_path / "index.sqlite3", watch=False))
    app.services.index.scan()
    async with in_process(app, lifespan=False) as c:
        yield c


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("cursor", HOSTILE)
async def test_tampered_cursors_are_bad_requests(
    client: httpx.AsyncClient, endpoint: str, cursor: str
) -> None:
    separator = "&" if "?" in endpoint else "?"
    response = await client.get(f"{endpoint}{separator}limit=2&cursor={cursor}")
    assert response.status_code == 400, response.text[:300]
    # And the endpoint still pages normally afterwards.
    first = await client.get(f"{endpoint}{separator}limit=2", headers={"accept": "application/json"})
    assert first.status_code == 200


@pytest.mark.anyio
async def test_genuine_cursors_still_page(client: httpx.AsyncClient) -> None:
    seen: list[str] = []
    url = "/api/files/many?limit=2"
    while url:
        page = (await client.get(url)).json()
        seen += [e["name"] for e in page["entries"]]
        url = f"/api/files/many?limit=2&cursor={page['next_cursor']}" if page["next_cursor"] else ""
    assert seen == [f"file-{i}.txt" for i in range(5)]
