"""FERRY_DOWNLOAD_AUTH in-process: signed links (head and ranges, prefix listings and redirects),
expiry, tampering, rotation, address binding; token mode; minting; and no answer that says whether
a file exists; on a local ROOT and on the same tree in a bucket (tests/support/buckets.py, marker
`engine`). Real clients following links (curl, wget, aria2c, the browser's share button), `ferry
sign` and the access log are tests/clients/test_access_control.py's, against a real `ferry serve`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from urllib.parse import quote, urljoin

import httpx
import pytest

from app.http.signing import link_target, new_link
from tests.support.buckets import backend_fixture, both_backends, module_app_pools
from tests.support.inprocess import AppPool
from tests.support.servers import Server

NEW = "new-signing-key-0123456789abcdef"
OLD = "old-signing-key-0123456789abcdef"
WRITE = "write-token-for-tests"
READ = "read-token-for-tests"
BIG = (hashlib.sha256(b"ferry").digest() * (2 * 1024**2 // 32 + 5))[: 2 * 1024**2 + 123]
TREE = {
    "tree/a.txt": b"alpha\n",
    "tree/sub/b.txt": b"bravo\n",
    "tree/sub/deep/c 1#.bin": bytes(range(256)) * 8,
    "tree-other/x.txt": b"sibling\n",
    "secret.txt": b"not shared\n",
    "big.bin": BIG,
}


def _root(base: Path) -> Path:
    root = base / "root"
    for rel, data in TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "tree" / ".hidden").write_bytes(b"hidden\n")
    return root


def mint(
    server: Server,
    path: str,
    *,
    prefix: bool = False,
    key: str = NEW,
    ttl: int = 3600,
    ip: str | None = None,
    expires: int | None = None,
) -> str:
    link = new_link(path, ttl=ttl, now=int(time.time()), prefix=prefix, ip=ip)
    if expires is not None:
        link = dataclasses.replace(link, expires=expires)
    return server.url + link_target(key.encode(), link)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# -- the apps ------------------------------------------------------------------------------------

backend = backend_fixture()
apps = module_app_pools("access", tree=_root)
pytest_generate_tests = both_backends


@pytest.fixture(scope="module")
def servers(apps: AppPool) -> dict[str, Server]:
    """signed (keys NEW, OLD), rotated (NEW only: OLD's links are dead), token (READ or WRITE)."""
    common = ("--write-token", WRITE)
    return {
        "signed": apps.get(*common, "--download-auth", "signed", "--signing-keys", f"{NEW},{OLD}"),
        "rotated": apps.get(*common, "--download-auth", "signed", "--signing-keys", NEW),
        "token": apps.get(*common, "--download-auth", "token", "--read-tokens", f"other-token,{READ}"),
    }


@pytest.fixture(scope="module")
def signed(servers: dict[str, Server]) -> Server:
    return servers["signed"]


@pytest.fixture
def http(apps: AppPool) -> httpx.Client:
    return apps.client


def test_signed_link_serves_head_and_ranges(http: httpx.Client, signed: Server) -> None:
    url = mint(signed, "big.bin")
    head = http.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(BIG))
    part = http.get(url, headers={"range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == BIG[10:20]
    again = http.get(url, headers={"range": "bytes=5-", "if-range": head.headers["etag"]})
    assert again.status_code == 206 and again.content == BIG[5:]


def test_prefix_listing_keeps_the_link_on_its_links(http: httpx.Client, signed: Server) -> None:
    url = mint(signed, "tree", prefix=True)
    query = url.partition("?")[2]
    page = http.get(url.replace("/tree/?", "/tree/sub/?"))
    assert page.status_code == 200
    html = page.text
    assert f'href="b.txt?{query.replace("&", "&amp;")}"' in html
    assert f'href="deep/?{query.replace("&", "&amp;")}"' in html
    # Up to tree/ (still covered) from the root, so it never looks like a child folder.
    assert f'href="/files/tree/?{query.replace("&", "&amp;")}"' in html
    assert 'href="/files/?' not in html and '<a href="../' not in html  # above the shared folder: no link
    assert '<form class="search" method="get" role="search" hidden>' in html
    listing = http.get(url + "&format=json").json()
    assert {e["url"] for e in listing["entries"]} == {
        f"/files/tree/a.txt?{query}",
        f"/files/tree/sub/?{query}",
    }


def test_prefix_link_without_the_slash_redirects_with_the_link(http: httpx.Client, signed: Server) -> None:
    url = mint(signed, "tree", prefix=True).replace("/tree/?", "/tree?")
    response = http.get(url)
    assert response.status_code == 301
    assert response.headers["location"] == "/files/tree/?" + url.partition("?")[2]
    assert http.get(url, follow_redirects=True).status_code == 200


# -- refusals -------------------------------------------------------------------------------------


def test_short_lived_link_works_then_expires_with_410(http: httpx.Client, signed: Server) -> None:
    expires = int(time.time()) + 4  # at least 3 s for one download on a loaded machine
    url = mint(signed, "tree/a.txt", expires=expires)
    assert http.get(url).content == TREE["tree/a.txt"]
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    gone = http.get(url)
    assert gone.status_code == 410
    assert "expired" in gone.json()["detail"]
    assert http.get(url, headers={"range": "bytes=0-1"}).status_code == 410


def _tampered(url: str) -> dict[str, str]:
    base, _, query = url.partition("?")
    params = dict(item.split("=", 1) for item in query.split("&"))
    sig = params["sig"]
    flipped = ("B" if sig[5] == "A" else "A").join((sig[:5], sig[6:]))
    return {
        "path": url.replace("/tree/a.txt?", "/tree/b.txt?"),
        "path-case": url.replace("/tree/a.txt?", "/tree/A.txt?"),
        "other-file": url.replace("/tree/a.txt?", "/secret.txt?"),
        "encoded-climb": url.replace("/tree/a.txt?", "/tree/a.txt/..%2F..%2Fsecret.txt?"),
        "expires-later": url.replace(
            f"expires={params['expires']}", f"expires={int(params['expires']) + 60}"
        ),
        "expires-earlier": url.replace(
            f"expires={params['expires']}", f"expires={int(params['expires']) - 1}"
        ),
        "sig": url.replace(sig, flipped),
        "sig-truncated": url.replace(sig, sig[:-2]),
        "sig-missing": f"{base}?expires={params['expires']}",
        "prefix-added": url.replace("&sig=", "&prefix=/tree/&sig="),
        "ip-added": url.replace("&sig=", "&ip=127.0.0.1/32&sig="),
    }


@pytest.mark.parametrize("how", list(_tampered("http://h/files/tree/a.txt?expires=1&sig=" + "x" * 43)))
def test_tampered_link_is_403(http: httpx.Client, signed: Server, how: str) -> None:
    url = _tampered(mint(signed, "tree/a.txt"))[how]
    response = http.get(url)
    assert response.status_code == 403, (how, response.text)
    assert response.content != TREE["tree/a.txt"]


def test_prefix_link_covers_neither_siblings_nor_parents(http: httpx.Client, signed: Server) -> None:
    url = mint(signed, "tree", prefix=True)
    query = url.partition("?")[2]
    for path in ("tree-other/x.txt", "tree-other/", "secret.txt", "", "tree/sub/..%2F..%2Fsecret.txt"):
        assert http.get(f"{signed.url}/files/{path}?{query}").status_code == 403, path
    assert http.get(f"{signed.url}/files/tree/sub/b.txt?{query}").content == b"bravo\n"
    assert http.get(f"{signed.url}/files/tree/?{query}&q=secret").status_code == 403  # search: token only


def test_rotation_keeps_old_links_while_the_old_key_is_listed(
    http: httpx.Client, servers: dict[str, Server]
) -> None:
    signed, rotated = servers["signed"], servers["rotated"]
    old = mint(signed, "tree/a.txt", key=OLD)
    assert http.get(old).content == b"alpha\n"  # NEW first, OLD still listed
    assert http.get(old.replace(signed.url, rotated.url)).status_code == 403  # OLD dropped
    new = mint(rotated, "tree/a.txt", key=NEW)
    assert http.get(new).status_code == 200
    assert http.get(new.replace(rotated.url, signed.url)).status_code == 200


def test_link_bound_to_a_network(http: httpx.Client, signed: Server) -> None:
    assert http.get(mint(signed, "tree/a.txt", ip="127.0.0.0/8")).status_code == 200
    assert http.get(mint(signed, "tree/a.txt", ip="10.0.0.0/8")).status_code == 403


def test_missing_and_forbidden_files_get_the_same_answer(
    http: httpx.Client, servers: dict[str, Server]
) -> None:
    signed, token = servers["signed"], servers["token"]
    for server in (signed, token):
        exists, missing = (
            http.get(f"{server.url}/files/secret.txt"),
            http.get(f"{server.url}/files/nope.txt"),
        )
        assert exists.status_code == missing.status_code == 401
        assert exists.content == missing.content
        assert (
            exists.headers["www-authenticate"]
            == missing.headers["www-authenticate"]
            == 'Bearer realm="ferry"'
        )
    for path in ("secret.txt", "nope.txt", "tree/.hidden", "tree/../secret.txt"):
        bad = mint(signed, "tree/a.txt").replace("/tree/a.txt?", f"/{quote(path)}?")
        assert http.get(bad).status_code == 403, path
    folder = mint(signed, "tree", prefix=True).partition("?")[2]
    assert http.get(f"{signed.url}/files/tree/missing.txt?{folder}").status_code == 404  # allowed to know


# -- token mode, and tokens in signed mode --------------------------------------------------------

READS = [
    "/files/",
    "/files/tree/",
    "/files/tree/?format=json",
    "/files/tree/a.txt",
    "/files/?q=a",
    "/api/files/tree",
    "/api/files/tree/a.txt",
    "/api/search?q=txt",
]


@pytest.mark.parametrize("mode", ["token", "signed"])
def test_reads_refuse_without_a_token_and_accept_with_one(
    apps: AppPool, servers: dict[str, Server], mode: str
) -> None:
    server = servers[mode]
    with apps.client_for(server.url) as client:
        for path in READS:
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert client.get(path, headers=bearer("wrong")).status_code == 401, path
            for token in (READ, WRITE) if mode == "token" else (WRITE,):
                assert client.get(path, headers=bearer(token)).status_code == 200, (path, token)
        assert client.head("/files/tree/a.txt").status_code == 401
        assert client.head("/files/tree/a.txt", headers=bearer(WRITE)).status_code == 200


def test_operations_and_assets_stay_public(apps: AppPool, servers: dict[str, Server]) -> None:
    with apps.client_for(servers["token"].url) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
        page = client.get("/files/", headers=bearer(READ)).text
        asset = page.split('<link rel="stylesheet" href="')[1].split('"')[0]
        assert client.get(urljoin("/files/", asset)).status_code == 200
        assert client.get("/openapi.json").status_code == 200


def test_links_never_open_the_api(http: httpx.Client, signed: Server) -> None:
    query = mint(signed, "", prefix=True).partition("?")[2]
    assert http.get(f"{signed.url}/files/?{query}").status_code == 200  # the whole tree's listing
    assert http.get(f"{signed.url}/api/search?q=txt&{query}").status_code == 401
    assert http.get(f"{signed.url}/api/files/tree?{query}").status_code == 401


# -- minting --------------------------------------------------------------------------------------


def test_post_api_sign_mints_a_working_link_with_the_write_token(http: httpx.Client, signed: Server) -> None:
    body = {"path": "tree/sub", "ttl": "1h", "prefix": True}
    assert http.post(f"{signed.url}/api/sign", json=body).status_code == 401
    assert http.post(f"{signed.url}/api/sign", json=body, headers=bearer(READ)).status_code == 401
    response = http.post(f"{signed.url}/api/sign", json=body, headers=bearer(WRITE))
    assert response.status_code == 200, response.text
    link = response.json()
    assert link["url"] == signed.url + link["href"]
    assert 3590 <= link["expires"] - time.time() <= 3600
    assert http.get(link["url"].replace("/sub/?", "/sub/b.txt?")).content == b"bravo\n"
    bad = http.post(f"{signed.url}/api/sign", json={"path": "../x", "ttl": 60}, headers=bearer(WRITE))
    assert bad.status_code == 400
    assert (
        http.post(
            f"{signed.url}/api/sign", json={"path": "x", "ttl": "1y"}, headers=bearer(WRITE)
        ).status_code
        == 422
    )
    schema = http.get(f"{signed.url}/openapi.json").json()
    assert "/api/sign" in schema["paths"] and "SignedLink" in schema["components"]["schemas"]
