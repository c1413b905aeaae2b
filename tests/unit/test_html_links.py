"""Links on the HTML pages: only children are relative, everything else starts at /files/.

A client that walks a tree by its links (fsspec, rclone, lftp, wget -r) takes a relative link for
something below the page; `../../` in the breadcrumb sent fsspec's `find` into endless recursion.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Literal
from urllib.parse import quote, unquote, urljoin, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.views.entries import EntryModel, Listing, SearchResults
from app.views.html import HtmlPage, render_listing, render_search

BASE = "http://ferry.test"
MTIME = datetime(2024, 5, 1, tzinfo=UTC)
SIGNED = "expires=1999999999&prefix=/a/&sig=abc"


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [value for name, value in attrs if name == "href" and value is not None]


class _Controls(HTMLParser):
    """The archive controls: hidden fields per form class, each checkbox's value and form."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, list[tuple[str, str]]] = {}
        self.boxes: list[tuple[str, str]] = []
        self._form = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        given = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._form = given.get("class", "")
            self.fields.setdefault(self._form, [])
        elif tag == "input" and given.get("type") == "hidden":
            self.fields[self._form].append((given["name"], given["value"]))
        elif tag == "input" and given.get("name") == "select":
            self.boxes.append((given["value"], given["form"]))


def controls(html: str) -> _Controls:
    parser = _Controls()
    parser.feed(html)
    return parser


def anchors(html: str) -> list[str]:
    parser = _Anchors()
    parser.feed(html)
    return parser.hrefs


def entry(path: str, kind: Literal["file", "dir"]) -> EntryModel:
    is_dir = kind == "dir"
    return EntryModel(
        name=path.rpartition("/")[2],
        path=path,
        type=kind,
        size=None if is_dir else 10,
        mtime=MTIME,
        content_type=None if is_dir else "application/octet-stream",
        etag=None if is_dir else '"e"',
        url="/files/" + quote(path) + ("/" if is_dir else ""),
    )


def listing_page(
    directory: str,
    files: list[str],
    dirs: list[str],
    link_query: str = "",
    link_root: str | None = None,
    archives: bool = False,
) -> HtmlPage:
    prefix = directory + "/" if directory else ""
    entries = [entry(prefix + d, "dir") for d in dirs] + [entry(prefix + f, "file") for f in files]
    data = Listing(path=directory, entries=entries, next_cursor="next-page")
    return HtmlPage(
        directory,
        data,
        "name",
        False,
        cursor="this-page",
        link_query=link_query,
        link_root=link_root,
        archives=archives,
    )


def page_url(directory: str) -> str:
    return BASE + "/files/" + (quote(directory) + "/" if directory else "")


def assert_only_children_are_relative(directory: str, html: str) -> list[str]:
    """Every link is root-relative or names a child of the page: resolved, one level below it."""
    here = page_url(directory)
    hrefs = anchors(html)
    for href in hrefs:
        if href.startswith("/"):
            assert href.startswith("/files/"), href
            continue
        assert not href.startswith(("?", "#")), href
        assert not {".", ".."} & set(href.split("?")[0].split("/")), href
        resolved = urlsplit(urljoin(here, href))
        below = resolved.path[len(urlsplit(here).path) :]
        assert resolved.path.startswith(urlsplit(here).path) and below, href
        assert "/" not in below.rstrip("/"), href  # exactly one level below the page
    return hrefs


@pytest.mark.parametrize("directory", ["", "a", "a/b", "a/b c/数据", "x/y/z/w"])
def test_listing_links_above_the_page_start_at_files(directory: str) -> None:
    html = render_listing(listing_page(directory, ["f.txt"], ["sub"]))
    hrefs = assert_only_children_are_relative(directory, html)
    parts = directory.split("/") if directory else []
    # The breadcrumb links every ancestor (the parent twice: crumb and "Parent folder" row).
    for depth in range(len(parts)):
        ancestor = "/files/" + "".join(quote(p) + "/" for p in parts[:depth])
        assert ancestor in hrefs, (ancestor, hrefs)
    assert "f.txt" in hrefs and "sub/" in hrefs
    # The pager stays on this directory.
    assert "/files/" + (quote(directory) + "/" if directory else "") + "?cursor=next-page" in hrefs


def test_a_signed_prefix_listing_carries_the_link_on_every_link() -> None:
    page = listing_page("a/b", ["f.txt"], ["sub"], link_query=SIGNED, link_root="a")
    hrefs = assert_only_children_are_relative("a/b", render_listing(page))
    assert hrefs, "no links"
    assert all(href.endswith(SIGNED) for href in hrefs), hrefs
    assert f"/files/a/?{SIGNED}" in hrefs  # up to the shared folder
    assert not any(h.startswith(f"/files/?{SIGNED}") for h in hrefs)  # above it: plain text


def test_archive_controls_are_forms_that_carry_a_signed_prefix_link() -> None:
    page = listing_page("a/b", ["f.txt"], ["sub"], link_query=SIGNED, link_root="a", archives=True)
    html = render_listing(page)
    assert not [href for href in assert_only_children_are_relative("a/b", html) if "archive" in href]
    found = controls(html)
    carried = [("expires", "1999999999"), ("prefix", "/a/"), ("sig", "abc")]
    assert found.fields["folder-archive"] == carried
    assert found.fields["selection"] == carried
    assert found.boxes == [("sub", "ferry-selection"), ("f.txt", "ferry-selection")]
    assert 'id="ferry-selection"' in html


@pytest.mark.parametrize(
    ("link_query", "link_root", "archives"),
    [("", None, False), ("", "a/b", True)],  # archives off; a link to this one folder's listing
    ids=["archives-off", "one-folder-link"],
)
def test_no_archive_controls_where_they_could_not_work(
    link_query: str, link_root: str | None, archives: bool
) -> None:
    html = render_listing(listing_page("a/b", ["f.txt"], ["sub"], link_query, link_root, archives))
    found = controls(html)
    assert "folder-archive" not in found.fields and "selection" not in found.fields
    assert not found.boxes and 'class="tick"' not in html


def test_search_results_link_from_the_root() -> None:
    results = SearchResults(
        query="q", entries=[entry("x/y/q.txt", "file"), entry("x/q dir", "dir")], next_cursor=None
    )
    page = HtmlPage("a/b", results, "name", False)
    hrefs = assert_only_children_are_relative("a/b", render_search(page))
    assert {"/files/x/y/q.txt", "/files/x/q%20dir/", "/files/x/y/", "/files/x/", "/files/a/b/"} <= set(hrefs)


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1,
    max_size=8,
).filter(lambda n: n not in (".", ".."))


@settings(max_examples=200)
@given(parts=st.lists(names, max_size=4), children=st.lists(names, min_size=1, max_size=4))
def test_any_tree_links_only_children_relatively(parts: list[str], children: list[str]) -> None:
    directory = "/".join(parts)
    html = render_listing(listing_page(directory, children[1:], children[:1]))
    hrefs = assert_only_children_are_relative(directory, html)
    relative = {unquote(h) for h in hrefs if not h.startswith("/")}
    assert relative == {children[0] + "/", *children[1:]}


@settings(max_examples=100)
@given(children=st.lists(names, min_size=1, max_size=5, unique=True))
def test_each_checkbox_selects_its_row_by_its_exact_name(children: list[str]) -> None:
    html = render_listing(listing_page("d", children[1:], children[:1], archives=True))
    assert [value for value, _ in controls(html).boxes] == children
