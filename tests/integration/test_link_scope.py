"""A signed link grants exactly its scope: its path, or its folder after resolution. Not the
folders below a one-folder link (?checksums=all), and not where a symlink inside a shared folder
leads, even elsewhere in ROOT (downloads, listings and SHA256SUMS alike)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from app.http import signing
from app.main import create_app
from tests.conftest import make_settings
from tests.support.inprocess import in_process

KEY = "link-scope-signing-key-0123456789"
READER = "link-scope-read-token"
PRIVATE = (b"private p\n", b"private q\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """docs/ is shared; private/ is not, and docs/ holds symlinks into it."""
    root = tmp_path / "root"
    (root / "docs" / "sub").mkdir(parents=True)
    (root / "docs" / "a.txt").write_bytes(b"a\n")
    (root / "docs" / "sub" / "b.txt").write_bytes(b"b\n")
    (root / "private" / "deep").mkdir(parents=True)
    (root / "private" / "p.txt").write_bytes(PRIVATE[0])
    (root / "private" / "deep" / "q.txt").write_bytes(PRIVATE[1])
    (root / "docs" / "to-private").symlink_to("../private")
    (root / "docs" / "p-link.txt").symlink_to("../private/p.txt")
    (root / "docs" / "to-sub").symlink_to("sub")  # inside the shared folder: granted
    (root / "shared").symlink_to("private")  # a folder link to it grants where it leads
    return root


@pytest.fixture
async def client(tmp_path: Path, root: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        root,
        index_path=tmp_path / "index.sqlite3",
        watch=False,
        download_auth="signed",
        signing_keys=KEY,
        read_tokens=READER,
    )
    app = create_app(settings)
    app.services.index.scan()
    # Rows below the symlinked folder, as a reader with a token browsing there leaves them.
    app.services.index.list_dir("docs/to-private", limit=100)
    app.services.index.list_dir("docs/to-private/deep", limit=100)
    async with in_process(app, lifespan=False) as c:
        yield c


def signed(path: str, *, prefix: bool) -> str:
    link = signing.new_link(path, ttl=600, now=int(time.time()), prefix=prefix)
    return urlencode(signing.link_params(KEY.encode(), link), safe="/")


def assert_nothing_private(response: httpx.Response) -> None:
    for secret in (*PRIVATE, b"p.txt", b"q.txt", b"p-link", b"to-private"):
        assert secret not in response.content, (str(response.url), secret)


@pytest.mark.anyio
async def test_a_one_folder_link_does_not_grant_the_checksums_of_folders_below(
    client: httpx.AsyncClient,
) -> None:
    query = signed("docs/", prefix=False)
    assert (await client.get(f"/files/docs/sub/b.txt?{query}")).status_code == 403  # as before
    deep = await client.get(f"/files/docs/?checksums=all&{query}")
    assert deep.status_code == 403
    assert b"b.txt" not in deep.content
    own = await client.get(f"/files/docs/?checksums&{query}")
    assert own.status_code == 200
    assert [line.split("  ")[1] for line in own.text.splitlines()] == ["a.txt"]
    listing = await client.get(f"/files/docs/?format=json&{query}")
    assert listing.status_code == 200
    assert {e["name"] for e in listing.json()["entries"]} == {"a.txt", "sub", "to-sub"}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "target",
    [
        "/files/docs/to-private/p.txt",
        "/files/docs/to-private/deep/q.txt",
        "/files/docs/to-private/",
        "/files/docs/to-private",
        "/files/docs/to-private/?format=json",
        "/files/docs/to-private/?checksums",
        "/files/docs/to-private/?checksums=all",
        "/files/docs/p-link.txt",
        "/files/docs/p-link.txt?checksums",
        "/files/docs/p-link.txt?meta4",
    ],
)
async def test_a_folder_link_does_not_follow_a_symlink_out_of_its_folder(
    client: httpx.AsyncClient, target: str
) -> None:
    query = signed("docs/", prefix=True)
    separator = "&" if "?" in target else "?"
    response = await client.get(f"{target}{separator}{query}")
    assert response.status_code == 404, (target, response.status_code)
    assert_nothing_private(response)
    head = await client.head(f"{target}{separator}{query}")
    assert head.status_code == 404
    # The same paths with a token: the policy itself allows them (symlinks inside ROOT).
    with_token = await client.get(target, headers={"authorization": f"Bearer {READER}"})
    assert with_token.status_code in (200, 301), (target, with_token.status_code)


@pytest.mark.anyio
async def test_a_folder_links_listings_and_checksums_hold_only_what_it_grants(
    client: httpx.AsyncClient,
) -> None:
    query = signed("docs/", prefix=True)
    for url in (f"/files/docs/?format=json&{query}", f"/files/docs/?{query}"):
        listing = await client.get(url)
        assert listing.status_code == 200
        assert_nothing_private(listing)
    names = {e["name"] for e in (await client.get(f"/files/docs/?format=json&{query}")).json()["entries"]}
    assert names == {"a.txt", "sub", "to-sub"}
    sums = await client.get(f"/files/docs/?checksums=all&{query}")
    assert sums.status_code == 200
    assert_nothing_private(sums)
    assert sorted(line.split("  ")[1] for line in sums.text.splitlines()) == ["a.txt", "sub/b.txt"]
    # What the folder grants is still served, also through a symlink that stays inside it.
    assert (await client.get(f"/files/docs/sub/b.txt?{query}")).content == b"b\n"
    assert (await client.get(f"/files/docs/to-sub/b.txt?{query}")).content == b"b\n"


@pytest.mark.anyio
async def test_a_folder_link_to_a_symlinked_folder_grants_where_it_leads(client: httpx.AsyncClient) -> None:
    query = signed("shared/", prefix=True)
    assert (await client.get(f"/files/shared/p.txt?{query}")).content == PRIVATE[0]
    assert (await client.get(f"/files/shared/deep/q.txt?{query}")).content == PRIVATE[1]
    listing = await client.get(f"/files/shared/?format=json&{query}")
    assert {e["name"] for e in listing.json()["entries"]} == {"p.txt", "deep"}
