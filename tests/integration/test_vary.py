"""`Vary: Accept` wherever Accept chooses the representation (in-process, no server).

A listing URL answers HTML or JSON by the request's Accept; without `Vary: Accept` a shared cache
could store the JSON a script asked for and hand it to the next browser.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.conftest import make_settings
from tests.support.inprocess import in_process

HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"  # what a browser sends
JSON = "application/json"

Client = Callable[[Callable[[httpx.AsyncClient], Awaitable[None]]], None]


@pytest.fixture
def client(tmp_path: Path) -> Client:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "hello.txt").write_bytes(b"hello\n")
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    settings = make_settings(
        root, index_path=tmp_path / "index.sqlite3", watch=False, rescan_interval=0, checksums=False
    )

    def run(body: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
        async def main() -> None:
            async with in_process(create_app(settings)) as http:
                await body(http)

        asyncio.run(main())

    return run


def varies_on_accept(response: httpx.Response) -> bool:
    fields = response.headers.get_list("vary", split_commas=True)
    return any(field.strip().lower() in ("accept", "*") for field in fields)


def media_type(response: httpx.Response) -> str:
    return response.headers["content-type"].partition(";")[0]


@pytest.mark.parametrize(
    "path", ["/files/", "/files/sub/", "/files/?sort=size&order=desc", "/files/?limit=1"]
)
def test_a_listing_says_it_varies_on_accept(client: Client, path: str) -> None:
    async def body(http: httpx.AsyncClient) -> None:
        for method in ("GET", "HEAD"):
            for accept, expected in [
                (HTML, "text/html"),
                (JSON, JSON),
                ("*/*", "text/html"),
                (None, "text/html"),
            ]:
                headers = {} if accept is None else {"accept": accept}
                response = await http.request(method, path, headers=headers)
                assert response.status_code == 200, (method, accept, response.text)
                assert media_type(response) == expected, (method, accept)
                assert varies_on_accept(response), (method, accept, response.headers)

    client(body)


def test_a_search_page_varies_on_accept(client: Client) -> None:
    async def body(http: httpx.AsyncClient) -> None:
        response = await http.get("/files/?q=inner", headers={"accept": HTML})
        assert response.status_code == 200 and "inner.txt" in response.text
        assert varies_on_accept(response)

    client(body)


def test_conditional_listing_requests_still_carry_vary(client: Client) -> None:
    """Listings have no validators: a conditional request gets the whole page (never a bare 304)."""

    async def body(http: httpx.AsyncClient) -> None:
        first = await http.get("/files/", headers={"accept": JSON})
        conditions = [
            {"if-none-match": "*"},
            {"if-modified-since": "Sun, 06 Nov 2044 08:49:37 GMT"},
            {"if-none-match": first.headers.get("etag", '"x"')},
        ]
        for extra in conditions:
            for accept in (HTML, JSON):
                response = await http.get("/files/", headers={"accept": accept, **extra})
                assert response.status_code in (200, 304), response.text
                assert varies_on_accept(response), (extra, accept, response.status_code)

    client(body)


def test_what_accept_does_not_choose_does_not_vary_on_it(client: Client) -> None:
    async def body(http: httpx.AsyncClient) -> None:
        explicit = await http.get("/files/?format=json", headers={"accept": HTML})
        assert media_type(explicit) == JSON and not varies_on_accept(explicit)
        download = await http.get("/files/hello.txt", headers={"accept": JSON})
        assert download.content == b"hello\n" and not varies_on_accept(download)
        api = await http.get("/api/files/", headers={"accept": HTML})
        assert media_type(api) == JSON and not varies_on_accept(api)

    client(body)
