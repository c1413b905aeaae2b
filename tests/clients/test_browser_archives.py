"""A real browser downloads folders: headless Chromium (Debian's, driven by Playwright) clicks the
listing's "Download zip", ticks rows for "Download selected" (by mouse, by keyboard, and with
JavaScript off), and the saved archive holds exactly the folder's or the ticked rows' bytes.
Screenshots (light, dark, phone width) are kept in tests/artifacts/.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Download, FilePayload, Page, expect

from tests.clients.browser import OpenPage, screenshot
from tests.conftest import FerryServer, start_server

pytestmark = pytest.mark.clients

FOLDER = "album 2024"
TOKEN = "archives-write-token-3Fq"
FILES = {  # below FOLDER
    "cover.jpg": 20_000,
    "notes & ideas.txt": 700,
    "résumé 数据.bin": 300_001,
    "raw/IMG_0001.dng": 150_000,
    "raw/deeper/IMG_0002.dng": 90_000,
}


def _bytes(name: str, size: int) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryServer]:
    base = tmp_path_factory.mktemp("archives")
    (base / "cwd").mkdir()
    for name, size in FILES.items():
        path = base / "root" / FOLDER / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_bytes(name, size))
    (base / "root" / FOLDER / ".hidden").write_bytes(b"never in an archive\n")
    (base / "root" / "inbox").mkdir()
    server = start_server(base / "root", base / "cwd", "--write-token", TOKEN)
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


def listing(site: FerryServer) -> str:
    return f"{site.url}/files/album%202024/"


def saved(download: Download, tmp_path: Path) -> bytes:
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    return path.read_bytes()


def zip_members(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


def tar_members(content: bytes) -> dict[str, bytes]:
    found = {}
    with tarfile.open(fileobj=io.BytesIO(content)) as archive:
        for info in archive:
            data = archive.extractfile(info)
            assert data is not None, info.name
            found[info.name] = data.read()
    return found


def stored(prefix: str, *names: str) -> dict[str, bytes]:
    """What an archive holds for these files of FOLDER, each under `prefix`."""
    return {prefix + name: _bytes(name, FILES[name]) for name in names}


def test_download_zip_saves_the_whole_folder(site: FerryServer, open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(listing(site))
    with page.expect_download() as info:
        page.get_by_role("button", name="Download zip").click()
    download = info.value
    assert download.suggested_filename == f"{FOLDER}.zip"
    assert zip_members(saved(download, tmp_path)) == stored(f"{FOLDER}/", *FILES)


def test_download_tar_saves_the_whole_folder(site: FerryServer, open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(listing(site))
    with page.expect_download() as info:
        page.get_by_role("button", name="Download tar").click()
    assert tar_members(saved(info.value, tmp_path)) == stored(f"{FOLDER}/", *FILES)


def test_download_selected_saves_exactly_the_ticked_rows(
    site: FerryServer, open_page: OpenPage, tmp_path: Path
) -> None:
    page = open_page(listing(site))
    button = page.get_by_role("button", name="Download selected")
    expect(button).to_be_disabled()  # nothing ticked yet
    page.get_by_role("checkbox", name="Select the folder raw").check()
    page.get_by_role("checkbox", name="Select the file notes & ideas.txt").check()
    expect(page.locator("form.selection .ticked")).to_have_text("2 selected")
    expect(button).to_be_enabled()
    page.get_by_label("Format").select_option("tar")
    with page.expect_download() as info:
        button.click()
    assert info.value.suggested_filename == f"{FOLDER}.tar"
    members = tar_members(saved(info.value, tmp_path))
    assert members == stored("", "notes & ideas.txt", "raw/IMG_0001.dng", "raw/deeper/IMG_0002.dng")


def test_select_all_ticks_every_row_of_the_page(
    site: FerryServer, open_page: OpenPage, tmp_path: Path
) -> None:
    page = open_page(listing(site))
    boxes = page.locator("td.tick input[type=checkbox]")
    expect(boxes).to_have_count(4)  # three files and one folder; the hidden file is not listed
    page.get_by_role("checkbox", name="Select everything on this page").check()
    for i in range(4):
        expect(boxes.nth(i)).to_be_checked()
    expect(page.locator("form.selection .ticked")).to_have_text("4 selected")
    page.get_by_role("checkbox", name="Select the file cover.jpg").uncheck()
    expect(page.get_by_role("checkbox", name="Select everything on this page")).not_to_be_checked()
    with page.expect_download() as info:
        page.get_by_role("button", name="Download selected").click()  # zip, the default
    members = zip_members(saved(info.value, tmp_path))
    assert members == stored("", *(name for name in FILES if name != "cover.jpg"))


def test_the_keyboard_alone_ticks_and_downloads(
    site: FerryServer, open_page: OpenPage, tmp_path: Path
) -> None:
    page = open_page(listing(site))
    page.get_by_role("checkbox", name="Select the file résumé 数据.bin").focus()
    page.keyboard.press("Space")
    expect(page.get_by_role("checkbox", name="Select the file résumé 数据.bin")).to_be_checked()
    page.get_by_role("button", name="Download selected").focus()
    with page.expect_download() as info:
        page.keyboard.press("Enter")
    assert info.value.suggested_filename == "résumé 数据.bin.zip"  # one entry: named after it
    assert zip_members(saved(info.value, tmp_path)) == stored("", "résumé 数据.bin")


def test_download_selected_works_without_javascript(
    site: FerryServer, open_page: OpenPage, tmp_path: Path
) -> None:
    page = open_page(listing(site), java_script_enabled=False)
    expect(page.get_by_role("checkbox", name="Select everything on this page")).to_be_hidden()
    page.get_by_role("checkbox", name="Select the file cover.jpg").check()
    page.get_by_role("checkbox", name="Select the folder raw").check()
    page.get_by_label("Format").select_option("tar")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download selected").click()
    members = tar_members(saved(info.value, tmp_path))
    assert members == stored("", "cover.jpg", "raw/IMG_0001.dng", "raw/deeper/IMG_0002.dng")


def test_a_folder_filled_by_upload_gets_its_archive_controls(
    site: FerryServer, open_page: OpenPage, tmp_path: Path
) -> None:
    page = open_page(f"{site.url}/files/inbox/")
    expect(page.get_by_role("button", name="Download zip")).to_have_count(0)  # empty: nothing to get
    page.get_by_label("Write token").fill(TOKEN)
    page.get_by_role("button", name="Use token").click()
    data = _bytes("uploaded.bin", 70_000)
    upload: FilePayload = {"name": "uploaded.bin", "mimeType": "application/octet-stream", "buffer": data}
    page.locator("section.upload input[type=file]").set_input_files([upload])
    box = page.get_by_role("checkbox", name="Select the file uploaded.bin")
    expect(box).to_be_visible(timeout=30_000)  # the listing fetched again, its controls with it
    box.check()
    with page.expect_download() as info:
        page.get_by_role("button", name="Download selected").click()
    assert zip_members(saved(info.value, tmp_path)) == {"uploaded.bin": data}


def test_screenshots_light_dark_and_phone(site: FerryServer, open_page: OpenPage) -> None:
    light = open_page(listing(site))
    light.get_by_role("checkbox", name="Select the folder raw").check()
    screenshot(light, "archives.png")
    dark = open_page(listing(site), color_scheme="dark")
    dark.get_by_role("checkbox", name="Select the folder raw").check()
    selected = "getComputedStyle(document.querySelector('button.download-selected')).backgroundColor"
    assert dark.evaluate(selected) != light.evaluate(selected)
    screenshot(dark, "archives-dark.png")
    phone = open_page(
        listing(site), viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    phone.get_by_role("checkbox", name="Select the file cover.jpg").check()
    expect(phone.get_by_role("button", name="Download selected")).to_be_in_viewport()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    screenshot(phone, "archives-phone.png")
