"""FERRY_DOWNLOAD_AUTH against a real `ferry serve`: signed links with curl, curl -C -, wget -c,
wget -r -np and aria2c (through a .meta4), the listing's share button in Chromium, `ferry sign`, and
an access log holding neither signatures nor tokens. The statuses themselves (expiry, tampering,
rotation, token mode) are tests/integration/test_access_control.py's, in-process.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.clients.test_real_clients import run
from tests.conftest import FerryServer, start_server, wait_for
from tests.integration.test_access_control import BIG, NEW, OLD, READ, TREE, WRITE, _root, bearer, mint

pytestmark = pytest.mark.clients


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FerryServer]]:
    """signed (keys NEW, OLD), rotated (NEW only: OLD's links are dead), token (READ or WRITE)."""
    base = tmp_path_factory.mktemp("access")
    root = _root(base)
    (base / "cwd").mkdir()
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


def _logged(server: FerryServer, text: str) -> bool:
    return text in server.access_log.read_text()


def test_access_log_holds_neither_signatures_nor_tokens(servers: dict[str, FerryServer]) -> None:
    signed = servers["signed"]
    url = mint(signed, "tree/a.txt")
    sig = url.rpartition("sig=")[2]
    assert httpx.get(url).status_code == 200
    assert httpx.get(f"{signed.url}/files/tree/a.txt", headers=bearer(WRITE)).status_code == 200
    assert httpx.get(f"{servers['token'].url}/files/tree/a.txt", headers=bearer(READ)).status_code == 200
    for server in (signed, servers["token"]):
        # (each server writes its lines at the end of its event loop's turn: after the answer)
        wait_for(functools.partial(_logged, server, "/files/tree/a.txt"))
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
