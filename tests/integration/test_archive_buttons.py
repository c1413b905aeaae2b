"""The listing's archive controls, in-process: "Download zip" / "Download tar" fetch the folder,
"Download selected" (a checkbox per row, belonging to the selection form by its id) fetches exactly
the ticked rows, both carry a signed folder link, and neither is offered where it cannot work.

Forms are submitted as a browser without JavaScript does: the form's own fields, the ticked boxes
that name it in their `form` attribute, the chosen option, and the pressed button's name=value.
"""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode, urljoin

import httpx
import pytest

from app.http import signing
from app.main import create_app
from tests.conftest import make_settings
from tests.support.inprocess import in_process

KEY = "archive-buttons-signing-key-0123456789"
FILES = {
    "a.jpg": b"\xff\xd8 jpeg bytes\n",
    "b #1?.txt": b"hash and question\n",
    "résumé 数据.txt": b"unicode\n",
    "sub/c.txt": b"in a subfolder\n",
    "sub/deeper/d.bin": bytes(range(256)) * 40,
}


@dataclass
class Form:
    attrs: dict[str, str]
    fields: list[tuple[str, str]] = field(default_factory=list)  # hidden inputs
    buttons: list[tuple[str, str, str]] = field(default_factory=list)  # name, value, text
    selects: dict[str, list[str]] = field(default_factory=dict)  # name -> option values


@dataclass
class Box:
    name: str
    value: str
    form: str
    label: str = ""


class Page(HTMLParser):
    """The forms of a page and the checkboxes that belong to one by id; every <a href>."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.boxes: list[Box] = []
        self.hrefs: list[str] = []
        self._form: Form | None = None
        self._select: str | None = None
        self._button: list[str] | None = None
        self._label: Box | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, raw: list[tuple[str, str | None]]) -> None:
        attrs = {k: v or "" for k, v in raw}
        if tag == "a" and "href" in attrs:
            self.hrefs.append(attrs["href"])
        elif tag == "form":
            self._form = Form(attrs)
            self.forms.append(self._form)
        elif tag == "input" and attrs.get("type") == "hidden" and self._form is not None:
            self._form.fields.append((attrs["name"], attrs["value"]))
        elif tag == "input" and attrs.get("type") == "checkbox" and "name" in attrs:
            assert "form" in attrs, attrs  # outside its form: it must name it
            self._label = Box(attrs["name"], attrs["value"], attrs["form"])
            self.boxes.append(self._label)
        elif tag == "select" and self._form is not None:
            self._select = attrs["name"]
            self._form.selects[attrs["name"]] = []
        elif tag == "option" and self._select is not None and self._form is not None:
            self._form.selects[self._select].append(attrs["value"])
        elif tag == "button" and self._form is not None:
            self._button = [attrs.get("name", ""), attrs.get("value", ""), ""]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None
        elif tag == "label":
            self._label = None
        elif tag == "button" and self._button is not None and self._form is not None:
            name, value, text = self._button
            self._form.buttons.append((name, value, text.strip()))
            self._button = None

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button[2] += data
        if self._label is not None:
            self._label.label += data

    def form(self, css_class: str) -> Form:
        return next(f for f in self.forms if css_class in f.attrs.get("class", "").split())

    def has_form(self, css_class: str) -> bool:
        return any(css_class in f.attrs.get("class", "").split() for f in self.forms)


def press(page: Page, css_class: str, button: str, *, ticked: tuple[str, ...] = (), choose: str = "") -> str:
    """The query a browser sends when `button` (its text) of the form is pressed."""
    form = page.form(css_class)
    query = list(form.fields)
    for name, options in form.selects.items():
        query.append((name, choose or options[0]))
    for box in page.boxes:
        if box.form == form.attrs.get("id") and box.value in ticked:
            query.append((box.name, box.value))
    name, value, _ = next(b for b in form.buttons if b[2] == button)
    if name:
        query.append((name, value))
    return "?" + urlencode(query)


def build(root: Path) -> None:
    for path, data in FILES.items():
        (root / "photos" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "photos" / path).write_bytes(data)
    (root / "photos" / ".hidden").write_bytes(b"never in an archive\n")
    (root / "empty").mkdir()


@asynccontextmanager
async def serving(root: Path, index: Path, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(root, index_path=index, watch=False, **overrides))
    app.services.index.scan()
    async with in_process(app, lifespan=False) as client:
        yield client


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    build(root)
    return root


@pytest.fixture
async def client(tmp_path: Path, root: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(root, tmp_path / "index.sqlite3") as client:
        yield client


async def page_of(client: httpx.AsyncClient, url: str) -> Page:
    response = await client.get(url)
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return Page(response.text)


def zip_members(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


def tar_members(content: bytes) -> dict[str, bytes]:
    members = {}
    with tarfile.open(fileobj=io.BytesIO(content)) as archive:
        for info in archive:
            extracted = archive.extractfile(info)
            assert extracted is not None, info.name
            members[info.name] = extracted.read()
    return members


def under(prefix: str, names: Iterator[str] | list[str]) -> dict[str, bytes]:
    return {prefix + name: FILES[name] for name in names}


@pytest.mark.anyio
async def test_the_folder_buttons_fetch_the_folder_as_zip_and_as_tar(client: httpx.AsyncClient) -> None:
    page = await page_of(client, "/files/photos/")
    buttons = page.form("folder-archive").buttons
    assert [(n, v, t) for n, v, t in buttons] == [
        ("archive", "zip", "Download zip"),
        ("archive", "tar", "Download tar"),
    ]
    as_zip = await client.get(urljoin("/files/photos/", press(page, "folder-archive", "Download zip")))
    assert as_zip.status_code == 200
    assert as_zip.headers["content-type"] == "application/zip"
    assert zip_members(as_zip.content) == under("photos/", list(FILES))
    as_tar = await client.get(urljoin("/files/photos/", press(page, "folder-archive", "Download tar")))
    assert as_tar.headers["content-type"] == "application/x-tar"
    assert tar_members(as_tar.content) == under("photos/", list(FILES))


@pytest.mark.anyio
async def test_download_selected_fetches_exactly_the_ticked_rows(client: httpx.AsyncClient) -> None:
    page = await page_of(client, "/files/photos/")
    # One box per row, labelled with its name; the parent row has none.
    assert sorted(box.value for box in page.boxes) == sorted(["a.jpg", "b #1?.txt", "résumé 数据.txt", "sub"])
    assert {box.label for box in page.boxes} >= {"Select the folder sub", "Select the file b #1?.txt"}
    assert page.form("selection").selects == {"archive": ["zip", "tar"]}
    assert {box.form for box in page.boxes} == {page.form("selection").attrs["id"]}
    ticked = ("b #1?.txt", "sub")
    query = press(page, "selection", "Download selected", ticked=ticked, choose="tar")
    response = await client.get(urljoin("/files/photos/", query))
    assert response.status_code == 200, response.text
    assert tar_members(response.content) == under("", ["b #1?.txt", "sub/c.txt", "sub/deeper/d.bin"])
    query = press(page, "selection", "Download selected", ticked=("résumé 数据.txt",))
    assert zip_members((await client.get(urljoin("/files/photos/", query))).content) == under(
        "", ["résumé 数据.txt"]
    )


@pytest.mark.anyio
async def test_no_link_on_the_page_names_an_archive(client: httpx.AsyncClient) -> None:
    """Forms, never links: a crawler mirroring the tree (wget -r) does not fetch archives."""
    page = await page_of(client, "/files/photos/")
    assert page.has_form("folder-archive") and page.has_form("selection")
    assert page.hrefs
    assert not [href for href in page.hrefs if "archive" in href]


@pytest.mark.anyio
async def test_a_signed_folder_link_is_carried_by_both_forms(tmp_path: Path, root: Path) -> None:
    link = signing.new_link("photos/", ttl=600, now=int(time.time()), prefix=True)
    params = signing.link_params(KEY.encode(), link)
    settings = {"download_auth": "signed", "signing_keys": KEY}
    async with serving(root, tmp_path / "index.sqlite3", **settings) as client:
        page = await page_of(client, "/files/photos/?" + urlencode(params, safe="/"))
        for css_class in ("folder-archive", "selection"):
            assert page.form(css_class).fields == params
        query = press(page, "folder-archive", "Download tar")
        response = await client.get(urljoin("/files/photos/", query))
        assert response.status_code == 200
        assert tar_members(response.content) == under("photos/", list(FILES))
        query = press(page, "selection", "Download selected", ticked=("a.jpg",))
        response = await client.get(urljoin("/files/photos/", query))
        assert zip_members(response.content) == under("", ["a.jpg"])
        # Without the link's parameters the same archive is refused: they are what grants it.
        assert (await client.get("/files/photos/?archive=tar")).status_code == 401


@pytest.mark.anyio
async def test_no_controls_where_they_could_not_work(
    tmp_path: Path, root: Path, client: httpx.AsyncClient
) -> None:
    assert (await page_of(client, "/files/photos/")).has_form("folder-archive")  # where they work
    empty = await page_of(client, "/files/empty/")
    assert not empty.has_form("folder-archive") and not empty.boxes
    async with serving(root, tmp_path / "off.sqlite3", archives=False) as off:
        page = await page_of(off, "/files/photos/")
        assert not page.has_form("folder-archive") and not page.has_form("selection") and not page.boxes
    # A link to one folder's listing is not carried by the page's links: its archives could not be.
    one = signing.new_link("photos/", ttl=600, now=int(time.time()))
    query = urlencode(signing.link_params(KEY.encode(), one), safe="/")
    settings = {"download_auth": "signed", "signing_keys": KEY}
    async with serving(root, tmp_path / "one.sqlite3", **settings) as signed:
        page = await page_of(signed, "/files/photos/?" + query)
        assert not page.has_form("folder-archive") and not page.boxes
