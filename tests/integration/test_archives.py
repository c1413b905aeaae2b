"""Folder archives in-process (`?archive=zip|tar`): what they hold, their headers and validators,
ranges and preconditions as for a file, selections, limits, and link scopes.

The bytes themselves are read back with Python's zipfile and tarfile; real readers (unzip, bsdtar,
7z, GNU tar) and real clients (curl, wget, aria2c, Chromium) are in tests/clients/.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
import zipfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.http import signing
from app.main import FerryApp, create_app
from app.storage.values import FileDigest, entry_from_stat, identity
from tests.conftest import make_settings
from tests.support.inprocess import in_process

pytestmark = pytest.mark.anyio

KEY = "archive-signing-key-0123456789"
EPOCH = 1_700_000_000
FILES = {
    "a.txt": b"alpha\n",
    "with space.txt": b"spaced\n",
    "100% #1.txt": b"percent hash\n",
    'say "hi" it\'s.txt': b"quotes\n",
    "résumé 数据.bin": bytes(range(256)) * 40,
    "sub/deeper/leaf.bin": b"\0leaf\xff" * 3000,
    "sub/empty.txt": b"",
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for i, (path, data) in enumerate(FILES.items()):
        target = root / "docs" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.utime(target, (EPOCH + i, EPOCH + i))
    (root / "docs" / ".hidden.txt").write_bytes(b"hidden\n")
    (root / "docs" / "empty-folder").mkdir()
    (root / "private").mkdir()
    (root / "private" / "p.txt").write_bytes(b"private\n")
    (root / "docs" / "to-private").symlink_to("../private")  # a symlinked folder: not walked
    (root / "outside.txt").write_bytes(b"out\n")
    return root


def build(tmp_path: Path, root: Path, **overrides: object) -> FerryApp:
    app = create_app(make_settings(root, index_path=tmp_path / "index.sqlite3", watch=False, **overrides))
    app.services.index.scan()
    # A reader who browsed the symlinked folder leaves its rows in the index.
    app.services.index.list_dir("docs/to-private", limit=100)
    return app


@pytest.fixture
async def client(tmp_path: Path, root: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(build(tmp_path, root), lifespan=False) as c:
        yield c


def zip_members(body: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        return {info.filename: archive.read(info) for info in archive.infolist()}


def tar_members(body: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        out = {}
        for member in archive.getmembers():
            handle = archive.extractfile(member)
            assert handle is not None
            out[member.name] = handle.read()
        return out


def expected(prefix: str = "docs/") -> dict[str, bytes]:
    return {prefix + path: data for path, data in FILES.items()}


def store_crcs(app: FerryApp, root: Path) -> None:
    """What the background hasher leaves in the index: each file's digest with its CRC-32."""
    for path in FILES:
        target = root / "docs" / path
        data = target.read_bytes()
        digest = FileDigest(b"\0" * 32, crc32=zlib.crc32(data))
        app.services.index.put_digest(identity(target.stat()), digest)


async def test_a_folder_comes_as_a_zip_and_a_tar_of_every_servable_file_below_it(
    client: httpx.AsyncClient,
) -> None:
    z = await client.get("/files/docs/?archive=zip")
    t = await client.get("/files/docs/?archive=tar")
    assert z.status_code == t.status_code == 200
    assert zip_members(z.content) == tar_members(t.content) == expected()
    for r, kind, media in ((z, "zip", "application/zip"), (t, "tar", "application/x-tar")):
        assert r.headers["content-type"] == media
        assert r.headers["content-length"] == str(len(r.content))
        assert (
            r.headers["content-disposition"]
            == f"attachment; filename=\"docs.{kind}\"; filename*=UTF-8''docs.{kind}"
        )
        assert r.headers["etag"].startswith(f'"{kind}-') and not r.headers["etag"].startswith("W/")
        newest = EPOCH + len(FILES) - 1
        assert r.headers["last-modified"] == time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(newest))
    assert t.headers["accept-ranges"] == "bytes"
    assert z.headers["accept-ranges"] == "none"  # no CRC-32 known yet: sent whole
    with zipfile.ZipFile(io.BytesIO(z.content)) as archive:
        info = archive.getinfo("docs/sub/deeper/leaf.bin")
        assert info.date_time == time.gmtime((EPOCH + 5) // 2 * 2)[:6]  # DOS time: 2 s steps, UTC
        assert info.flag_bits & 0x0808 == 0x0808


async def test_head_has_the_headers_of_get_and_no_body(client: httpx.AsyncClient) -> None:
    for kind in ("zip", "tar"):
        got = await client.get(f"/files/docs/?archive={kind}")
        head = await client.head(f"/files/docs/?archive={kind}")
        assert head.status_code == 200 and head.content == b""
        for name in ("content-length", "etag", "last-modified", "content-type", "accept-ranges"):
            assert head.headers[name] == got.headers[name]


async def test_the_root_archive_is_named_after_the_storage_folder(client: httpx.AsyncClient) -> None:
    r = await client.get("/files/?archive=tar")
    names = set(tar_members(r.content))
    assert "root/outside.txt" in names and "root/docs/a.txt" in names
    assert not any("private/p.txt" in n and "to-private" in n for n in names)
    assert 'filename="root.tar"' in r.headers["content-disposition"]


async def test_a_changed_tree_has_a_new_etag_and_a_stale_if_range_gets_the_whole_new_archive(
    tmp_path: Path, root: Path
) -> None:
    app = build(tmp_path, root)
    async with in_process(app, lifespan=False) as client:
        await _a_changed_tree(app, client, root)


async def _a_changed_tree(app: FerryApp, client: httpx.AsyncClient, root: Path) -> None:
    first = await client.get("/files/docs/?archive=tar")
    again = await client.get("/files/docs/?archive=tar")
    assert again.headers["etag"] == first.headers["etag"] and again.content == first.content
    old = first.headers["etag"]
    assert (await client.get("/files/docs/?archive=tar", headers={"if-none-match": old})).status_code == 304
    resumed = await client.get("/files/docs/?archive=tar", headers={"range": "bytes=100-", "if-range": old})
    assert resumed.status_code == 206 and resumed.content == first.content[100:]

    target = root / "docs" / "a.txt"
    target.write_bytes(b"ALPHA, changed\n")
    os.utime(target, (EPOCH + 100, EPOCH + 100))
    app.services.index.put(entry_from_stat("docs/a.txt", target.stat()))  # as the watcher does
    stale = await client.get("/files/docs/?archive=tar", headers={"range": "bytes=100-", "if-range": old})
    assert stale.status_code == 200 and stale.headers["etag"] != old
    assert tar_members(stale.content)["docs/a.txt"] == b"ALPHA, changed\n"
    matched = await client.get("/files/docs/?archive=tar", headers={"if-match": old})
    assert matched.status_code == 412


async def test_tar_ranges_are_slices_of_the_whole_archive(client: httpx.AsyncClient) -> None:
    whole = (await client.get("/files/docs/?archive=tar")).content
    size = len(whole)
    for spec, start, stop in (
        ("0-0", 0, 1),
        ("511-1536", 511, 1537),
        (f"-{size // 3}", size - size // 3, size),
    ):
        r = await client.get("/files/docs/?archive=tar", headers={"range": f"bytes={spec}"})
        assert r.status_code == 206 and r.content == whole[start:stop]
        assert r.headers["content-range"] == f"bytes {start}-{stop - 1}/{size}"
    many = await client.get("/files/docs/?archive=tar", headers={"range": "bytes=0-9,2000-2009"})
    assert many.status_code == 206 and many.headers["content-type"].startswith("multipart/byteranges")
    assert whole[2000:2010] in many.content
    beyond = await client.get("/files/docs/?archive=tar", headers={"range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"


async def test_a_zip_takes_ranges_once_every_crc_is_known_and_is_the_same_bytes(
    tmp_path: Path, root: Path
) -> None:
    app = build(tmp_path, root)
    async with in_process(app, lifespan=False) as client:
        before = await client.get("/files/docs/?archive=zip", headers={"range": "bytes=10-"})
        assert before.status_code == 200 and before.headers["accept-ranges"] == "none"
        store_crcs(app, root)
        after = await client.get("/files/docs/?archive=zip")
        assert after.headers["accept-ranges"] == "bytes"
        assert after.content == before.content and after.headers["etag"] == before.headers["etag"]
        part = await client.get(
            "/files/docs/?archive=zip", headers={"range": "bytes=10-", "if-range": before.headers["etag"]}
        )
        assert part.status_code == 206 and part.content == before.content[10:]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_any_range_of_a_zip_with_known_crcs_is_its_slice(
    tmp_path: Path, root: Path, data: st.DataObject
) -> None:
    app = build(tmp_path / f"z{time.monotonic_ns()}", root)
    store_crcs(app, root)
    async with in_process(app, lifespan=False) as client:
        whole = (await client.get("/files/docs/?archive=zip")).content
        start = data.draw(st.integers(0, len(whole) - 1))
        stop = data.draw(st.integers(start, len(whole) - 1))
        r = await client.get("/files/docs/?archive=zip", headers={"range": f"bytes={start}-{stop}"})
        assert r.status_code == 206 and r.content == whole[start : stop + 1]


async def test_a_selection_holds_exactly_the_chosen_files_and_folders(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/files/docs/?" + urlencode([("archive", "zip"), ("select", "sub"), ("select", "a.txt")])
    )
    assert r.status_code == 200 and 'filename="docs.zip"' in r.headers["content-disposition"]
    assert zip_members(r.content) == {
        "a.txt": FILES["a.txt"],
        "sub/deeper/leaf.bin": FILES["sub/deeper/leaf.bin"],
        "sub/empty.txt": b"",
    }
    one = await client.get("/files/docs/?archive=tar&select=sub")
    assert 'filename="sub.tar"' in one.headers["content-disposition"]
    for bad in ("", "../outside.txt", "sub/empty.txt", ".."):
        refused = await client.get("/files/docs/?" + urlencode([("archive", "zip"), ("select", bad)]))
        assert refused.status_code == 400, bad
    assert (await client.get("/files/docs/?archive=zip&select=nope")).status_code == 404
    assert (await client.get("/files/docs/?archive=zip&select=.hidden.txt")).status_code == 404
    assert (await client.get("/files/docs/?archive=rar")).status_code == 400


async def test_limits_and_the_switch(tmp_path: Path, root: Path) -> None:
    for overrides, status, words in (
        ({"archive_max_files": 3}, 403, "FERRY_ARCHIVE_MAX_FILES"),
        ({"archive_max_size": 20_000}, 403, "FERRY_ARCHIVE_MAX_SIZE"),
        ({"archives": False}, 404, "FERRY_ARCHIVES"),
    ):
        app = build(tmp_path / str(len(words)) / words, root, **overrides)
        async with in_process(app, lifespan=False) as client:
            r = await client.get("/files/docs/?archive=zip")
            assert r.status_code == status and words in r.json()["detail"]
            assert (await client.get("/files/docs/sub/?archive=tar")).status_code == (
                404 if words == "FERRY_ARCHIVES" else 200
            )
            assert (await client.get("/files/docs/a.txt")).status_code == 200


async def test_a_signed_folder_link_covers_archives_of_it_and_nothing_wider(
    tmp_path: Path, root: Path
) -> None:
    app = build(tmp_path, root, download_auth="signed", signing_keys=KEY)
    link = signing.new_link("docs/sub", ttl=3600, now=int(time.time()), prefix=True)
    params = dict(signing.link_params(KEY.encode(), link))
    async with in_process(app, lifespan=False) as client:
        assert (await client.get("/files/docs/sub/?archive=zip")).status_code == 401
        ok = await client.get("/files/docs/sub/?" + urlencode({**params, "archive": "tar"}))
        assert ok.status_code == 200
        assert tar_members(ok.content) == {
            "sub/deeper/leaf.bin": FILES["sub/deeper/leaf.bin"],
            "sub/empty.txt": b"",
        }
        wider = await client.get("/files/docs/?" + urlencode({**params, "archive": "tar"}))
        assert wider.status_code in (401, 403)


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_archives_are_counted_in_metrics(client: httpx.AsyncClient) -> None:
    names = ('ferry_archives_total{format="tar"}', 'ferry_archives_total{format="zip"}')
    bytes_name = 'ferry_archive_bytes_total{format="tar"}'
    before = (await client.get("/metrics")).text
    body = (await client.get("/files/docs/?archive=tar")).content
    await client.head("/files/docs/?archive=zip")  # a HEAD sends no archive
    after = (await client.get("/metrics")).text
    assert [sample(after, n) - sample(before, n) for n in names] == [1.0, 0.0]
    assert sample(after, bytes_name) - sample(before, bytes_name) == len(body)


async def test_a_link_to_one_folders_listing_covers_an_archive_of_its_own_files_only(
    tmp_path: Path, root: Path
) -> None:
    app = build(tmp_path, root, download_auth="signed", signing_keys=KEY)
    link = signing.new_link("docs/sub/", ttl=3600, now=int(time.time()))
    params = dict(signing.link_params(KEY.encode(), link))
    async with in_process(app, lifespan=False) as client:
        assert (await client.get("/files/docs/sub/?" + urlencode(params))).status_code == 200  # its listing
        refused = await client.get("/files/docs/sub/?" + urlencode({**params, "archive": "zip"}))
        assert refused.status_code == 403 and "folder link" in refused.json()["detail"]
        own = await client.get(
            "/files/docs/sub/?" + urlencode({**params, "archive": "zip", "select": "empty.txt"})
        )
        assert own.status_code == 200 and zip_members(own.content) == {"empty.txt": b""}
