"""HTML pages for people: directory listings and search results.

Every name is escaped: `html.escape` for text and attributes, `urllib.parse.quote` for links. Only
the entries of a listing are relative links (the page is always a directory URL ending in '/');
every other link (breadcrumb, parent, pager, search results) starts at /files/, so no link to a
place above looks like a child folder to a client that walks the tree by its links (wget -r, lftp,
rclone, fsspec). Sorting is a GET form per column, never a link, so a crawler does not fetch every
sort order; only "Next page" is a link, so a crawler sees every entry.

When writes are enabled a listing carries an upload panel that ferry.js brings to life; the page
never holds the write token (the reader types it, and the tab keeps it in sessionStorage).

Where folders download as archives, a listing offers the folder as a zip or a tar, and a checkbox
per row for "Download selected": GET forms (`?archive=zip|tar&select=NAME…`), so they work without
JavaScript and a crawler never fetches an archive. The checkboxes belong to the selection form by
its id (the table's sort headers are forms of their own, and forms cannot nest).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from urllib.parse import parse_qsl, quote, urlencode

from app.request import PREFIX
from app.storage.values import SortKey
from app.views.assets import static_href, template
from app.views.entries import EntryModel, Listing, SearchResults

_COLUMNS: tuple[tuple[str, SortKey], ...] = (("Name", "name"), ("Size", "size"), ("Modified", "mtime"))
_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")
_ACTIONS_HEAD = '<th class="actions" scope="col"><span class="sr-only">Actions</span></th>'
_EMPTY_TICK = '<td class="tick"></td>'
_SELECTION = "ferry-selection"  # the id of the "Download selected" form
# The checkbox column's header: "select all" is ferry.js's (hidden without it).
_TICK_HEAD = (
    '<th class="tick" scope="col"><span class="sr-only">Select</span><label class="tick-box" hidden>'
    '<input type="checkbox" class="tick-all"><span class="sr-only">Select everything on this page</span>'
    "</label></th>"
)


@dataclass(frozen=True, slots=True)
class HtmlPage:
    directory: str  # '/'-separated below ROOT, '' for ROOT
    data: Listing | SearchResults
    sort: SortKey
    descending: bool
    limit: int | None = None  # as the request gave it; kept in links and forms
    cursor: str | None = None  # the request's cursor: this is not the first page
    upload_limit: int | None = None  # writes enabled: the largest upload (bytes); None: no upload panel
    # Shown through a signed prefix link: its query, carried on every link that stays below
    # `link_root` (the signed directory below ROOT, '' for ROOT itself).
    link_query: str = ""
    link_root: str | None = None
    archives: bool = False  # folders download as archives (FERRY_ARCHIVES, on the local disk)
    resumable: bool = False  # uploads may go through tus at /api/uploads/


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB'; below 1 KiB the exact count."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if value < 1023.5 or unit == _UNITS[-1]:  # never "1024 KiB"
            return f"{value:.1f} {unit}" if value < 99.95 else f"{value:.0f} {unit}"
    raise AssertionError  # pragma: no cover


def _up(directory: str) -> str:
    """From the page of `directory` back to the page of ROOT (for the page's CSS, JS and icon)."""
    return "../" * (directory.count("/") + 1) if directory else ""


def _href(path: str, *, is_dir: bool) -> str:
    return quote(path) + ("/" if is_dir and path else "")


def _absolute(path: str, *, is_dir: bool = True) -> str:
    """The root-relative link to `path` below ROOT ('' for ROOT itself)."""
    return PREFIX + _href(path, is_dir=is_dir)


def _folder_name(directory: str) -> str:
    return directory.rpartition("/")[2] or "Files"


def _query(directory: str, params: dict[str, str]) -> str:
    return _absolute(directory) + ("?" + urlencode(params) if params else "")


def _linked(href: str, page: HtmlPage) -> str:
    """A link of the page with the signed link's parameters, so it works for the link's holder."""
    if not page.link_query:
        return href
    return href + ("&" if "?" in href else "?") + page.link_query


def _reachable(directory: str, page: HtmlPage) -> bool:
    """Whether the page of `directory` can be shown to this reader (a link covers only its subtree)."""
    root = page.link_root
    return root is None or not root or directory == root or directory.startswith(root + "/")


# -- pieces of a row -------------------------------------------------------------------------


def _icon(name: str) -> str:
    return f'<svg class="icon" aria-hidden="true"><use href="#i-{name}"/></svg>'


def _name_link(entry: EntryModel, href: str) -> str:
    # A bare <a href>: the row's class says file or dir, and crawlers and scripts see plain links.
    return f'<a href="{escape(href)}">{_icon(entry.type)}<span class="label">{escape(entry.name)}</span></a>'


def _size_cell(entry: EntryModel) -> str:
    if entry.size is None:
        return '<td class="size"><span class="muted">—</span></td>'
    unit = "byte" if entry.size == 1 else "bytes"
    return f'<td class="size"><span title="{entry.size:,} {unit}">{human_size(entry.size)}</span></td>'


def _mtime_cell(entry: EntryModel) -> str:
    when = entry.mtime
    return (
        f'<td class="mtime"><time datetime="{when.strftime("%Y-%m-%dT%H:%M:%SZ")}" '
        f'title="{when.strftime("%Y-%m-%d %H:%M:%S")} UTC">{when.strftime("%Y-%m-%d %H:%M")}</time></td>'
    )


def _share_button(entry: EntryModel) -> str:
    """Shown by ferry.js once the tab holds the write token: mints a signed link (POST /api/sign)."""
    what = "everything in " if entry.type == "dir" else ""
    label = escape(f"Copy a link to {what}{entry.name} that works for a day")
    prefix = ' data-prefix="1"' if entry.type == "dir" else ""
    return (
        f'<button type="button" class="share" data-path="{escape(entry.path)}"{prefix} hidden '
        f'title="{label}" aria-label="{label}">share</button>'
    )


def _digest(entry: EntryModel) -> str:
    """The file's SHA-256, shortened; the whole digest on hover and for copying."""
    if entry.sha256 is None:
        return ""
    return (
        f'<div class="sha256" title="SHA-256 {entry.sha256}"><span class="sr-only">SHA-256 </span>'
        f'<code>{entry.sha256[:16]}</code><span class="rest">{entry.sha256[16:]}</span></div>'
    )


def _copy_cell(entry: EntryModel, href: str, share: bool = False) -> str:
    shared = _share_button(entry) if share else ""
    if entry.type != "file":
        return f'<td class="actions">{shared}</td>'
    label = escape(f"Copy a curl command that downloads {entry.name}")
    return (
        f'<td class="actions"><button type="button" class="copy" data-href="{escape(href)}" hidden '
        f'title="{label}" aria-label="{label}">curl</button>{shared}</td>'
    )


def _tick_cell(entry: EntryModel) -> str:
    """The row's checkbox: part of the selection form (by its id), sending `select=NAME`."""
    what = "folder" if entry.type == "dir" else "file"
    return (
        f'<td class="tick"><label class="tick-box"><input type="checkbox" name="select" '
        f'value="{escape(entry.name)}" form="{_SELECTION}">'
        f'<span class="sr-only">Select the {what} {escape(entry.name)}</span></label></td>'
    )


def _row(entry: EntryModel, href: str, where: str = "", share: bool = False, tick: bool = False) -> str:
    return (
        f'<tr class="{entry.type}">{_tick_cell(entry) if tick else ""}'
        f'<td class="name">{_name_link(entry, href)}{where}{_digest(entry)}</td>'
        f"{_size_cell(entry)}{_mtime_cell(entry)}{_copy_cell(entry, href, share)}</tr>"
    )


# -- the page around the rows ----------------------------------------------------------------


def _crumbs(page: HtmlPage) -> str:
    """Files / a / b: every ancestor the reader may open a link, the current directory plain text."""
    directory = page.directory
    parts = directory.split("/") if directory else []
    names = ["Files", *parts]
    items = []
    for depth, name in enumerate(names):
        if depth == len(parts):
            items.append(f'<li><span aria-current="page">{escape(name)}</span></li>')
        elif not _reachable("/".join(parts[:depth]), page):
            items.append(f"<li><span>{escape(name)}</span></li>")
        else:
            href = _linked(_absolute("/".join(parts[:depth])), page)
            items.append(f'<li><a href="{escape(href)}">{escape(name)}</a></li>')
    return "".join(items)


def _page(page: HtmlPage, *, title: str, main: str, query: str = "") -> str:
    up = "../" + _up(page.directory)  # the site root: one above /files/
    return template("page.html").substitute(
        title=escape(title),
        css=escape(static_href("ferry.css", up=up)),
        js=escape(static_href("ferry.js", up=up)),
        icon=escape(static_href("favicon.svg", up=up)),
        crumbs=_crumbs(page),
        query=escape(query),
        search_hidden=" hidden" if page.link_root is not None else "",  # search needs a token
        main=main,
    )


def _pager(page: HtmlPage, params: dict[str, str]) -> str:
    links = []
    if page.cursor:
        first = _linked(_query(page.directory, params), page)
        links.append(f'<a class="first" href="{escape(first)}">First page</a>')
    if page.data.next_cursor:
        href = _linked(_query(page.directory, {**params, "cursor": page.data.next_cursor}), page)
        links.append(f'<a rel="next" href="{escape(href)}">Next page →</a>')
    return f'<nav class="pager" aria-label="Pages">{"".join(links)}</nav>' if links else ""


def _table(head: str, rows: list[str]) -> str:
    body = "\n".join(rows)
    return f'<table class="listing">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def _plain_head() -> str:
    return "".join(f'<th class="{key}" scope="col">{label}</th>' for label, key in _COLUMNS) + _ACTIONS_HEAD


def _summary(count: int, more: bool, nouns: tuple[str, str], extra: str = "") -> str:
    text = f"{count:,} {nouns[0] if count == 1 else nouns[1]}"
    return f'<p class="summary">{text}{" on this page" if more else ""}{extra}</p>'


# -- the upload panel -----------------------------------------------------------------------


def _upload_panel(directory: str, limit: int, resumable: bool) -> str:
    """Inert markup until ferry.js shows it: a plain form could not send the Authorization header.

    `data-folder` is where the files go (below ROOT); `data-resumable` tells ferry.js to send them
    with tus (/api/uploads/), which resumes after a dropped connection or a reload, rather than one
    multipart POST each."""
    folder = escape(f"“{_folder_name(directory)}”")
    resume = " data-resumable" if resumable else ""
    return f"""<section class="upload" aria-label="Upload files" data-max-size="{limit}" \
data-folder="{escape(directory)}"{resume}>
<noscript><p class="upload-off">Uploading from this page needs JavaScript. From a shell: \
<code>curl -T FILE -H "Authorization: Bearer $TOKEN" URL</code> \
with this page’s address as URL.</p></noscript>
<div class="upload-ui" hidden>
<form class="token" hidden>
<label for="ferry-token">Write token</label>
<div class="token-row"><input id="ferry-token" type="password" autocomplete="off" spellcheck="false" \
autocapitalize="off" aria-describedby="ferry-token-note"><button type="submit">Use token</button></div>
<p class="token-note" id="ferry-token-note">Uploads need the server’s write token. \
This tab keeps it until it is closed.</p>
<p class="token-error" role="alert" hidden></p>
</form>
<div class="dropzone">
{_icon("upload")}
<div class="drop-text"><p><span class="drop-hint"><strong>Drop files here</strong> \
<span class="muted">or</span> </span><label class="pick">Choose files<input type="file" multiple></label></p>
<p class="drop-note">They go into {folder}. \
<button type="button" class="forget" hidden>Forget token</button></p></div>
</div>
<ul class="uploads" aria-label="Uploads"></ul>
<div class="drop-overlay" aria-hidden="true"><p>{_icon("upload")}\
<span>Drop to upload into <strong>{folder}</strong></span></p></div>
</div>
</section>"""


# -- listings --------------------------------------------------------------------------------


def _sort_header(label: str, key: SortKey, page: HtmlPage) -> str:
    """A column header that is a one-button GET form; the current column flips its order."""
    active = page.sort == key
    order = "desc" if active and not page.descending else "asc"
    arrow = ("↓" if page.descending else "↑") if active else ""
    aria = f' aria-sort="{"descending" if page.descending else "ascending"}"' if active else ""
    limit = f'<input type="hidden" name="limit" value="{page.limit}">' if page.limit else ""
    for name, value in parse_qsl(page.link_query):
        limit += f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
    return (
        f'<th class="{key}" scope="col"{aria}><form method="get">{limit}'
        f'<input type="hidden" name="order" value="{order}">'
        f'<button type="submit" name="sort" value="{key}" title="Sort by {label.lower()}">'
        f'{label}<span class="arrow" aria-hidden="true">{arrow}</span></button></form></th>'
    )


def _listing_params(page: HtmlPage) -> dict[str, str]:
    params: dict[str, str] = {"sort": page.sort} if page.sort != "name" else {}
    if page.descending:
        params["order"] = "desc"
    if page.limit:
        params["limit"] = str(page.limit)
    return params


def _parent_row(page: HtmlPage, tick: bool) -> str:
    directory = page.directory
    parent = directory.rpartition("/")[0]
    if not directory or not _reachable(parent, page):
        return ""
    href = escape(_linked(_absolute(parent), page))
    return (
        f'<tr class="parent">{_EMPTY_TICK if tick else ""}'
        f'<td class="name"><a href="{href}" rel="up">{_icon("up")}'
        '<span class="label">Parent folder</span></a></td><td class="size"></td>'
        '<td class="mtime"></td><td class="actions"></td></tr>'
    )


def _hidden_fields(page: HtmlPage) -> str:
    """A GET form's copy of the signed link's parameters, so what it asks for is granted too."""
    return "".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in parse_qsl(page.link_query)
    )


def _offers_archives(page: HtmlPage) -> bool:
    """Archives are on, and the reader's link (if any) can be carried to them: a link to one
    folder's listing is not carried by the page's links (app/views/listing.py)."""
    return page.archives and (page.link_root is None or bool(page.link_query))


def _archive_bar(page: HtmlPage) -> str:
    """The folder as one zip or tar, and the ticked rows as one archive (the format chosen)."""
    carried = _hidden_fields(page)
    folder = escape(f"“{_folder_name(page.directory)}”")
    icon = _icon("download")
    return f"""<div class="archives">
<form class="folder-archive" method="get" aria-label="Download this folder">{carried}\
<button type="submit" name="archive" value="zip" title="Everything in {folder} as one zip file">\
{icon}Download zip</button>\
<button type="submit" name="archive" value="tar" title="Everything in {folder} as one tar file">\
{icon}Download tar</button></form>
<form class="selection" id="{_SELECTION}" method="get" aria-label="Download the selected items">{carried}\
<span class="ticked muted" aria-live="polite"></span>\
<label class="format"><span class="sr-only">Format</span><select name="archive">\
<option value="zip">zip</option><option value="tar">tar</option></select></label>\
<button type="submit" class="download-selected" \
title="The ticked files and folders as one archive">Download selected</button></form>
</div>"""


def render_listing(page: HtmlPage) -> str:
    assert isinstance(page.data, Listing)
    entries = page.data.entries
    share = page.upload_limit is not None  # writes enabled: the write token can mint links
    tick = _offers_archives(page) and bool(entries)
    rows = [
        _row(e, _linked(_href(e.name, is_dir=e.type == "dir"), page), share=share, tick=tick) for e in entries
    ]
    if not entries:
        rows.append('<tr class="empty"><td colspan="4">This folder is empty.</td></tr>')
    head = "".join(_sort_header(label, key, page) for label, key in _COLUMNS) + _ACTIONS_HEAD
    head = (_TICK_HEAD if tick else "") + head
    name = _folder_name(page.directory)
    upload = (
        ""
        if page.upload_limit is None
        else _upload_panel(page.directory, page.upload_limit, page.resumable) + "\n"
    )
    archives = _archive_bar(page) + "\n" if tick else ""
    # A GET form, not a link: a crawler mirroring the tree does not fetch it.
    sums = (
        f'<form class="checksums" method="get">{_hidden_fields(page)}<button type="submit" name="checksums" '
        'value="all" title="Checksums of every file below this folder, for sha256sum -c">'
        "Download SHA256SUMS</button></form>"
    )
    summary = _summary(len(entries), bool(page.data.next_cursor), ("item", "items"))
    main = (
        f"<h1>{escape(name)}</h1>\n{summary}\n"
        f"{upload}{archives}{_table(head, [_parent_row(page, tick), *rows])}\n"
        f"{_pager(page, _listing_params(page))}{sums if entries else ''}"
    )
    return _page(page, title=f"Index of /{page.directory}", main=main)


# -- search ----------------------------------------------------------------------------------


def _where(entry: EntryModel) -> str:
    parent = entry.path.rpartition("/")[0]
    href = _absolute(parent)
    return (
        f'<div class="where">in <a href="{escape(href)}">/{escape(parent + "/" if parent else "")}</a></div>'
    )


def render_search(page: HtmlPage) -> str:
    assert isinstance(page.data, SearchResults)
    query = page.data.query
    entries = page.data.entries
    rows = [_row(e, _absolute(e.path, is_dir=e.type == "dir"), _where(e)) for e in entries]
    if not entries:
        rows.append(f'<tr class="empty"><td colspan="4">No name contains “{escape(query)}”.</td></tr>')
    params = {"q": query, **({"limit": str(page.limit)} if page.limit else {})}
    folder = escape(_folder_name(page.directory))
    back = f' · <a href="{escape(_absolute(page.directory))}">back to {folder}</a>'
    main = (
        f"<h1>Results for “{escape(query)}”</h1>\n"
        f"{_summary(len(entries), bool(page.data.next_cursor), ('match', 'matches'), back)}\n"
        f"{_table(_plain_head(), rows)}\n{_pager(page, params)}"
    )
    return _page(page, title=f"Search: {query}", main=main, query=query)
