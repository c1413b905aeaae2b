"""A real browser uploads through the listing page (issue 5): picker, drag and drop, token, progress.

Headless Chromium (Debian's /usr/bin/chromium, launched as in test_browser.py) opens a listing of a
`ferry serve --write-token`, types the token once (the tab keeps it in sessionStorage), uploads
files with one multipart POST each and sees them listed; the files then download byte for byte.
Screenshots of the panel (light, dark, phone, while dragging, mid-upload) are kept in
tests/artifacts/.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, FilePayload, Page, expect

from tests.clients.browser import ARTIFACTS, OpenPage, screenshot
from tests.conftest import FerryServer, start_server

pytestmark = pytest.mark.clients

TOKEN = "ferry-upload-token-7Qx"
TOKEN_KEY = "ferry.writeToken"
MiB = 1024**2
UNICODE_NAME = "résumé 数据 ✓.bin"
LIMIT = 8 * MiB
FOLDERS = ("picked", "refused", "dropped", "throttled", "looks", "toobig")


@pytest.fixture(scope="module")
def writable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryServer]:
    base = tmp_path_factory.mktemp("upload")
    (base / "cwd").mkdir()
    root = base / "root"
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True)
    (root / "looks" / "notes.txt").write_bytes(b"already here\n")
    server = start_server(root, base / "cwd", "--write-token", TOKEN, "--max-upload-size", str(LIMIT))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def readonly(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryServer]:
    base = tmp_path_factory.mktemp("readonly")
    (base / "cwd").mkdir()
    (base / "root").mkdir()
    (base / "root" / "a.txt").write_bytes(b"a\n")
    server = start_server(base / "root", base / "cwd")
    yield server
    server.stop()


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """Open a page in a fresh context (its own sessionStorage); CSP reports are test failures."""
    contexts, violations = [], []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    def open_page(url: str, **options: Any) -> Page:
        context = browser.new_context(**{"viewport": {"width": 1100, "height": 720}, **options})
        contexts.append(context)
        page = context.new_page()
        page.on("console", on_console)
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert violations == []


def payload(name: str, data: bytes) -> FilePayload:
    return {"name": name, "mimeType": "application/octet-stream", "buffer": data}


def stored_token(page: Page) -> str | None:
    value: str | None = page.evaluate(f"sessionStorage.getItem({TOKEN_KEY!r})")
    return value


def enter_token(page: Page, token: str) -> None:
    page.get_by_label("Write token").fill(token)
    page.get_by_role("button", name="Use token").click()


def on_disk(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def download(page: Page, name: str) -> bytes:
    href = page.get_by_role("link", name=name, exact=True).get_attribute("href")
    assert href is not None
    response = httpx.get(urljoin(page.url, href), timeout=30)
    assert response.status_code == 200
    return response.content


# -- the acceptance test: two files through the picker, then byte-for-byte downloads ----------


def test_two_files_upload_through_the_page_and_download_byte_for_byte(
    writable: FerryServer, open_page: OpenPage
) -> None:
    files = {UNICODE_NAME: os.urandom(1 * MiB + 17), "dataset part 2.bin": os.urandom(3 * MiB)}
    page = open_page(f"{writable.url}/files/picked/")
    panel = page.locator("section.upload")
    expect(panel.locator(".upload-ui")).to_be_visible()
    expect(panel.get_by_label("Write token")).to_be_visible()  # asked for once, before anything else
    expect(panel.locator("button.forget")).to_be_hidden()
    screenshot(page, "upload-token.png")

    enter_token(page, TOKEN)
    expect(panel.locator("form.token")).to_be_hidden()  # stored: not asked again
    expect(panel.locator("button.forget")).to_be_visible()
    assert stored_token(page) == TOKEN

    page.locator("section.upload input[type=file]").set_input_files(
        [payload(name, data) for name, data in files.items()]
    )
    done = panel.locator("ul.uploads li.done")
    expect(done).to_have_count(2, timeout=60_000)
    for name in files:
        row = panel.locator("ul.uploads li", has_text=name)
        expect(row.locator(".status")).to_have_text(re.compile(r"^Uploaded · \d"))
        bar = row.locator("progress")
        assert bar.evaluate("bar => bar.value === bar.max && bar.max > 1")

    # The listing is fetched again and its table swapped in: both rows, marked as new.
    for name in files:
        expect(page.locator("tr.file.fresh td.name .label", has_text=name)).to_have_count(1)
    expect(page.locator("p.summary")).to_have_text("2 items")
    expect(page.locator("button.copy").first).to_be_visible()  # the new rows are enhanced too
    screenshot(page, "upload-done.png")

    for name, data in files.items():
        assert download(page, name) == data
        assert (writable.root / "picked" / name).read_bytes() == data
    assert on_disk(writable.root / "picked") == sorted(files)  # no temporary file left

    # The token never reaches a URL or the page; reloading keeps it for this tab.
    assert TOKEN not in page.url and TOKEN not in page.content()
    page.reload()
    expect(panel.locator("form.token")).to_be_hidden()
    panel.locator("button.forget").click()
    expect(panel.get_by_label("Write token")).to_be_visible()
    assert stored_token(page) is None


def test_progress_bar_moves_while_a_file_is_sent(writable: FerryServer, open_page: OpenPage) -> None:
    page = open_page(f"{writable.url}/files/throttled/")
    enter_token(page, TOKEN)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 1 * MiB},
    )
    data = os.urandom(4 * MiB)
    page.locator("section.upload input[type=file]").set_input_files([payload("slow.bin", data)])
    row = page.locator("ul.uploads li", has_text="slow.bin")
    page.wait_for_function(
        "() => { const b = document.querySelector('ul.uploads progress');"
        " return b && b.value > b.max * 0.15 && b.value < b.max * 0.85; }",
        timeout=30_000,
    )
    expect(row).to_have_class("active")
    expect(row.locator(".status")).to_have_text(re.compile(r"^\d+% · [\d.]+ (KiB|MiB) of 4.0 MiB$"))
    screenshot(page, "upload-progress.png")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    expect(row).to_have_class("done", timeout=60_000)
    assert (writable.root / "throttled" / "slow.bin").read_bytes() == data


# -- a wrong token ----------------------------------------------------------------------------


def test_a_wrong_token_is_refused_and_nothing_is_written(writable: FerryServer, open_page: OpenPage) -> None:
    folder = writable.root / "refused"
    data = os.urandom(200_000)
    page = open_page(f"{writable.url}/files/refused/")
    enter_token(page, "not-the-token")
    page.locator("section.upload input[type=file]").set_input_files([payload("kept.bin", data)])

    error = page.locator("section.upload .token-error")
    expect(error).to_be_visible()
    expect(error).to_have_text(re.compile("refused that token"))
    expect(page.get_by_label("Write token")).to_be_visible()  # asked again
    expect(page.get_by_label("Write token")).to_be_focused()
    assert stored_token(page) is None  # the refused token is forgotten
    row = page.locator("ul.uploads li", has_text="kept.bin")
    expect(row.locator(".status")).to_have_text("Waiting for the token")
    screenshot(page, "upload-refused.png")
    assert on_disk(folder) == []  # nothing stored, not even a temporary file
    assert page.locator("tr.file").count() == 0

    # The waiting file goes as soon as the right token is given.
    enter_token(page, TOKEN)
    expect(error).to_be_hidden()
    expect(row).to_have_class("done", timeout=30_000)
    expect(page.locator("tr.file td.name .label", has_text="kept.bin")).to_have_count(1)
    assert (folder / "kept.bin").read_bytes() == data


# -- drag and drop ----------------------------------------------------------------------------

# A DataTransfer holding real File objects, as a drop from the desktop hands over; the events are
# dispatched where a person would drag: entering the page, over the table, dropped on the table.
DRAG_AND_DROP = """async ([files, phase]) => {
    const transfer = new DataTransfer();
    for (const [name, b64] of files) {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        transfer.items.add(new File([bytes], name, {type: "application/octet-stream"}));
    }
    const target = document.querySelector("table.listing td");
    const fire = type => {
        const event = new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: transfer});
        target.dispatchEvent(event);
        return event.defaultPrevented;
    };
    const taken = {enter: fire("dragenter"), over: fire("dragover")};
    if (phase === "drop") taken.drop = fire("drop");
    return taken;
}"""


def test_files_dropped_on_the_page_are_uploaded(writable: FerryServer, open_page: OpenPage) -> None:
    files = {"dropped one.bin": os.urandom(300_000), "zweite Datei ü.bin": os.urandom(700_001)}
    encoded = [[name, base64.b64encode(data).decode()] for name, data in files.items()]
    page = open_page(f"{writable.url}/files/dropped/")
    enter_token(page, TOKEN)

    # Dragging files over the page shows where they will go; the browser is kept from opening them.
    taken = page.evaluate(DRAG_AND_DROP, [encoded, "hover"])
    assert taken == {"enter": True, "over": True}
    expect(page.locator("body")).to_have_class(re.compile(r"\bdragging\b"))
    expect(page.locator(".drop-overlay")).to_be_visible()
    expect(page.locator(".drop-overlay")).to_contain_text("Drop to upload into “dropped”")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "upload-drag.png")  # the viewport: the overlay is fixed
    page.evaluate(
        "document.body.dispatchEvent(new DragEvent('dragleave', "
        "{bubbles: true, dataTransfer: (() => { const t = new DataTransfer();"
        " t.items.add(new File(['x'], 'x')); return t; })()}))"
    )
    expect(page.locator(".drop-overlay")).to_be_hidden()

    taken = page.evaluate(DRAG_AND_DROP, [encoded, "drop"])
    assert taken == {"enter": True, "over": True, "drop": True}
    expect(page.locator(".drop-overlay")).to_be_hidden()
    expect(page.locator("ul.uploads li.done")).to_have_count(2, timeout=30_000)
    for name, data in files.items():
        expect(page.locator("tr.file td.name .label", has_text=name)).to_have_count(1)
        assert download(page, name) == data
    assert on_disk(writable.root / "dropped") == sorted(files)


def test_dragging_text_is_left_alone(writable: FerryServer, open_page: OpenPage) -> None:
    page = open_page(f"{writable.url}/files/dropped/")
    taken = page.evaluate(
        """() => {
            const transfer = new DataTransfer();
            transfer.setData("text/plain", "just text");
            const options = {bubbles: true, cancelable: true, dataTransfer: transfer};
            const event = new DragEvent("dragenter", options);
            document.body.dispatchEvent(event);
            return event.defaultPrevented;
        }"""
    )
    assert taken is False
    expect(page.locator(".drop-overlay")).to_be_hidden()


def test_a_file_over_the_limit_is_refused_before_sending(writable: FerryServer, open_page: OpenPage) -> None:
    page = open_page(f"{writable.url}/files/toobig/")
    enter_token(page, TOKEN)
    page.locator("section.upload input[type=file]").set_input_files(
        [payload("huge.bin", b"\0" * (LIMIT + 1)), payload("small.bin", b"small\n")]
    )
    refused = page.locator("ul.uploads li", has_text="huge.bin")
    expect(refused).to_have_class("error")
    expect(refused.locator(".status")).to_have_text("Larger than this server accepts (8.0 MiB)")
    expect(page.locator("ul.uploads li", has_text="small.bin")).to_have_class("done", timeout=30_000)
    assert on_disk(writable.root / "toobig") == ["small.bin"]


# -- without writes, without JavaScript -------------------------------------------------------


def test_no_upload_panel_without_a_write_token(readonly: FerryServer, open_page: OpenPage) -> None:
    response = httpx.get(f"{readonly.url}/files/")
    assert response.status_code == 200
    assert 'class="upload' not in response.text and 'type="file"' not in response.text
    page = open_page(f"{readonly.url}/files/")
    expect(page.locator("tr.file")).to_have_count(1)
    expect(page.locator("section.upload")).to_have_count(0)
    expect(page.locator("input[type=file]")).to_have_count(0)
    taken = page.evaluate(DRAG_AND_DROP, [[["x.bin", "eA=="]], "hover"])
    assert taken == {"enter": False, "over": False}  # nothing listens for drops


def test_without_javascript_the_panel_says_what_to_do(writable: FerryServer, open_page: OpenPage) -> None:
    page = open_page(f"{writable.url}/files/looks/", java_script_enabled=False)
    note = page.locator(".upload-off")
    expect(note).to_be_visible()
    expect(note).to_contain_text("needs JavaScript")
    expect(page.locator(".upload-ui")).to_be_hidden()  # no half-working form
    expect(page.locator("#ferry-token")).to_be_hidden()
    screenshot(page, "upload-nojs.png")


def test_the_page_holds_no_token_and_allows_only_its_own_origin(writable: FerryServer) -> None:
    response = httpx.get(f"{writable.url}/files/looks/")
    assert TOKEN not in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe" not in csp
    # The token field has no name: even a form submitted without JavaScript could not carry it.
    field = re.search(r'<input id="ferry-token"[^>]*>', response.text)
    assert field is not None and " name=" not in field.group(0)


# -- how it looks -----------------------------------------------------------------------------


def fill_the_list(page: Page) -> None:
    """One finished upload and one refused, so the screenshots show both states."""
    page.locator("section.upload input[type=file]").set_input_files(
        [
            payload("holiday photos 2024 – the very long name of an archive.zip", os.urandom(150_000)),
            payload("too big.iso", b"\0" * (LIMIT + 1)),
        ]
    )
    expect(page.locator("ul.uploads li.done")).to_have_count(1, timeout=30_000)
    expect(page.locator("ul.uploads li.error")).to_have_count(1)


def test_screenshots_light_dark_and_phone(writable: FerryServer, open_page: OpenPage) -> None:
    light = open_page(f"{writable.url}/files/looks/")
    enter_token(light, TOKEN)
    fill_the_list(light)
    screenshot(light, "upload-light.png")

    dark = open_page(f"{writable.url}/files/looks/", color_scheme="dark")
    screenshot(dark, "upload-dark-token.png")
    enter_token(dark, TOKEN)
    fill_the_list(dark)
    zone = dark.locator(".dropzone").evaluate("el => getComputedStyle(el).backgroundColor")
    assert zone != light.locator(".dropzone").evaluate("el => getComputedStyle(el).backgroundColor")
    screenshot(dark, "upload-dark.png")

    phone = open_page(
        f"{writable.url}/files/looks/",
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    expect(phone.get_by_label("Write token")).to_be_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(phone, "upload-phone-token.png")
    enter_token(phone, TOKEN)
    fill_the_list(phone)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    screenshot(phone, "upload-phone.png")
