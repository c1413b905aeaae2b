"""FERRY_DOWNLOAD_AUTH against a real `ferry serve`: signed links with curl, curl -C -, wget -c and
wget -r -np; expiry, tampering, rotation; token mode; and no answer that says whether a file exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urljoin

import httpx
import pytest
from playwright.sync_api import Browser, expect

from app.http.signing import link_target, new_link
from tests.clients.test_real_clients import run
from tests.conftest import FerryServer, start_server, wait_for

pytestmark = pytest.mark.clients

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
    (base / "cwd").mkdir()
    return root


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FerryServer]]:
    """signed (keys NEW, OLD), rotated (NEW only: OLD's links are dead), token (READ or WRITE)."""
    base = tmp_path_factory.mktemp("access")
    root = _root(base)
    common = ["--zero-copy", "auto", "--write-token", WRITE]
    started: dict[str, FerryServer] = {}
    try:
        for name, env in {
            "signed": {"FERRY_DOWNLOAD_AUTH": "signed", "FERRY_SIGNING_KEYS": f"{NEW},{OLD}"},
            "rotated": {"FERRY_DOWNLOAD_AUTH": "signed", "FERRY_SIGNING_KEYS": NEW},
            "token": {"FERRY_DOWNLOAD_AUTH": "token", "FERRY_READ_TOKENS": f"other-token,{READ}"},
        }.items():
            index = ["--index-path", str(base / f"index-{name}.sqlite3")]
            started[name] = start_server(root, base / "cwd", *common, *index, env=env)
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def signed(servers: dict[str, FerryServer]) -> FerryServer:
    return servers["signed"]


def mint(
    server: FerryServer,
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


# -- signed links with real clients ---------------------------------------------------------------


def test_signed_link_downloads_with_curl_and_resumes_with_curl_c(signed: FerryServer, tmp_path: Path) -> None:
    url = mint(signed, "big.bin")
    run("curl", "-fsS", "-o", "whole.bin", url, cwd=tmp_path)
    assert (tmp_path / "whole.bin").read_bytes() == BIG
    (tmp_path / "part.bin").write_bytes(BIG[: len(BIG) // 3])
    run("curl", "-fsS", "-C", "-", "-o", "part.bin", url, cwd=tmp_path)
    assert (tmp_path / "part.bin").read_bytes() == BIG


def test_signed_link_resumes_with_wget_c(signed: FerryServer, tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(BIG[:777_777])
    result = run("wget", "-c", "-O", "big.bin", mint(signed, "big.bin"), cwd=tmp_path)
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert "206" in result.stderr


def test_prefix_link_mirrors_the_folder_with_wget_r_np(signed: FerryServer, tmp_path: Path) -> None:
    url = mint(signed, "tree", prefix=True)
    args = ["-r", "-np", "-nH", "--cut-dirs=2", "--content-disposition", "-R", "index.html*"]
    result = run("wget", *args, "-e", "robots=off", "-nv", url, cwd=tmp_path)
    got = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert got == {"a.txt", "sub/b.txt", "sub/deep/c 1#.bin"}, result.stderr
    for rel in got:
        assert (tmp_path / rel).read_bytes() == TREE["tree/" + rel]
    assert " 403" not in result.stderr and "ERROR" not in result.stderr


def test_signed_link_serves_head_and_ranges(signed: FerryServer) -> None:
    url = mint(signed, "big.bin")
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(BIG))
    part = httpx.get(url, headers={"range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == BIG[10:20]
    again = httpx.get(url, headers={"range": "bytes=5-", "if-range": head.headers["etag"]})
    assert again.status_code == 206 and again.content == BIG[5:]


def test_prefix_listing_keeps_the_link_on_its_links(signed: FerryServer) -> None:
    url = mint(signed, "tree", prefix=True)
    query = url.partition("?")[2]
    page = httpx.get(url.replace("/tree/?", "/tree/sub/?"))
    assert page.status_code == 200
    html = page.text
    assert f'href="b.txt?{query.replace("&", "&amp;")}"' in html
    assert f'href="deep/?{query.replace("&", "&amp;")}"' in html
    # Up to tree/ (still covered) from the root, so it never looks like a child folder.
    assert f'href="/files/tree/?{query.replace("&", "&amp;")}"' in html
    assert 'href="/files/?' not in html and '<a href="../' not in html  # above the shared folder: no link
    assert '<form class="search" method="get" role="search" hidden>' in html
    listing = httpx.get(url + "&format=json").json()
    assert {e["url"] for e in listing["entries"]} == {
        f"/files/tree/a.txt?{query}",
        f"/files/tree/sub/?{query}",
    }


def test_prefix_link_without_the_slash_redirects_with_the_link(signed: FerryServer) -> None:
    url = mint(signed, "tree", prefix=True).replace("/tree/?", "/tree?")
    response = httpx.get(url)
    assert response.status_code == 301
    assert response.headers["location"] == "/files/tree/?" + url.partition("?")[2]
    assert httpx.get(url, follow_redirects=True).status_code == 200


# -- refusals -------------------------------------------------------------------------------------


def test_short_lived_link_works_then_expires_with_410(signed: FerryServer) -> None:
    expires = int(time.time()) + 4  # at least 3 s for one download on a loaded machine
    url = mint(signed, "tree/a.txt", expires=expires)
    assert httpx.get(url).content == TREE["tree/a.txt"]
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    gone = httpx.get(url)
    assert gone.status_code == 410
    assert "expired" in gone.json()["detail"]
    assert httpx.get(url, headers={"range": "bytes=0-1"}).status_code == 410


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
def test_tampered_link_is_403(signed: FerryServer, how: str) -> None:
    url = _tampered(mint(signed, "tree/a.txt"))[how]
    response = httpx.get(url)
    assert response.status_code == 403, (how, response.text)
    assert response.content != TREE["tree/a.txt"]


def test_prefix_link_covers_neither_siblings_nor_parents(signed: FerryServer) -> None:
    url = mint(signed, "tree", prefix=True)
    query = url.partition("?")[2]
    for path in ("tree-other/x.txt", "tree-other/", "secret.txt", "", "tree/sub/..%2F..%2Fsecret.txt"):
        assert httpx.get(f"{signed.url}/files/{path}?{query}").status_code == 403, path
    assert httpx.get(f"{signed.url}/files/tree/sub/b.txt?{query}").content == b"bravo\n"
    assert httpx.get(f"{signed.url}/files/tree/?{query}&q=secret").status_code == 403  # search: token only


def test_rotation_keeps_old_links_while_the_old_key_is_listed(servers: dict[str, FerryServer]) -> None:
    signed, rotated = servers["signed"], servers["rotated"]
    old = mint(signed, "tree/a.txt", key=OLD)
    assert httpx.get(old).content == b"alpha\n"  # NEW first, OLD still listed
    assert httpx.get(old.replace(signed.url, rotated.url)).status_code == 403  # OLD dropped
    new = mint(rotated, "tree/a.txt", key=NEW)
    assert httpx.get(new).status_code == 200
    assert httpx.get(new.replace(rotated.url, signed.url)).status_code == 200


def test_link_bound_to_a_network(signed: FerryServer) -> None:
    assert httpx.get(mint(signed, "tree/a.txt", ip="127.0.0.0/8")).status_code == 200
    assert httpx.get(mint(signed, "tree/a.txt", ip="10.0.0.0/8")).status_code == 403


def test_missing_and_forbidden_files_get_the_same_answer(servers: dict[str, FerryServer]) -> None:
    signed, token = servers["signed"], servers["token"]
    for server in (signed, token):
        exists, missing = (
            httpx.get(f"{server.url}/files/secret.txt"),
            httpx.get(f"{server.url}/files/nope.txt"),
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
        assert httpx.get(bad).status_code == 403, path
    folder = mint(signed, "tree", prefix=True).partition("?")[2]
    assert httpx.get(f"{signed.url}/files/tree/missing.txt?{folder}").status_code == 404  # allowed to know


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
def test_reads_refuse_without_a_token_and_accept_with_one(servers: dict[str, FerryServer], mode: str) -> None:
    server = servers[mode]
    with httpx.Client(base_url=server.url) as client:
        for path in READS:
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert client.get(path, headers=bearer("wrong")).status_code == 401, path
            for token in (READ, WRITE) if mode == "token" else (WRITE,):
                assert client.get(path, headers=bearer(token)).status_code == 200, (path, token)
        assert client.head("/files/tree/a.txt").status_code == 401
        assert client.head("/files/tree/a.txt", headers=bearer(WRITE)).status_code == 200


def test_operations_and_assets_stay_public(servers: dict[str, FerryServer]) -> None:
    with httpx.Client(base_url=servers["token"].url) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
        page = client.get("/files/", headers=bearer(READ)).text
        asset = page.split('<link rel="stylesheet" href="')[1].split('"')[0]
        assert client.get(urljoin("/files/", asset)).status_code == 200
        assert client.get("/openapi.json").status_code == 200


def test_links_never_open_the_api(signed: FerryServer) -> None:
    query = mint(signed, "", prefix=True).partition("?")[2]
    assert httpx.get(f"{signed.url}/files/?{query}").status_code == 200  # the whole tree's listing
    assert httpx.get(f"{signed.url}/api/search?q=txt&{query}").status_code == 401
    assert httpx.get(f"{signed.url}/api/files/tree?{query}").status_code == 401


# -- minting --------------------------------------------------------------------------------------


def test_post_api_sign_mints_a_working_link_with_the_write_token(signed: FerryServer) -> None:
    body = {"path": "tree/sub", "ttl": "1h", "prefix": True}
    assert httpx.post(f"{signed.url}/api/sign", json=body).status_code == 401
    assert httpx.post(f"{signed.url}/api/sign", json=body, headers=bearer(READ)).status_code == 401
    response = httpx.post(f"{signed.url}/api/sign", json=body, headers=bearer(WRITE))
    assert response.status_code == 200, response.text
    link = response.json()
    assert link["url"] == signed.url + link["href"]
    assert 3590 <= link["expires"] - time.time() <= 3600
    assert httpx.get(link["url"].replace("/sub/?", "/sub/b.txt?")).content == b"bravo\n"
    bad = httpx.post(f"{signed.url}/api/sign", json={"path": "../x", "ttl": 60}, headers=bearer(WRITE))
    assert bad.status_code == 400
    assert (
        httpx.post(
            f"{signed.url}/api/sign", json={"path": "x", "ttl": "1y"}, headers=bearer(WRITE)
        ).status_code
        == 422
    )
    schema = httpx.get(f"{signed.url}/openapi.json").json()
    assert "/api/sign" in schema["paths"] and "SignedLink" in schema["components"]["schemas"]


def test_ferry_sign_prints_a_link_the_server_accepts(signed: FerryServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env |= {"FERRY_SIGNING_KEYS": f"{NEW},{OLD}", "FERRY_PUBLIC_URL": signed.url}
    result = subprocess.run(
        [sys.executable, "-m", "app", "sign", "tree/sub/deep/c 1#.bin", "--ttl", "5m"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    url = result.stdout.strip()
    assert url.startswith(f"{signed.url}/files/tree/sub/deep/c%201%23.bin?expires=")
    assert httpx.get(url).content == TREE["tree/sub/deep/c 1#.bin"]


# -- the access log -------------------------------------------------------------------------------


def test_access_log_holds_neither_signatures_nor_tokens(servers: dict[str, FerryServer]) -> None:
    signed = servers["signed"]
    url = mint(signed, "tree/a.txt")
    sig = url.rpartition("sig=")[2]
    assert httpx.get(url).status_code == 200
    assert httpx.get(f"{signed.url}/files/tree/a.txt", headers=bearer(WRITE)).status_code == 200
    assert httpx.get(f"{servers['token'].url}/files/tree/a.txt", headers=bearer(READ)).status_code == 200
    wait_for(lambda: "/files/tree/a.txt" in signed.access_log.read_text())
    for server in (signed, servers["token"]):
        log = server.access_log.read_text()
        assert "/files/tree/a.txt" in log
        for secret in (sig, WRITE, READ, NEW, OLD):
            assert secret not in log
        for line in log.splitlines():
            if line.startswith("{"):
                json.loads(line)


# -- the listing's share button -------------------------------------------------------------------


def test_share_button_copies_a_signed_link_once_the_tab_holds_the_write_token(
    signed: FerryServer, browser: Browser
) -> None:
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    try:
        page = context.new_page()
        page.goto(mint(signed, "tree", prefix=True))
        share = page.locator("tr.file button.share").first
        expect(share).to_be_hidden()  # no token in this tab: nothing half-working
        page.evaluate("token => sessionStorage.setItem('ferry.writeToken', token)", WRITE)
        page.reload()
        expect(share).to_be_visible()
        share.click()
        expect(share).to_have_text("copied")
        url = page.evaluate("navigator.clipboard.readText()")
        assert url.startswith(f"{signed.url}/files/tree/a.txt?expires=")
        assert httpx.get(url).content == b"alpha\n"
        folder = page.locator("tr.dir button.share").first
        folder.click()
        expect(folder).to_have_text("copied")
        url = page.evaluate("navigator.clipboard.readText()")
        assert "&prefix=/tree/sub/&" in url
        assert httpx.get(url.replace("/sub/?", "/sub/b.txt?")).content == b"bravo\n"
    finally:
        context.close()


def test_signed_link_to_a_meta4_lets_aria2_verify_through_it(signed: FerryServer, tmp_path: Path) -> None:
    """The .meta4 reached through a signed link lists the file's URL with the same signature, and
    the file's Link header points at a .meta4 the same link opens."""
    url = mint(signed, "big.bin")
    meta4 = httpx.get(url + "&meta4")
    assert meta4.status_code == 200, meta4.text
    assert "sig=" in meta4.text and "expires=" in meta4.text
    result = run("aria2c", "--log=-", "--log-level=info", url + "&meta4", cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin", "big.bin.meta4"]
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert "Verification finished successfully" in result.stdout, result.stdout
    deadline = time.monotonic() + 20  # once hashed in the background, the Link header names it
    while "link" not in (head := httpx.head(url)).headers and time.monotonic() < deadline:
        time.sleep(0.2)
    described = head.headers["link"].split(">", 1)[0].lstrip("<")
    assert "sig=" in described
    assert httpx.get(urljoin(signed.url, described)).headers["content-type"] == "application/metalink4+xml"
    # Without the signature, neither the file nor its .meta4 is served.
    assert httpx.get(f"{signed.url}/files/big.bin?meta4").status_code == 401
