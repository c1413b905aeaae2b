"""Listings, search and the JSON API of a bucket (FERRY_STORAGE=s3://…) come from the index the
bucket keeper fills by listing the bucket (app/storage/bucket_index.py), in pages of 1000 keys,
again every FERRY_RESCAN_INTERVAL: objects added or removed by any other S3 client appear and
disappear there, and a listing's ETag is the one a download of the same object answers with.

In-process (create_app + httpx.ASGITransport) against the session's `weed mini`; each test serves
a key prefix of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import obstore
import pytest

from tests.integration.test_index_listings import AWKWARD, AWKWARD_DIR, NESTED_DIR
from tests.support.buckets import new_prefix, plant, serving
from tests.support.seaweed import Seaweed
from tests.support.servers import PATIENCE

pytestmark = [pytest.mark.engine, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 2 * PATIENCE) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.1)
    return await condition()


def names(listing: dict[str, Any]) -> set[str]:
    return {entry["name"] for entry in listing["entries"]}


TREE = {
    "docs/Annual Report.pdf": b"%PDF annual\n",
    "docs/notes.txt": b"notes\n",
    "docs/sub/deep.bin": bytes(range(256)),
    "docs/.secret": b"hidden\n",
    "top.txt": b"top\n",
    ".hidden/x.txt": b"hidden\n",
}


async def test_listings_and_search_come_from_the_index_with_the_downloads_etags(
    seaweed: Seaweed, tmp_path: Path
) -> None:
    prefix = new_prefix("listing")
    await plant(seaweed, prefix, TREE)
    async with serving(seaweed, tmp_path, prefix) as http:
        root = (await http.get("/files/?format=json")).json()
        assert names(root) == {"docs", "top.txt"}
        docs = await http.get("/files/docs/?format=json")
        assert docs.status_code == 200
        entries = {entry["name"]: entry for entry in docs.json()["entries"]}
        assert set(entries) == {"Annual Report.pdf", "notes.txt", "sub"}
        assert entries["sub"]["type"] == "dir" and entries["sub"]["url"] == "/files/docs/sub/"
        for name in ("Annual Report.pdf", "notes.txt"):
            entry = entries[name]
            got = await http.get(entry["url"])
            assert got.status_code == 200 and got.content == TREE[f"docs/{name}"]
            assert entry["etag"] == got.headers["etag"] == (await http.head(entry["url"])).headers["etag"]
            assert entry["size"] == len(got.content)
            assert (await http.get(entry["url"], headers={"if-none-match": entry["etag"]})).status_code == 304

        html = (await http.get("/files/docs/")).text
        assert f'href="{quote("Annual Report.pdf")}"' in html and 'href="sub/"' in html
        assert ".secret" not in html

        found = (await http.get("/api/search", params={"q": "rEpOrT"})).json()
        assert [entry["path"] for entry in found["entries"]] == ["docs/Annual Report.pdf"]
        assert found["entries"][0]["etag"] == entries["Annual Report.pdf"]["etag"]
        assert "Annual Report.pdf" in (await http.get("/files/?q=report")).text
        hidden = (await http.get("/api/search", params={"q": "x.txt"})).json()
        assert hidden["entries"] == []


async def test_the_json_api_answers_from_the_index_of_a_bucket(seaweed: Seaweed, tmp_path: Path) -> None:
    prefix = new_prefix("api")
    await plant(seaweed, prefix, TREE)
    async with serving(seaweed, tmp_path, prefix) as http:
        entry = await http.get("/api/files/docs/notes.txt")
        assert entry.status_code == 200, entry.text
        download = await http.get("/files/docs/notes.txt")
        assert entry.json()["etag"] == download.headers["etag"]
        assert entry.json()["size"] == len(TREE["docs/notes.txt"])
        folder = await http.get("/api/files/docs", params={"limit": 2})
        assert folder.status_code == 200
        first = folder.json()
        assert len(first["entries"]) == 2 and first["next_cursor"]
        rest = (await http.get("/api/files/docs", params={"limit": 2, "cursor": first["next_cursor"]})).json()
        assert names(first) | names(rest) == {"Annual Report.pdf", "notes.txt", "sub"}
        assert names((await http.get("/api/files/")).json()) == {"docs", "top.txt"}
        for missing in ("missing.txt", "docs/.secret", ".hidden/x.txt", "docs/nope/"):
            assert (await http.get(f"/api/files/{missing}")).status_code == 404, missing
        # Asking for a path never drops what the index knows.
        assert names((await http.get("/files/docs/?format=json")).json()) == {
            "Annual Report.pdf",
            "notes.txt",
            "sub",
        }


async def test_objects_added_and_removed_behind_ferrys_back_show_at_the_next_rescan(
    seaweed: Seaweed, tmp_path: Path
) -> None:
    prefix = new_prefix("rescan")
    await plant(seaweed, prefix, {"gone.txt": b"gone\n", "keep/a.txt": b"a\n"})
    store = seaweed.store()
    async with serving(seaweed, tmp_path, prefix, rescan_interval=1.0) as http:

        async def listed() -> set[str]:
            return names((await http.get("/files/?format=json")).json())

        async def searched(query: str) -> list[str]:
            found = (await http.get("/api/search", params={"q": query})).json()
            return [entry["path"] for entry in found["entries"]]

        assert await listed() == {"gone.txt", "keep"}
        await obstore.put_async(store, f"{prefix}/new folder/fresh.txt", b"fresh\n")
        await obstore.delete_async(store, f"{prefix}/gone.txt")
        assert await eventually(lambda: _equal(listed(), {"keep", "new folder"}))
        assert await searched("fresh") == ["new folder/fresh.txt"]
        assert await searched("gone") == []
        assert names((await http.get("/files/new%20folder/?format=json")).json()) == {"fresh.txt"}
        assert (await http.get("/files/new%20folder/fresh.txt")).content == b"fresh\n"


async def _equal(value: Awaitable[set[str]], expected: set[str]) -> bool:
    return await value == expected


async def test_without_a_rescan_an_outside_upload_is_served_but_not_listed(
    seaweed: Seaweed, tmp_path: Path
) -> None:
    prefix = new_prefix("norescan")
    await plant(seaweed, prefix, {"a.txt": b"a\n"})
    async with serving(seaweed, tmp_path, prefix, rescan_interval=0) as http:
        await obstore.put_async(seaweed.store(), f"{prefix}/b.txt", b"b\n")
        assert (await http.get("/files/b.txt")).content == b"b\n"  # downloads ask the bucket
        assert names((await http.get("/files/?format=json")).json()) == {"a.txt"}


MANY = 1100  # more than one page of the bucket's listing (1000 keys) and of a JSON listing


async def test_a_folder_of_more_than_a_thousand_keys_is_listed_whole_in_pages(
    seaweed: Seaweed, tmp_path: Path
) -> None:
    prefix = new_prefix("many")
    expected = [f"k{i:05d}.bin" for i in range(MANY)]
    await plant(seaweed, prefix, {f"big/{name}": b"" for name in expected} | {"zz/after.txt": b"z\n"})
    async with serving(seaweed, tmp_path, prefix) as http:
        for endpoint, query in (("/files/big/", {"format": "json"}), ("/api/files/big", {})):
            seen: list[str] = []
            cursor: str | None = None
            pages = 0
            while True:
                params = query | {"limit": "1000"} | ({"cursor": cursor} if cursor else {})
                answer = await http.get(endpoint, params=params)
                assert answer.status_code == 200, (endpoint, answer.text[:300])
                page = answer.json()
                seen += [entry["name"] for entry in page["entries"]]
                pages += 1
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert pages == 2, endpoint
            assert seen == expected, endpoint  # nothing missing, nothing repeated, in order
        assert names((await http.get("/files/?format=json")).json()) == {"big", "zz"}
        found = (await http.get("/api/search", params={"q": "k01099"})).json()
        assert [entry["path"] for entry in found["entries"]] == ["big/k01099.bin"]
        assert (await http.get("/files/big/k00000.bin")).status_code == 200


async def test_awkward_names_list_download_and_search_as_on_a_disk(seaweed: Seaweed, tmp_path: Path) -> None:
    prefix = new_prefix("awkward")
    objects = {name: data for name, data in AWKWARD.items()}
    objects |= {f"{AWKWARD_DIR}/{name}": data + b"in a dir\n" for name, data in AWKWARD.items()}
    objects[f"{NESTED_DIR}/inner file.txt"] = b"nested\n"
    await plant(seaweed, prefix, objects)
    async with serving(seaweed, tmp_path, prefix) as http:
        for folder in ("", AWKWARD_DIR, NESTED_DIR):
            url = "/files/" + (quote(folder) + "/" if folder else "")
            listing = (await http.get(url, params={"format": "json"})).json()
            assert listing["path"] == folder
            below = {
                key[len(folder) + 1 if folder else 0 :].split("/")[0]
                for key in objects
                if not folder or key.startswith(folder + "/")
            }
            assert [e["name"] for e in listing["entries"]] == sorted(below), folder
            for entry in listing["entries"]:
                path = f"{folder}/{entry['name']}" if folder else entry["name"]
                if entry["type"] == "dir":
                    assert (await http.get(entry["url"], params={"format": "json"})).json()["path"] == path
                    continue
                got = await http.get(entry["url"])
                assert got.status_code == 200 and got.content == objects[path], path
                assert entry["etag"] == got.headers["etag"], path
                assert entry["content_type"] == got.headers["content-type"], path
                single = (await http.get("/api/files/" + quote(path))).json()
                assert {**single, "sha256": None} == {**entry, "sha256": None}, path
            page = (await http.get(url)).text
            for entry in listing["entries"]:
                assert f'href="{quote(entry["name"])}{"/" if entry["type"] == "dir" else ""}"' in page
        found = (await http.get("/api/search", params={"q": "ñ"})).json()
        assert [e["path"] for e in found["entries"]] == [NESTED_DIR]
        found = (await http.get("/api/search", params={"q": "ÜNÏCÖDÉ"})).json()
        assert {e["path"] for e in found["entries"]} == {
            "Ünïcödé name.txt",
            f"{AWKWARD_DIR}/Ünïcödé name.txt",
        }
