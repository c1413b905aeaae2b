"""Writes in-process (CONTRACT.md "Uploads"): the statuses, ETags and Location of PUT, POST and
DELETE with the right token, conditional writes, deletes, missing parents made and listed at once.
What needs a socket (bodies streamed or cut off, refusals before a body is read, real clients,
crashes) is tests/clients/test_uploads.py's, against a real `ferry serve`.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from app.storage.values import identity
from tests.support.inprocess import AppPool, InProcessServer

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEMP_PREFIX = ".ferry-upload-"
TIMEOUT = httpx.Timeout(30.0)
KiB = 1024


def no_temp_files(root: Path) -> bool:
    """No upload temporary file under `root` (symlinks are not followed)."""
    return not any(
        n.startswith(TEMP_PREFIX) for _, dirnames, filenames in os.walk(root) for n in [*dirnames, *filenames]
    )


def url_for(server: InProcessServer, path: str) -> str:
    return f"{server.url}/files/{quote(path)}"


def search_paths(server: InProcessServer, query: str) -> set[str]:
    response = server.client.get(f"{server.url}/api/search", params={"q": query})
    assert response.status_code == 200, response.text
    return {e["path"] for e in response.json()["entries"]}


def listing_names(server: InProcessServer, directory: str) -> set[str]:
    target = f"{server.url}/files/{quote(directory)}/" if directory else f"{server.url}/files/"
    response = server.client.get(target, params={"format": "json"})
    assert response.status_code == 200, response.text
    return {e["name"] for e in response.json()["entries"]}


def download(server: InProcessServer, path: str) -> httpx.Response:
    return server.client.get(url_for(server, path))


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[AppPool]:
    pool = AppPool(tmp_path)
    yield pool
    pool.stop()


@pytest.fixture
def storage_tree(apps: AppPool) -> Path:
    return apps.root


@pytest.fixture
def writable(apps: AppPool) -> InProcessServer:
    """An app with writes enabled over the awkward storage tree."""
    return apps.get("--write-token", TOKEN)


def test_if_match_replaces_and_deletes_only_the_current_version(
    writable: InProcessServer, storage_tree: Path
) -> None:
    url = url_for(writable, "doc.txt")
    created = writable.client.put(url, content=b"version 1", headers=AUTH)
    assert created.status_code == 201
    etag1 = created.headers["etag"]
    assert etag1 == created.json()["etag"] == download(writable, "doc.txt").headers["etag"]

    replaced = writable.client.put(url, content=b"version 2", headers={**AUTH, "If-Match": etag1})
    assert replaced.status_code == 204, replaced.text
    etag2 = replaced.headers["etag"]
    assert etag2 != etag1
    assert download(writable, "doc.txt").headers["etag"] == etag2

    stale = writable.client.put(url, content=b"version 3", headers={**AUTH, "If-Match": etag1})
    assert stale.status_code == 412
    assert (storage_tree / "doc.txt").read_bytes() == b"version 2"
    assert no_temp_files(storage_tree)

    missing = writable.client.put(
        url_for(writable, "nothing-here.txt"), content=b"x", headers={**AUTH, "If-Match": etag2}
    )
    assert missing.status_code == 412
    assert not (storage_tree / "nothing-here.txt").exists()

    assert writable.client.delete(url, headers={**AUTH, "If-Match": etag1}).status_code == 412
    assert (storage_tree / "doc.txt").read_bytes() == b"version 2"
    deleted = writable.client.delete(url, headers={**AUTH, "If-Match": etag2})
    assert deleted.status_code == 204
    assert not (storage_tree / "doc.txt").exists()
    assert download(writable, "doc.txt").status_code == 404
    assert search_paths(writable, "doc.txt") == set()


def test_delete_files_and_directories(writable: InProcessServer, storage_tree: Path) -> None:
    assert writable.client.delete(url_for(writable, "hello.txt"), headers=AUTH).status_code == 204
    assert not (storage_tree / "hello.txt").exists()
    assert "hello.txt" not in listing_names(writable, "")
    assert writable.client.delete(url_for(writable, "hello.txt"), headers=AUTH).status_code == 404
    # A directory with something in it is refused; an empty one goes.
    assert writable.client.delete(f"{writable.url}/files/sub/", headers=AUTH).status_code == 409
    assert (storage_tree / "sub" / "inner.txt").exists()
    (storage_tree / "emptydir").mkdir()
    assert writable.client.delete(f"{writable.url}/files/emptydir/", headers=AUTH).status_code == 204
    assert not (storage_tree / "emptydir").exists()
    assert writable.client.delete(f"{writable.url}/files/", headers=AUTH).status_code in (400, 403, 405, 409)
    assert storage_tree.is_dir()


def test_the_right_token_is_accepted(writable: InProcessServer, storage_tree: Path) -> None:
    put = writable.client.put(url_for(writable, "new.txt"), content=b"data", headers=AUTH)
    assert put.status_code == 201
    assert (storage_tree / "new.txt").read_bytes() == b"data"
    form = writable.client.post(f"{writable.url}/files/", files={"f": ("form.txt", b"form")}, headers=AUTH)
    assert form.status_code == 201
    assert (storage_tree / "form.txt").read_bytes() == b"form"
    assert writable.client.delete(url_for(writable, "new.txt"), headers=AUTH).status_code == 204
    assert not (storage_tree / "new.txt").exists()


def test_an_upload_stores_its_crc32_beside_its_digest(writable: InProcessServer, storage_tree: Path) -> None:
    """Computed while the body streams to disk (what a ZIP entry needs), in many chunks."""
    body = os.urandom(3 * 1024 * KiB + 7)
    put = writable.client.put(url_for(writable, "crc/put.bin"), content=body, headers=AUTH)
    assert put.status_code == 201, put.text
    form = writable.client.post(
        f"{writable.url}/files/crc/", files={"f": ("form.bin", body[:5000])}, headers=AUTH
    )
    assert form.status_code == 201, form.text
    index = writable.app.services.index
    for name, data in (("put.bin", body), ("form.bin", body[:5000])):
        stored = index.digest(identity(os.stat(storage_tree / "crc" / name)))
        assert stored is not None and stored.crc32 == zlib.crc32(data), name
        entry = index.get(f"crc/{name}")
        assert entry is not None and entry.crc32 == zlib.crc32(data)


def test_put_creates_missing_parents_visible_at_once(writable: InProcessServer, storage_tree: Path) -> None:
    body = os.urandom(10 * KiB)
    response = writable.client.put(url_for(writable, "new/deep/er/leaf.bin"), content=body, headers=AUTH)
    assert response.status_code == 201, response.text
    assert response.json()["path"] == "new/deep/er/leaf.bin"
    assert response.headers["location"] == "/files/new/deep/er/leaf.bin"
    assert (storage_tree / "new" / "deep" / "er" / "leaf.bin").read_bytes() == body
    assert "new" in listing_names(writable, "")
    assert listing_names(writable, "new") == {"deep"}
    assert listing_names(writable, "new/deep") == {"er"}
    assert listing_names(writable, "new/deep/er") == {"leaf.bin"}
    api = writable.client.get(f"{writable.url}/api/files/new/deep", timeout=TIMEOUT)
    assert api.status_code == 200 and [e["type"] for e in api.json()["entries"]] == ["dir"]
    html = writable.client.get(f"{writable.url}/files/new/deep/", timeout=TIMEOUT)
    assert html.status_code == 200 and "er/" in html.text
    assert search_paths(writable, "leaf.bin") == {"new/deep/er/leaf.bin"}
    assert search_paths(writable, "deep") == {"new/deep"}
    assert download(writable, "new/deep/er/leaf.bin").content == body
    # A file in the way of a parent directory is not replaced.
    blocked = writable.client.put(url_for(writable, "hello.txt/child.txt"), content=b"x", headers=AUTH)
    assert blocked.status_code in (400, 404, 409)
    assert (storage_tree / "hello.txt").read_bytes() == b"hello, ferry\n"
