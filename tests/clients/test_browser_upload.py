"""A real browser uploads through the listing page (issue 5): picker, drag and drop, token, progress.

Headless Chromium (Debian's /usr/bin/chromium, launched as in test_browser.py) opens a listing of a
`ferry serve --write-token`, types the token once (the tab keeps it in sessionStorage), uploads
files (tus at /api/uploads/: a POST, then PATCHes of 8 MiB) and sees them listed; the files then
download byte for byte. Uploads resume: a PATCH whose connection drops is retried from the
server's offset, and after a reload choosing the same file again continues it (its address kept in
localStorage). Screenshots of the panel (light, dark, phone, while dragging, mid-upload, paused)
are kept in tests/artifacts/.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, FilePayload, Page, Request, Route, expect

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


# -- resuming: tus at /api/uploads/, a connection cut, a reload -------------------------------

CHUNK = 8 * MiB  # ferry.js's PATCH size
RESUMED = ("cut", "cut-body", "reloaded", "midway", "discarded", "cancelled", "empty")
PATCHES = "**/api/uploads/*"
# Every text the upload rows' status shows, in order (a retry's countdown lasts a second or two).
RECORD_STATUSES = """() => {
    window.statuses = [];
    const seen = () => document.querySelectorAll("ul.uploads .status").forEach(s => {
        const last = window.statuses[window.statuses.length - 1];
        if (last !== s.textContent) window.statuses.push(s.textContent);
    });
    new MutationObserver(seen).observe(document.querySelector("ul.uploads"),
        {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def resuming(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryServer]:
    base = tmp_path_factory.mktemp("resuming")
    (base / "cwd").mkdir()
    root = base / "root"
    for folder in RESUMED:
        (root / folder).mkdir(parents=True)
    server = start_server(root, base / "cwd", "--write-token", TOKEN, "--max-upload-size", str(64 * MiB))
    yield server
    server.stop()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def on_disk_file(tmp_path: Path, name: str, size: int) -> tuple[Path, bytes]:
    """A file to choose, from the disk: choosing it again gives the same name, size and mtime."""
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def offset_of(request: Request) -> int:
    return int(request.headers["upload-offset"])


def wait_until(page: Page, condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Let the page run (and Playwright answer its routed requests) until `condition` holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(100)


class Holder:
    """Routes a page's PATCHes: the first goes through, the next ones are held (never answered)
    while `holding`, so an upload stands at 8 MiB for as long as a test likes."""

    def __init__(self, page: Page) -> None:
        self.held: list[Route] = []
        self.holding = True
        page.route(PATCHES, self.route)

    def route(self, route: Route) -> None:
        if self.holding and route.request.method == "PATCH" and offset_of(route.request) > 0:
            self.held.append(route)
        else:
            route.continue_()

    def wait(self, page: Page) -> None:
        """Until the second PATCH is held: the first 8 MiB are at the server."""
        wait_until(page, lambda: bool(self.held), "the second PATCH")

    def release(self) -> None:
        """Let everything through, the held PATCHes too."""
        self.holding = False
        for route in self.held:
            route.continue_()


def stored_uploads(page: Page) -> dict[str, Any]:
    found: dict[str, Any] = page.evaluate(
        "Object.fromEntries(Object.keys(localStorage).filter(k => k.startsWith('ferry.upload '))"
        ".map(k => [k, JSON.parse(localStorage.getItem(k))]))"
    )
    return found


def server_offset(url: str) -> int:
    response = httpx.head(url, headers={"Authorization": f"Bearer {TOKEN}", "Tus-Resumable": "1.0.0"})
    assert response.status_code == 200
    return int(response.headers["upload-offset"])


def gone_at_the_server(page: Page, url: str) -> None:
    """The page ends a given-up upload with a DELETE in the background: wait for its 404."""
    deadline = time.monotonic() + 30
    while (
        status := httpx.head(
            url, headers={"Authorization": f"Bearer {TOKEN}", "Tus-Resumable": "1.0.0"}
        ).status_code
    ) != 404:
        assert status == 200 and time.monotonic() < deadline
        page.wait_for_timeout(100)


def test_the_panel_offers_resumable_uploads_on_a_local_root(resuming: FerryServer) -> None:
    response = httpx.get(f"{resuming.url}/files/cut/")
    panel = re.search(r'<section class="upload"[^>]*>', response.text)
    assert panel is not None
    assert 'data-folder="cut"' in panel.group(0) and " data-resumable" in panel.group(0)


def test_a_connection_cut_mid_upload_resumes_by_itself(
    resuming: FerryServer, open_page: OpenPage, tmp_path: Path
) -> None:
    source, data = on_disk_file(tmp_path, "cut off.bin", 20 * MiB + 123)
    page = open_page(f"{resuming.url}/files/cut/")
    enter_token(page, TOKEN)
    page.evaluate(RECORD_STATUSES)
    sent: list[int] = []  # the Upload-Offset of every PATCH the page sent
    cut: list[int] = []

    def cut_the_second(route: Route) -> None:
        if route.request.method == "PATCH":
            sent.append(offset_of(route.request))
            if offset_of(route.request) > 0 and not cut:
                cut.append(offset_of(route.request))
                route.abort("connectionreset")  # the connection drops after the first 8 MiB
                return
        route.continue_()

    page.route(PATCHES, cut_the_second)
    page.locator("section.upload input[type=file]").set_input_files(source)
    row = page.locator("ul.uploads li", has_text="cut off.bin")
    expect(row).to_have_class("done", timeout=120_000)

    assert cut == [CHUNK]
    assert sent == [0, CHUNK, CHUNK, 2 * CHUNK]  # only the lost chunk went again
    statuses = page.evaluate("window.statuses")
    assert "Connection lost · retrying in 1 s" in statuses and "Reconnecting…" in statuses
    stored = resuming.root / "cut" / "cut off.bin"
    assert sha256(stored.read_bytes()) == sha256(data)
    assert on_disk(resuming.root / "cut") == ["cut off.bin"]  # no temporary file left
    assert stored_uploads(page) == {}  # a finished upload is forgotten
    expect(page.locator("tr.file.fresh td.name .label", has_text="cut off.bin")).to_have_count(1)


def test_a_reload_mid_upload_continues_from_the_servers_offset(
    resuming: FerryServer, open_page: OpenPage, tmp_path: Path
) -> None:
    source, data = on_disk_file(tmp_path, "reloaded ü.bin", 20 * MiB + 5)
    page = open_page(f"{resuming.url}/files/reloaded/")
    page.on("dialog", lambda dialog: dialog.accept())  # "leave the page?" while uploading: yes
    enter_token(page, TOKEN)
    holder = Holder(page)
    page.locator("section.upload input[type=file]").set_input_files(source)
    holder.wait(page)

    # The browser keeps the upload's address; the server has the first 8 MiB of it.
    (stored,) = stored_uploads(page).values()
    assert stored["name"] == "reloaded ü.bin" and stored["folder"] == "reloaded"
    assert stored["size"] == len(data) and stored["offset"] == CHUNK
    url = stored["url"]
    assert url.startswith(f"{resuming.url}/api/uploads/")
    assert server_offset(url) == CHUNK

    holder.holding = False  # the held PATCH is never sent: the reload drops it
    page.reload()
    assert server_offset(url) == CHUNK
    paused = page.locator("ul.uploads li.paused", has_text="reloaded ü.bin")
    expect(paused.locator(".status")).to_have_text("Paused at 39% · choose the file again to resume")
    screenshot(page, "upload-paused.png")
    assert not (resuming.root / "reloaded" / "reloaded ü.bin").exists()  # nothing visible yet

    sent: list[int] = []
    page.on("request", lambda r: sent.append(offset_of(r)) if r.method == "PATCH" else None)
    page.locator("section.upload input[type=file]").set_input_files(source)  # the same file
    row = page.locator("ul.uploads li", has_text="reloaded ü.bin")
    expect(row).to_have_count(1)  # the paused row gave way to this one
    expect(row).to_have_class("done", timeout=120_000)

    assert sent == [CHUNK, 2 * CHUNK]  # on from the server's offset: the first 8 MiB not again
    upload_id = url.rpartition("/")[2]
    patches = [
        line for line in resuming.access_log.read_text().splitlines() if "PATCH" in line and upload_id in line
    ]
    assert len(patches) == 3 and all(" 204 " in line for line in patches)  # one before, two after
    assert sha256((resuming.root / "reloaded" / "reloaded ü.bin").read_bytes()) == sha256(data)
    assert on_disk(resuming.root / "reloaded") == ["reloaded ü.bin"]
    assert stored_uploads(page) == {}


def test_a_paused_upload_can_be_discarded(resuming: FerryServer, open_page: OpenPage, tmp_path: Path) -> None:
    source, _ = on_disk_file(tmp_path, "dropped later.bin", 9 * MiB)
    page = open_page(f"{resuming.url}/files/discarded/")
    page.on("dialog", lambda dialog: dialog.accept())
    enter_token(page, TOKEN)
    holder = Holder(page)
    page.locator("section.upload input[type=file]").set_input_files(source)
    holder.wait(page)
    (stored,) = stored_uploads(page).values()
    holder.holding = False
    page.reload()
    paused = page.locator("ul.uploads li.paused", has_text="dropped later.bin")
    paused.get_by_role("button", name="Discard dropped later.bin").click()
    expect(paused).to_have_count(0)
    assert stored_uploads(page) == {}
    gone_at_the_server(page, stored["url"])
    assert on_disk(resuming.root / "discarded") == []  # no temporary file left


def test_screenshots_mid_upload_light_dark_and_phone(
    resuming: FerryServer, open_page: OpenPage, tmp_path: Path
) -> None:
    looks: list[tuple[str, dict[str, Any]]] = [
        ("light", {}),
        ("dark", {"color_scheme": "dark"}),
        (
            "phone",
            {
                "viewport": {"width": 390, "height": 844},
                "device_scale_factor": 2,
                "is_mobile": True,
                "has_touch": True,
            },
        ),
    ]
    for look, options in looks:
        source, data = on_disk_file(tmp_path, f"midway {look} – a long name of a disk image.iso", 12 * MiB)
        page = open_page(f"{resuming.url}/files/midway/", **options)
        enter_token(page, TOKEN)
        holder = Holder(page)
        page.locator("section.upload input[type=file]").set_input_files(source)
        holder.wait(page)
        row = page.locator("ul.uploads li", has_text=source.name)
        expect(row).to_have_class("active")
        expect(row.locator(".status")).to_have_text("66% · 8.0 MiB of 12.0 MiB")
        if look == "phone":
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
        screenshot(page, f"upload-midway-{look}.png")
        holder.release()  # let it go on
        expect(row).to_have_class("done", timeout=60_000)
        assert (resuming.root / "midway" / source.name).read_bytes() == data


def test_cancelling_mid_upload_ends_it_at_the_server(
    resuming: FerryServer, open_page: OpenPage, tmp_path: Path
) -> None:
    source, _ = on_disk_file(tmp_path, "cancelled midway.bin", 10 * MiB)
    page = open_page(f"{resuming.url}/files/cancelled/")
    enter_token(page, TOKEN)
    holder = Holder(page)
    page.locator("section.upload input[type=file]").set_input_files(source)
    holder.wait(page)
    (stored,) = stored_uploads(page).values()
    row = page.locator("ul.uploads li", has_text=source.name)
    row.get_by_role("button", name=f"Cancel {source.name}").click()
    expect(row).to_have_class("cancelled")
    expect(row.locator(".status")).to_have_text("Cancelled")
    assert stored_uploads(page) == {}
    gone_at_the_server(page, stored["url"])
    assert on_disk(resuming.root / "cancelled") == []  # not even a temporary file


class CuttingRelay:
    """A TCP relay in front of Ferry that drops the connection carrying the browser's bytes once,
    when `cut_at` of them have gone through in all: a PATCH cut off mid-body, as a network does.

    Ferry sees the cut first and the browser only once `settled(target)` returns (`target`: the
    cut request's path). Otherwise, on a busy machine, Chromium's own silent resend of the cut
    PATCH (it resends a request whose reused connection failed before any answer) can reach a
    worker that has not yet begun the cut append, take the upload first and send all 8 MiB again,
    which is correct of Ferry but not the case this relay is for."""

    def __init__(self, upstream: int, cut_at: int, settled: Callable[[str], None]) -> None:
        self.upstream = upstream
        self.cut_at: int | None = cut_at
        self.settled = settled
        self.forwarded = 0
        self.cuts = 0
        self.failure: BaseException | None = None  # what `settled` raised, for the test to raise
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self.pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self.pipe, args=(server, client, False), daemon=True).start()

    def pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        target = ""
        try:
            while data := source.recv(65536):
                if counted:
                    if found := re.search(rb"(?:^|\r\n)PATCH (\S+) HTTP/1\.1\r\n", data):
                        target = found.group(1).decode()
                    with self.lock:
                        room = None if self.cut_at is None else self.cut_at - self.forwarded
                        if room is not None and len(data) >= room:
                            self.cut_at, self.cuts = None, self.cuts + 1
                            sink.sendall(data[:room])
                            sink.shutdown(socket.SHUT_RDWR)  # Ferry sees the cut…
                            try:
                                self.settled(target)  # …and keeps what came, before the browser knows
                            except BaseException as failure:
                                self.failure = failure
                            break
                        self.forwarded += len(data)
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.listener.close()


def test_a_patch_cut_mid_body_resumes_from_the_bytes_the_server_kept(
    resuming: FerryServer, open_page: OpenPage, tmp_path: Path
) -> None:
    source, data = on_disk_file(tmp_path, "cut mid-body.bin", 20 * MiB + 7)

    def settled(target: str) -> None:
        """Until Ferry has kept the bytes of the cut PATCH that reached it."""
        assert target.startswith("/api/uploads/"), target
        deadline = time.monotonic() + 60
        while server_offset(resuming.url + target) <= CHUNK:
            assert time.monotonic() < deadline, "Ferry never kept the cut PATCH's bytes"
            time.sleep(0.05)

    relay = CuttingRelay(resuming.port, cut_at=12 * MiB, settled=settled)  # 4 MiB into PATCH two
    try:
        page = open_page(f"http://127.0.0.1:{relay.port}/files/cut-body/")
        enter_token(page, TOKEN)
        sent: list[int] = []
        page.on("request", lambda r: sent.append(offset_of(r)) if r.method == "PATCH" else None)
        page.locator("section.upload input[type=file]").set_input_files(source)
        row = page.locator("ul.uploads li", has_text=source.name)
        expect(row).to_have_class("done", timeout=120_000)
    finally:
        relay.close()
    if relay.failure is not None:
        raise relay.failure
    assert relay.cuts == 1
    # After the cut the page asked where the upload stood and went on from there: mid-chunk, the
    # bytes of the cut PATCH that reached the server were kept and not sent again.
    resumed = [offset for offset in sent if offset % CHUNK]
    assert resumed and CHUNK < resumed[0] < 12 * MiB
    assert sha256((resuming.root / "cut-body" / source.name).read_bytes()) == sha256(data)
    assert on_disk(resuming.root / "cut-body") == [source.name]


def test_an_empty_file_is_created_by_its_post_alone(resuming: FerryServer, open_page: OpenPage) -> None:
    page = open_page(f"{resuming.url}/files/empty/")
    enter_token(page, TOKEN)
    methods: list[str] = []
    page.on("request", lambda r: methods.append(r.method) if "/api/uploads/" in r.url else None)
    page.locator("section.upload input[type=file]").set_input_files([payload("empty.txt", b"")])
    expect(page.locator("ul.uploads li", has_text="empty.txt")).to_have_class("done", timeout=30_000)
    assert methods == ["POST"]  # Upload-Length: 0 is complete at once
    assert (resuming.root / "empty" / "empty.txt").read_bytes() == b""
    assert stored_uploads(page) == {}
