"""POST /api/archive, in-process: paths of one folder in, the URL of their archive out; signed
for the write token's holder or a signed link's holder (never wider nor longer than theirs), plain
otherwise. Every URL it answers is fetched, and the archive read with zipfile/tarfile."""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from app.http import signing
from app.main import create_app
from tests.conftest import make_settings
from tests.support.inprocess import BASE_URL, in_process

KEY = "archive-api-signing-key-0123456789"
WRITER = "archive-api-write-token"
READER = "archive-api-read-token"
FILES = {
    "photos/a.jpg": b"\xff\xd8 jpeg\n",
    "photos/b #1?.txt": b"hash, question\n",
    "photos/résumé 数据.txt": b"unicode\n",
    "photos/sub/c.txt": b"c in sub\n",
    "photos/sub/deeper/d.bin": bytes(range(256)) * 30,
    "other/x.txt": b"elsewhere\n",
    "private/p.txt": b"private\n",
}
SIGNED = {"download_auth": "signed", "signing_keys": KEY, "read_tokens": READER, "write_token": WRITER}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for path, data in FILES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    (root / "photos" / ".hidden").write_bytes(b"hidden\n")
    (root / "photos" / "to-private").symlink_to("../private")  # in the index; outside a photos link
    return root


@asynccontextmanager
async def serving(root: Path, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    index = root.parent / f"index-{len(list(root.parent.iterdir()))}.sqlite3"
    settings: dict[str, Any] = {"follow_symlinks": True, **overrides}
    app = create_app(make_settings(root, index_path=index, watch=False, **settings))
    app.services.index.scan()
    async with in_process(app, lifespan=False) as client:
        yield client


@pytest.fixture
async def public(root: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(root) as client:
        yield client


@pytest.fixture
async def signed(root: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(root, **SIGNED) as client:
        yield client


async def ask(
    client: httpx.AsyncClient, paths: list[str], *, token: str = "", query: str = "", **extra: object
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    url = "/api/archive" + ("?" + query if query else "")
    return await client.post(url, json={"paths": paths, **extra}, headers=headers)


def link_query(path: str, *, prefix: bool = True, ttl: int = 600, ip: str | None = None) -> str:
    link = signing.new_link(path, ttl=ttl, now=int(time.time()), prefix=prefix, ip=ip)
    return urlencode(signing.link_params(KEY.encode(), link), safe="/")


def members(content: bytes, kind: str) -> dict[str, bytes]:
    if kind == "zip":
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            assert archive.testzip() is None
            return {name: archive.read(name) for name in archive.namelist()}
    found = {}
    with tarfile.open(fileobj=io.BytesIO(content)) as archive:
        for info in archive:
            data = archive.extractfile(info)
            assert data is not None, info.name
            found[info.name] = data.read()
    return found


def expected(folder: str, *paths: str) -> dict[str, bytes]:
    """The members an archive made in `folder` holds for these stored paths (below ROOT)."""
    return {path.removeprefix(folder + "/"): FILES[path] for path in paths}


async def download(client: httpx.AsyncClient, answer: httpx.Response, kind: str) -> dict[str, bytes]:
    """Fetch the answered URL (as anyone holding it: no token) and read the archive."""
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["url"] == BASE_URL + body["href"]
    response = await client.get(body["href"])
    assert response.status_code == 200, (body["href"], response.status_code, response.text[:200])
    assert response.headers["content-type"] == ("application/zip" if kind == "zip" else "application/x-tar")
    return members(response.content, kind)


def params_of(answer: httpx.Response) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in parse_qsl(urlsplit(answer.json()["href"]).query):
        found.setdefault(name, []).append(value)
    return found


# -- the URL and what it downloads ------------------------------------------------------------


@pytest.mark.anyio
async def test_a_selection_becomes_a_plain_url_of_its_folder_that_downloads_exactly_it(
    public: httpx.AsyncClient,
) -> None:
    answer = await ask(public, ["photos/sub", "photos/a.jpg"], format="tar")
    assert answer.json() == {
        "url": f"{BASE_URL}/files/photos/?archive=tar&select=a.jpg&select=sub",
        "href": "/files/photos/?archive=tar&select=a.jpg&select=sub",
        "expires": None,
    }
    assert await download(public, answer, "tar") == expected(
        "photos", "photos/a.jpg", "photos/sub/c.txt", "photos/sub/deeper/d.bin"
    )


@pytest.mark.anyio
async def test_awkward_names_are_encoded_and_zip_is_the_default(public: httpx.AsyncClient) -> None:
    answer = await ask(public, ["photos/b #1?.txt", "/photos/résumé 数据.txt", "photos/b #1?.txt"])
    assert params_of(answer) == {"archive": ["zip"], "select": ["b #1?.txt", "résumé 数据.txt"]}
    assert await download(public, answer, "zip") == expected(
        "photos", "photos/b #1?.txt", "photos/résumé 数据.txt"
    )


@pytest.mark.anyio
async def test_one_folder_is_that_folders_own_archive(public: httpx.AsyncClient) -> None:
    answer = await ask(public, ["photos/sub/"], format="zip")
    assert answer.json()["href"] == "/files/photos/sub/?archive=zip"
    assert await download(public, answer, "zip") == {
        "sub/c.txt": FILES["photos/sub/c.txt"],
        "sub/deeper/d.bin": FILES["photos/sub/deeper/d.bin"],
    }


@pytest.mark.anyio
async def test_files_of_the_root(public: httpx.AsyncClient, root: Path) -> None:
    (root / "top.txt").write_bytes(b"top\n")
    answer = await ask(public, ["top.txt", "other"], format="tar")
    assert answer.json()["href"] == "/files/?archive=tar&select=other&select=top.txt"
    assert await download(public, answer, "tar") == {"top.txt": b"top\n", "other/x.txt": FILES["other/x.txt"]}


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "paths",
    [
        pytest.param([], id="none"),
        pytest.param(["photos/a.jpg", "other/x.txt"], id="two-folders"),
        pytest.param(["photos/a.jpg", "photos/sub/c.txt"], id="folder-and-subfolder"),
        pytest.param([""], id="empty"),
        pytest.param(["/"], id="the-root-itself"),
        pytest.param(["photos/../other/x.txt"], id="dot-dot"),
        pytest.param(["photos//a.jpg"], id="empty-segment"),
        pytest.param(["photos/./a.jpg"], id="dot"),
        pytest.param(["photos\\a.jpg"], id="backslash"),
        pytest.param(["photos/a\nb"], id="control"),
        pytest.param([f"photos/f{i}" for i in range(1001)], id="over-1000"),
    ],
)
async def test_bad_selections_are_400(public: httpx.AsyncClient, paths: list[str]) -> None:
    answer = await ask(public, paths)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"].startswith("paths: ")


@pytest.mark.anyio
async def test_a_thousand_paths_are_fine_but_must_exist(public: httpx.AsyncClient) -> None:
    answer = await ask(public, ["photos/a.jpg"] * 1000)
    assert answer.status_code == 200
    assert params_of(answer)["select"] == ["a.jpg"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "paths", [["photos/missing.txt"], ["photos/a.jpg", "photos/nope"], ["photos/.hidden"]]
)
async def test_what_is_not_in_the_index_is_404(public: httpx.AsyncClient, paths: list[str]) -> None:
    answer = await ask(public, paths)
    assert answer.status_code == 404, answer.text
    assert answer.json()["detail"].endswith("is not in the index")


@pytest.mark.anyio
@pytest.mark.parametrize("body", [{"paths": "photos/a.jpg"}, {"paths": ["photos/a.jpg"], "format": "rar"}])
async def test_a_malformed_body_is_422(public: httpx.AsyncClient, body: dict[str, object]) -> None:
    assert (await public.post("/api/archive", json=body)).status_code == 422
    assert (await ask(public, ["photos/a.jpg"], ttl="forever")).status_code == 422


@pytest.mark.anyio
async def test_archives_off_is_404(root: Path) -> None:
    async with serving(root, archives=False) as client:
        answer = await ask(client, ["photos/a.jpg"])
        assert answer.status_code == 404
        assert "FERRY_ARCHIVES" in answer.json()["detail"]


# -- who may ask, and when the URL is signed --------------------------------------------------


@pytest.mark.anyio
async def test_with_downloads_behind_a_token_a_reader_needs_one(root: Path) -> None:
    async with serving(root, download_auth="token", read_tokens=READER) as client:
        assert (await ask(client, ["photos/a.jpg"])).status_code == 401
        assert (await ask(client, ["photos/a.jpg"], token="wrong")).status_code == 401
        answer = await ask(client, ["photos/a.jpg"], token=READER)
        assert answer.json()["expires"] is None  # no keys: the reader uses it with the token
        fetched = await client.get(answer.json()["href"], headers={"authorization": f"Bearer {READER}"})
        assert members(fetched.content, "zip") == {"a.jpg": FILES["photos/a.jpg"]}


@pytest.mark.anyio
async def test_signed_downloads_without_credentials_are_401(signed: httpx.AsyncClient) -> None:
    assert (await ask(signed, ["photos/a.jpg"])).status_code == 401


@pytest.mark.anyio
async def test_the_write_token_gets_a_signed_prefix_link_for_a_day_or_its_ttl(
    signed: httpx.AsyncClient,
) -> None:
    before = int(time.time())
    answer = await ask(signed, ["photos/a.jpg", "photos/sub"], token=WRITER, format="tar")
    params = params_of(answer)
    assert params["prefix"] == ["/photos/"] and "ip" not in params
    assert before + 86_400 <= answer.json()["expires"] <= int(time.time()) + 86_400
    assert int(params["expires"][0]) == answer.json()["expires"]
    assert await download(signed, answer, "tar") == expected(
        "photos", "photos/a.jpg", "photos/sub/c.txt", "photos/sub/deeper/d.bin"
    )
    one = await ask(signed, ["photos/sub"], token=WRITER, ttl="1h")
    assert params_of(one)["prefix"] == ["/photos/sub/"]  # only what was selected
    assert before + 3600 <= one.json()["expires"] <= int(time.time()) + 3600
    assert await download(signed, one, "zip") == {
        "sub/c.txt": FILES["photos/sub/c.txt"],
        "sub/deeper/d.bin": FILES["photos/sub/deeper/d.bin"],
    }


@pytest.mark.anyio
async def test_a_read_token_gets_a_plain_url(signed: httpx.AsyncClient) -> None:
    answer = await ask(signed, ["photos/a.jpg"], token=READER)
    assert answer.json()["expires"] is None
    assert answer.json()["href"] == "/files/photos/?archive=zip&select=a.jpg"


@pytest.mark.anyio
async def test_without_keys_the_write_token_gets_a_plain_url(root: Path) -> None:
    async with serving(root, write_token=WRITER) as client:
        answer = await ask(client, ["photos/a.jpg"], token=WRITER)
        assert answer.json()["expires"] is None


@pytest.mark.anyio
async def test_a_link_holder_gets_a_link_no_longer_nor_wider_than_theirs(signed: httpx.AsyncClient) -> None:
    caller = link_query("photos/", ttl=600, ip="127.0.0.1")
    caller_expires = int(dict(parse_qsl(caller))["expires"])
    answer = await ask(signed, ["photos/sub/c.txt", "photos/sub/deeper"], query=caller, format="tar")
    params = params_of(answer)
    assert params["prefix"] == ["/photos/sub/"]  # the selection's folder: inside the caller's
    assert params["ip"] == ["127.0.0.1/32"]  # the caller's network, kept
    assert answer.json()["expires"] == caller_expires  # a day asked for by default: capped
    assert await download(signed, answer, "tar") == expected(
        "photos/sub", "photos/sub/c.txt", "photos/sub/deeper/d.bin"
    )
    shorter = await ask(signed, ["photos/a.jpg"], query=caller, ttl=60)
    assert shorter.json()["expires"] <= int(time.time()) + 60


@pytest.mark.anyio
async def test_a_one_folder_link_holder_gets_that_one_folder_link(signed: httpx.AsyncClient) -> None:
    caller = link_query("photos/", prefix=False)
    answer = await ask(signed, ["photos/a.jpg", "photos/b #1?.txt"], query=caller, format="zip")
    params = params_of(answer)
    assert "prefix" not in params  # not widened to a prefix link
    assert urlsplit(answer.json()["href"]).path == "/files/photos/"
    assert await download(signed, answer, "zip") == expected("photos", "photos/a.jpg", "photos/b #1?.txt")
    # Its folders' contents are below the one folder it covers (as for ?checksums=all).
    below = await ask(signed, ["photos/a.jpg", "photos/sub"], query=caller)
    assert below.status_code == 403
    assert "one folder" in below.json()["detail"]


@pytest.mark.anyio
async def test_a_link_that_does_not_cover_the_folder_is_refused(signed: httpx.AsyncClient) -> None:
    other = link_query("other/")
    assert (await ask(signed, ["photos/a.jpg"], query=other)).status_code == 403
    deeper = link_query("photos/sub/")
    assert (await ask(signed, ["photos/a.jpg"], query=deeper)).status_code == 403
    tampered = link_query("photos/").replace("sig=", "sig=A")
    assert (await ask(signed, ["photos/a.jpg"], query=tampered)).status_code == 403
    elsewhere = link_query("photos/", ip="192.0.2.0/24")
    assert (await ask(signed, ["photos/a.jpg"], query=elsewhere)).status_code == 403


@pytest.mark.anyio
async def test_an_expired_link_is_410(signed: httpx.AsyncClient) -> None:
    link = signing.Link("/photos/", int(time.time()) - 5, prefix=True)
    query = urlencode(signing.link_params(KEY.encode(), link), safe="/")
    assert (await ask(signed, ["photos/a.jpg"], query=query)).status_code == 410


@pytest.mark.anyio
async def test_a_link_holder_cannot_select_where_a_symlink_leads_out_of_the_link(
    signed: httpx.AsyncClient,
) -> None:
    caller = link_query("photos/")
    answer = await ask(signed, ["photos/to-private"], query=caller)
    assert answer.status_code == 404
    assert b"private" not in answer.content.replace(b"to-private", b"")
    # The write token's holder may: the folder is theirs to share.
    assert (await ask(signed, ["photos/to-private"], token=WRITER)).status_code == 200


@pytest.mark.anyio
async def test_openapi_documents_the_route(public: httpx.AsyncClient) -> None:
    spec = (await public.get("/openapi.json")).json()
    route = spec["paths"]["/api/archive"]["post"]
    assert {"200", "400", "401", "403", "404", "410", "422"} <= set(route["responses"])
    schema = spec["components"]["schemas"]["ArchiveRequest"]
    assert set(schema["properties"]) == {"paths", "format", "ttl"}
