"""HTML pages for people: directory listings and search results. Every name is escaped."""

from __future__ import annotations

import html
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from app.storage.index import SortKey
from app.views.entries import EntryModel, Listing, SearchResults


@dataclass(frozen=True, slots=True)
class HtmlPage:
    directory: str  # '/'-separated below ROOT, '' for ROOT
    data: Listing | SearchResults
    sort: SortKey
    descending: bool


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover


def _row(entry: EntryModel, *, base: str) -> str:
    name = html.escape(entry.name) + ("/" if entry.type == "dir" else "")
    href = (
        html.escape(quote(entry.name) + "/" if entry.type == "dir" else quote(entry.name))
        if base
        else entry.url
    )
    size = "" if entry.size is None else f'<span title="{entry.size} bytes">{_human(entry.size)}</span>'
    when = entry.mtime.strftime("%Y-%m-%d %H:%M")
    return f'<tr><td><a href="{html.escape(href)}">{name}</a></td><td>{size}</td><td>{when}</td></tr>'


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n"
    )


def render_listing(page: HtmlPage) -> str:
    assert isinstance(page.data, Listing)
    rows = "\n".join(_row(e, base="dir") for e in page.data.entries)
    parent = '<tr><td><a href="../">../</a></td><td></td><td></td></tr>\n' if page.directory else ""
    more = ""
    if page.data.next_cursor:
        query = {
            "cursor": page.data.next_cursor,
            "sort": page.sort,
            "order": "desc" if page.descending else "asc",
        }
        more = f'<p><a rel="next" href="?{html.escape(urlencode(query))}">Next page</a></p>'
    title = "/" + page.directory
    return _page(
        f"Index of {title}",
        f"<h1>Index of {html.escape(title)}</h1>\n<table>\n{parent}{rows}\n</table>\n{more}",
    )


def render_search(page: HtmlPage) -> str:
    assert isinstance(page.data, SearchResults)
    rows = "\n".join(_row(e, base="") for e in page.data.entries)
    return _page(
        f"Search: {page.data.query}",
        f"<h1>Search: {html.escape(page.data.query)}</h1>\n<table>\n{rows}\n</table>",
    )
