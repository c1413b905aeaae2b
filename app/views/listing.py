"""Directory pages under /files/{dir}/: JSON (as /api/files) or HTML, read from the index.

The response is built in a worker thread, so index reads never block the event loop.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app.auth import Access, link_of
from app.errors import BadRequest
from app.request import FileRequest
from app.services import Services
from app.storage.values import Page, SortKey
from app.views.entries import listing_model, search_model
from app.views.html import HtmlPage, render_listing, render_search

HTML_PAGE = 200
MAX_PAGE = 1000
_SORTS: dict[str, SortKey] = {"name": "name", "size": "size", "mtime": "mtime"}


def _wants_json(request: FileRequest) -> bool:
    return request.query.get("format") == "json" or "application/json" in request.headers.get("accept", "")


# Which of HTML or JSON a listing URL answers depends on Accept (unless ?format=json says): a cache
# must key on it, or it could hand the JSON it stored for a script to the next browser.
_VARY = {"vary": "Accept"}


def _limit(request: FileRequest, default: int) -> int:
    text = request.value("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(text)


class DirectoryListing:
    """The listing of one gated directory (given as its '/'-separated path below ROOT), as an ASGI
    app; a FerryError (a bad limit or cursor) is raised before anything is sent."""

    def __init__(
        self,
        directory: str,
        services: Services,
        request: FileRequest,
        access: Access,
        *,
        keep: Callable[[str], bool] | None = None,
    ) -> None:
        self.directory = directory
        self.services = services
        self.request = request
        self.access = access
        self.keep = keep  # a signed link's scope: entries it does not grant are not shown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await run_in_threadpool(self._build)
        await response(scope, receive, send)

    def _build(self) -> Response:
        request = self.request
        index, mime_types = self.services.index, self.services.settings.mime_types
        cursor = request.value("cursor")
        link = link_of(self.access)
        # Only a prefix link reaches further than this page: then every link on it carries it along.
        link_query = link.query if link is not None and link.prefix is not None else ""
        wants_json = _wants_json(request)
        if wants_json or not request.query.get("q", "").strip():
            # A listing (not a search): a directory changed on disk is rescanned by the index's
            # writer thread first, waited for only briefly (a write-locked index stalls no listing).
            self.services.async_index.refresh(self.directory)
        if wants_json:
            page = self._granted(index.list_dir(self.directory, limit=_limit(request, 100), cursor=cursor))
            listing = listing_model(self.directory, page, mime_types)
            for entry in listing.entries if link_query else ():
                entry.url += "?" + link_query
            negotiated = request.query.get("format") != "json"
            return JSONResponse(listing.model_dump(mode="json"), headers=_VARY if negotiated else None)
        given = _limit(request, 0) or None  # kept in the page's links and forms
        limit = given or HTML_PAGE
        query = request.query.get("q", "").strip()
        if query:
            found = index.search(query, limit=limit, cursor=cursor)
            data = search_model(query, found, mime_types)
            return _html(render_search(HtmlPage(self.directory, data, "name", False, given, cursor)))
        sort = _SORTS.get(request.query.get("sort", "name"), "name")
        descending = request.query.get("order") == "desc"
        page = self._granted(
            index.list_dir(self.directory, limit=limit, cursor=cursor, sort=sort, descending=descending)
        )
        settings = self.services.settings
        view = HtmlPage(
            self.directory,
            listing_model(self.directory, page, mime_types),
            sort,
            descending,
            given,
            cursor,
            upload_limit=None if settings.write_token is None else settings.max_upload_size,
            link_query=link_query,
            link_root=None if link is None else (link.prefix or "/" + self.directory + "/").strip("/"),
            archives=settings.archives,
            resumable=True,  # tus is served for a local ROOT and a bucket alike
        )
        return _html(render_listing(view))

    def _granted(self, page: Page) -> Page:
        if self.keep is None:
            return page
        return Page([e for e in page.entries if self.keep(e.path)], page.next_cursor)


# The pages need nothing but their own CSS, JS and icon (and, for the upload panel, requests back to
# this server); a name can never become a script.
_CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _html(body: str) -> HTMLResponse:
    headers = {
        "x-content-type-options": "nosniff",
        "cache-control": "no-cache",
        "content-security-policy": _CSP,
        **_VARY,  # an HTML listing is always the answer to an Accept without JSON
    }
    return HTMLResponse(body, headers=headers)
