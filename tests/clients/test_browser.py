"""A real browser: headless Chromium (Debian's, driven by Playwright) sorts, searches and downloads.

Playwright never downloads a browser here: it drives /usr/bin/chromium, which `make test` (the
`tools` target) installs. Screenshots of the listing (light, dark, phone width) are kept in
tests/artifacts/ for a person to look at.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.clients.browser import OpenPage, screenshot
from tests.conftest import FerryServer, start_server

pytestmark = pytest.mark.clients

UNICODE_NAME = "résumé 数据.bin"
# name -> size; the name order, the size order and the modification order all differ.
FILES = {
    "README.md": 1_200,
    "changelog.txt": 48_000,
    "dataset-2024.parquet": 734_003_200,
    "notes & ideas.txt": 90,
    UNICODE_NAME: 300_001,
    "ubuntu-24.04-desktop-amd64.iso": 6_114_656_256,
}
DIRS = ["Photos 2024", "reports/2024"]
SEARCHED = "reports/2024/Quarterly Report Q3.pdf"
EPOCH = 1_717_000_000


def _bytes(name: str, size: int) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def build_tree(root: Path) -> None:
    for i, (name, size) in enumerate(FILES.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if size > 10_000_000:  # sparse: the listing shows a big size without writing it
            path.write_bytes(b"")
            os.truncate(path, size)
        else:
            path.write_bytes(_bytes(name, size))
        os.utime(path, (EPOCH + (i * 5 % 7) * 86_400, EPOCH + (i * 5 % 7) * 86_400))
    for directory in DIRS:
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / SEARCHED).write_bytes(b"%PDF quarterly\n")
    (root / "Photos 2024" / "beach.jpg").write_bytes(b"\xff\xd8jpeg")
    (root / ".hidden").write_bytes(b"hidden\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryServer]:
    base = tmp_path_factory.mktemp("browser")
    (base / "cwd").mkdir()
    (base / "root").mkdir()
    build_tree(base / "root")
    server = start_server(base / "root", base / "cwd", "--zero-copy", "auto")
    yield server
    server.stop()


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    contexts = []

    def open_page(url: str, **options: Any) -> Page:
        context = browser.new_context(**{"viewport": {"width": 1100, "height": 720}, **options})
        contexts.append(context)
        page = context.new_page()
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()


def names(page: Page) -> list[str]:
    return page.locator("tr:is(.file, .dir) > td.name > a .label").all_inner_texts()


def test_sort_by_size_with_a_click(site: FerryServer, open_page: OpenPage) -> None:
    page = open_page(f"{site.url}/files/")
    before = names(page)
    assert before[:2] == ["Photos 2024", "README.md"]  # by name
    page.locator("th.size button").click()
    expect(page).to_have_url(re.compile(r"sort=size"))
    files = sorted(FILES, key=lambda n: FILES[n])
    assert [n for n in names(page) if n in FILES] == files
    expect(page.locator("th.size")).to_have_attribute("aria-sort", "ascending")
    page.locator("th.size button").click()  # again: the order flips
    expect(page).to_have_url(re.compile(r"order=desc"))
    assert [n for n in names(page) if n in FILES] == files[::-1]
    expect(page.locator("th.size")).to_have_attribute("aria-sort", "descending")


def test_sorting_works_without_javascript(site: FerryServer, open_page: OpenPage) -> None:
    page = open_page(f"{site.url}/files/", java_script_enabled=False)
    expect(page.locator("button.copy").first).to_be_hidden()  # nothing half-working
    page.locator("th.mtime button").click()
    expect(page).to_have_url(re.compile(r"sort=mtime"))
    mtimes = {name: os.stat(site.root / name).st_mtime_ns for name in FILES}
    assert [n for n in names(page) if n in FILES] == sorted(FILES, key=lambda n: (mtimes[n], n))


def test_search_from_the_box(site: FerryServer, open_page: OpenPage) -> None:
    page = open_page(f"{site.url}/files/Photos%202024/")
    page.get_by_role("searchbox").fill("QUARTERLY")
    page.get_by_role("searchbox").press("Enter")
    expect(page.locator("h1")).to_have_text("Results for “QUARTERLY”")
    assert names(page) == ["Quarterly Report Q3.pdf"]
    page.get_by_role("link", name="/reports/2024/").click()
    expect(page.locator("h1")).to_have_text("2024")
    assert names(page) == ["Quarterly Report Q3.pdf"]
    crumbs = page.locator("nav.crumbs a").all_inner_texts()
    assert crumbs == ["Files", "reports"]


def test_download_by_clicking_the_link(site: FerryServer, open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(f"{site.url}/files/")
    with page.expect_download() as info:
        page.get_by_role("link", name=UNICODE_NAME, exact=True).click()
    download = info.value
    assert download.suggested_filename == UNICODE_NAME
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_bytes() == _bytes(UNICODE_NAME, FILES[UNICODE_NAME])


def test_copy_curl_command(site: FerryServer, open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(f"{site.url}/files/", permissions=["clipboard-read", "clipboard-write"])
    button = page.get_by_role("button", name=f"Copy a curl command that downloads {UNICODE_NAME}")
    expect(button).to_be_visible()
    button.click()
    expect(button).to_have_text("copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    url = f"{site.url}/files/r%C3%A9sum%C3%A9%20%E6%95%B0%E6%8D%AE.bin"
    assert copied == f"curl -fL -o '{UNICODE_NAME}' '{url}'"  # the exact name, whatever the headers
    subprocess.run(["bash", "-c", copied], cwd=tmp_path, check=True, timeout=60, capture_output=True)
    assert (tmp_path / UNICODE_NAME).read_bytes() == _bytes(UNICODE_NAME, FILES[UNICODE_NAME])


def test_screenshots_light_dark_and_phone(site: FerryServer, open_page: OpenPage) -> None:
    light = open_page(f"{site.url}/files/")
    screenshot(light, "listing.png")
    dark = open_page(f"{site.url}/files/", color_scheme="dark")
    background = dark.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background != light.evaluate("getComputedStyle(document.body).backgroundColor")
    screenshot(dark, "listing-dark.png")
    phone = open_page(
        f"{site.url}/files/", viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    expect(phone.locator("th.mtime")).to_be_hidden()  # no Modified column on a phone
    expect(phone.locator("th.size")).to_be_visible()
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing wider than the screen
    screenshot(phone, "listing-phone.png")
    search = open_page(f"{site.url}/files/?q=report")
    screenshot(search, "search.png")
