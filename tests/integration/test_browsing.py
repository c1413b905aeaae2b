"""The HTML pages, in-process: names escaped, links that resolve, sorting through the column forms,
pagination, search, and the packaged CSS/JS.

Pages are parsed with the standard library's HTMLParser and every link is followed the way a browser
would resolve it (urljoin against the page URL), so a wrong escape or a wrong relative path fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

import pytest

import app.views
from tests.conftest import PATIENCE
from tests.support.inprocess import AppPool, InProcessServer, module_app_pool

# Every name a person might meet; each file's bytes are unique, so a wrong link shows.
AWKWARD = [
    "with space.txt",
    "100% #1?.txt",
    "hash#tag",
    "what?.txt",
    'say "hi".txt',
    "it's.txt",
    "résumé 数据.bin",
    "<script>alert(1).txt",
    "&amp; entity.txt",
    "a%2Fb.txt",
    "plus+equals=.txt",
    "semi;colon,comma.txt",
    "Ünïcödé ✓.txt",
]
AWKWARD_DIR = "dir #1 ?"
HIDDEN = [".secret.txt", ".hidden-dir"]
UNSERVABLE = ["line\nbreak.txt", "back\\slash.txt"]  # the path gate refuses these
SORTING = {"a.bin": (30, 3), "b.bin": (10, 5), "c.bin": (50, 1), "d.bin": (20, 4), "e.bin": (40, 2)}
BIG = 450
EPOCH = 1_700_000_000


# -- the tree -------------------------------------------------------------------------------------


def _write(path: Path, data: bytes, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def build_tree(base: Path) -> Path:
    root = base / "tree"
    for name in AWKWARD:
        _write(root / "names" / name, f"bytes of {name}\n".encode())
    _write(root / "names" / AWKWARD_DIR / "inner file.txt", b"inner\n")
    _write(root / "names" / ".secret.txt", b"secret\n")
    _write(root / "names" / ".hidden-dir" / "x.txt", b"hidden\n")
    for name in UNSERVABLE:
        _write(root / "names" / name, b"unservable\n")
    for name, (size, hours) in SORTING.items():
        _write(root / "sorting" / name, name.encode()[:1] * size, EPOCH + hours * 3600)
    for i in range(BIG):
        # Sizes and times repeat, so the (key, name) tie-break is what keeps pages apart.
        _write(root / "big" / f"f{i:04d}.dat", b"x" * (i % 7), EPOCH + (i * 37) % 11)
    _write(root / "deep" / "x y" / "z#?" / "leaf.txt", b"leaf\n")
    _write(root / "Reports" / "2023" / "Annual-REPORT-final.pdf", b"%PDF annual\n")
    _write(root / "misc" / "report notes.txt", b"notes\n")
    (root / "empty").mkdir()
    return root


apps = module_app_pool("browsing", tree=build_tree)


@pytest.fixture(scope="module")
def site(apps: AppPool) -> InProcessServer:
    """One app for the module."""
    return apps.get()


# -- reading pages --------------------------------------------------------------------------------


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Link:
    attrs: dict[str, str]
    parent: str  # the class of the element holding the link
    ancestors: set[str]  # every class of every enclosing element
    text: str = ""

    @property
    def href(self) -> str:
        return self.attrs["href"]


@dataclass
class Form:
    fields: list[tuple[str, str]] = field(default_factory=list)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class Page(HTMLParser):
    """The links, forms, stylesheets and scripts of one page, with the text inside each link."""

    def __init__(self, url: str, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.url = url
        self.links: list[Link] = []
        self.forms: list[Form] = []
        self.assets: list[str] = []
        self.copy_buttons: list[dict[str, str]] = []
        self.current: list[str] = []  # text of the aria-current element
        self._stack: list[tuple[str, str]] = []  # (tag, class) of the open elements
        self._capturing: list[tuple[int, Link]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, raw: list[tuple[str, str | None]]) -> None:
        attrs = {k: v or "" for k, v in raw}
        if tag == "form":
            self.forms.append(Form())
        elif tag == "input" and attrs.get("type") == "hidden":
            self.forms[-1].fields.append((attrs["name"], attrs["value"]))
        elif tag == "button" and "name" in attrs:
            self.forms[-1].buttons.append((attrs["name"], attrs["value"]))
        elif tag == "button" and "copy" in attrs.get("class", ""):
            self.copy_buttons.append(attrs)
        elif tag == "link" and attrs.get("rel") in ("stylesheet", "icon") or tag == "script":
            self.assets.append(attrs.get("href") or attrs["src"])
        if tag in VOID:
            return
        if tag == "a" or "aria-current" in attrs:
            classes = {c for _, cls in self._stack for c in cls.split()}
            parent = self._stack[-1][1] if self._stack else ""
            self._capturing.append((len(self._stack), Link(attrs, parent, classes)))
        self._stack.append((tag, attrs.get("class", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        while self._stack and self._stack.pop()[0] != tag:
            pass
        while self._capturing and self._capturing[-1][0] >= len(self._stack):
            link = self._capturing.pop()[1]
            if "aria-current" in link.attrs:
                self.current.append(link.text)
            else:
                self.links.append(link)

    def handle_data(self, data: str) -> None:
        for _, link in self._capturing:
            link.text += data

    def url_of(self, href: str) -> str:
        return urljoin(self.url, href)

    def entries(self) -> list[Link]:
        """The name link of each row (not the parent-folder row, not a search hit's folder)."""
        return [
            link
            for link in self.links
            if link.parent == "name" and link.ancestors & {"file", "dir"} and link.attrs.get("rel") != "up"
        ]

    def names(self) -> list[str]:
        return [link.text for link in self.entries()]

    def next_url(self) -> str | None:
        hrefs = [link.href for link in self.links if link.attrs.get("rel") == "next"]
        return self.url_of(hrefs[0]) if hrefs else None

    def sort_form(self, key: str) -> Form:
        return next(form for form in self.forms if ("sort", key) in form.buttons)


def fetch(site: InProcessServer, url: str) -> Page:
    response = site.client.get(url)
    assert response.status_code == 200, (url, response.status_code, response.text[:200])
    assert response.headers["content-type"].startswith("text/html")
    return Page(str(response.url), response.text)


def submit(site: InProcessServer, page: Page, key: str) -> Page:
    """Press a column's sort button: the GET form's fields plus the button's name=value."""
    form = page.sort_form(key)
    query = urlencode([*form.fields, ("sort", key)])
    return fetch(site, urljoin(page.url, "?" + query))


def eventually(check: Callable[[], bool], seconds: float = PATIENCE) -> None:
    """The start-up scan runs beside the server; search sees the tree once it has run."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.05)


# -- listings -------------------------------------------------------------------------------------


def test_listing_shows_every_servable_name_escaped(site: InProcessServer) -> None:
    response = site.client.get(f"{site.url}/files/names/")
    page = Page(str(response.url), response.text)
    assert sorted(page.names()) == sorted([*AWKWARD, AWKWARD_DIR])
    for hidden in HIDDEN:
        assert hidden not in response.text
    assert "slash.txt" not in response.text and "break.txt" not in response.text
    assert "<script>alert" not in response.text and "&lt;script&gt;alert(1).txt" in response.text
    assert "&amp;amp; entity.txt" in response.text  # shown as the name, not as an entity
    assert "content-security-policy" in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    # Without JavaScript the copy buttons stay hidden; each copies the file's own link.
    files = {link.href for link in page.entries() if "file" in link.ancestors}
    assert {b["data-href"] for b in page.copy_buttons} == files and len(files) == len(AWKWARD)
    assert all("hidden" in b for b in page.copy_buttons)


def test_every_link_resolves_to_the_right_bytes(site: InProcessServer) -> None:
    page = fetch(site, f"{site.url}/files/names/")
    for link in page.entries():
        response = site.client.get(page.url_of(link.href))
        assert response.status_code == 200, link.text
        if "dir" in link.ancestors:
            assert link.href.endswith("/")
            assert Page(str(response.url), response.text).names() == ["inner file.txt"]
        else:
            assert response.content == f"bytes of {link.text}\n".encode()
        assert not urlsplit(link.href).scheme and not link.href.startswith("/")  # relative


def test_sizes_are_human_with_exact_bytes_on_hover(site: InProcessServer) -> None:
    text = site.client.get(f"{site.url}/files/sorting/").text
    assert '<span title="50 bytes">50 B</span>' in text
    _write(site.root / "sizes" / "large.bin", b"")
    os.truncate(site.root / "sizes" / "large.bin", 3 * 1024**3 + 512 * 1024**2)
    text = site.client.get(f"{site.url}/files/sizes/").text
    assert '<span title="3,758,096,384 bytes">3.5 GiB</span>' in text


def test_breadcrumb_links_every_ancestor(site: InProcessServer) -> None:
    page = fetch(site, f"{site.url}/files/deep/x%20y/z%23%3F/")
    crumbs = [link for link in page.links if "crumbs" in link.ancestors]
    assert [c.text for c in crumbs] == ["Files", "deep", "x y"]
    assert page.current == ["z#?"]
    targets = [urlsplit(page.url_of(c.href)).path for c in crumbs]
    assert targets == ["/files/", "/files/deep/", "/files/deep/x%20y/"]
    for crumb in crumbs:
        assert site.client.get(page.url_of(crumb.href)).status_code == 200
    parent = next(link for link in page.links if link.attrs.get("rel") == "up")
    assert fetch(site, page.url_of(parent.href)).names() == ["z#?"]


def test_an_empty_folder_says_so(site: InProcessServer) -> None:
    response = site.client.get(f"{site.url}/files/empty/")
    assert Page(str(response.url), response.text).names() == []
    assert "This folder is empty." in response.text


def _expected(key: str) -> list[str]:
    index = {"size": 0, "mtime": 1}[key]
    return sorted(SORTING, key=lambda name: (SORTING[name][index], name))


@pytest.mark.parametrize("key", ["size", "mtime"])
def test_sorting_through_the_column_forms(site: InProcessServer, key: str) -> None:
    page = fetch(site, f"{site.url}/files/sorting/")
    assert page.names() == sorted(SORTING)
    # Sorting is a form, never a link a crawler would follow.
    assert not any("sort=" in link.href for link in page.links)
    ascending = submit(site, page, key)
    assert ascending.names() == _expected(key)
    assert dict(ascending.sort_form(key).fields)["order"] == "desc"  # pressing again flips it
    descending = submit(site, ascending, key)
    assert descending.names() == _expected(key)[::-1]
    assert dict(descending.sort_form(key).fields)["order"] == "asc"
    by_name = submit(site, descending, "name")
    assert by_name.names() == sorted(SORTING)


@pytest.mark.parametrize(("key", "order"), [("name", "asc"), ("size", "desc"), ("mtime", "asc")])
def test_next_page_links_walk_a_large_directory(site: InProcessServer, key: str, order: str) -> None:
    def sort_key(i: int) -> tuple[int | str, str]:
        name = f"f{i:04d}.dat"
        values: dict[str, int | str] = {"name": name, "size": i % 7, "mtime": (i * 37) % 11}
        return (values[key], name)

    expected = [f"f{i:04d}.dat" for i in sorted(range(BIG), key=sort_key, reverse=order == "desc")]
    url: str | None = f"{site.url}/files/big/?" + urlencode({"sort": key, "order": order, "limit": 100})
    seen: list[str] = []
    pages = 0
    while url is not None:
        page = fetch(site, url)
        assert len(page.names()) <= 100
        seen += page.names()
        url = page.next_url()
        pages += 1
    assert pages == 5
    assert seen == expected  # nothing missing, nothing repeated, in order


def test_search_finds_part_of_a_name_anywhere_ignoring_case(site: InProcessServer) -> None:
    url = f"{site.url}/files/sorting/?q=rEpOrT"  # from a subdirectory: the search covers ROOT
    eventually(lambda: len(fetch(site, url).names()) == 3)
    page = fetch(site, url)
    assert sorted(page.names()) == ["Annual-REPORT-final.pdf", "Reports", "report notes.txt"]
    hits = {link.text: link for link in page.entries()}
    assert site.client.get(page.url_of(hits["report notes.txt"].href)).content == b"notes\n"
    assert site.client.get(page.url_of(hits["Annual-REPORT-final.pdf"].href)).content == b"%PDF annual\n"
    assert fetch(site, page.url_of(hits["Reports"].href)).names() == ["2023"]
    # Each hit links to its directory too, and that listing shows it.
    folders = {link.text: link for link in page.links if link.parent == "where"}
    assert sorted(folders) == ["/", "/Reports/2023/", "/misc/"]
    for folder, name in [
        ("/", "Reports"),
        ("/Reports/2023/", "Annual-REPORT-final.pdf"),
        ("/misc/", "report notes.txt"),
    ]:
        assert name in fetch(site, page.url_of(folders[folder].href)).names()


@pytest.mark.parametrize("query", ["数据", "<SCRIPT>", "100%", "#tag", "t?.t"])
def test_search_with_awkward_queries(site: InProcessServer, query: str) -> None:
    url = f"{site.url}/files/?" + urlencode({"q": query})
    eventually(lambda: len(fetch(site, url).names()) == 1)
    response = site.client.get(url)
    page = Page(str(response.url), response.text)
    [hit] = page.entries()
    assert query.lower() in hit.text.lower()
    assert site.client.get(page.url_of(hit.href)).content == f"bytes of {hit.text}\n".encode()
    assert "<script>" not in response.text.lower()


def test_search_never_shows_hidden_names(site: InProcessServer) -> None:
    eventually(lambda: len(fetch(site, f"{site.url}/files/?q=inner").names()) == 1)
    for query in ("secret", ".hidden", "x.txt"):
        assert fetch(site, f"{site.url}/files/?" + urlencode({"q": query})).names() == []


# -- packaged assets ------------------------------------------------------------------------------

STATIC_DIR = Path(app.views.__file__).parent / "static"
TYPES = {"ferry.css": "text/css", "ferry.js": "text/javascript", "favicon.svg": "image/svg+xml"}


def test_css_and_js_come_from_the_package(site: InProcessServer) -> None:
    page = fetch(site, f"{site.url}/files/deep/x%20y/")
    assert len(page.assets) == 3
    for href in page.assets:
        url = page.url_of(href)
        name = urlsplit(url).path.rpartition("/")[2]
        assert urlsplit(url).path == f"/_ferry/static/{name}"
        response = site.client.get(url)
        assert response.status_code == 200
        assert response.headers["content-type"].split(";")[0] == TYPES[name]
        assert response.headers["cache-control"] == "public, max-age=86400"
        assert response.content == (STATIC_DIR / name).read_bytes()
        etag = response.headers["etag"]
        assert site.client.get(url, headers={"if-none-match": etag}).status_code == 304
        head = site.client.head(url)
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(response.content)


@pytest.mark.parametrize(
    "path",
    ["nope.css", "html.py", "..%2Fhtml.py", "%2E%2E%2Fassets.py", "..%2F..%2Fsettings.py", "ferry.css%00"],
)
def test_unknown_static_names_are_404(site: InProcessServer, path: str) -> None:
    response = site.client.get(f"{site.url}/_ferry/static/{path}")
    assert response.status_code == 404
    assert b"import" not in response.content
