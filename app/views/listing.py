"""Directory pages under /files/{dir}/: JSON (as /api/files) or HTML, read from the index.

The response is built in a worker thread, so index reads never block the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app.auth import link_access
from app.errors import BadRequest, FerryError, error_response
from app.storage.errors import StorageError
from app.storage.values import Page, SortKey
from app.views.entries import listing_model, search_model
from app.views.html import HtmlPage, render_listing, render_search

HTML_PAGE = 200
MAX_PAGE = 1000
_SORTS: dict[str, SortKey] = {"name": "name", "size": "size", "mtime": "mtime"}


def _wants_json(params: dict[str, str], scope: Scope) -> bool:
    if params.get("format") == "json":
        return True
    accept = next((v for k, v in scope["headers"] if k == b"accept"), b"")
    return b"application/json" in accept


# Which of HTML or JSON a listing URL answers depends on Accept (unless ?format=json says): a cache
# must key on it, or it could hand the JSON it stored for a script to the next browser.
_VARY = {"vary": "Accept"}


def _limit(params: dict[str, str], default: int) -> int:
    text = params.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(text)


class DirectoryResponse(Response):
    """The listing of one gated directory (given as its '/'-separated path below ROOT)."""

    def __init__(self, directory: str, state: State, *, keep: Callable[[str], bool] | None = None) -> None:
        self.directory = directory
        self.state = state
        self.keep = keep  # a signed link's scope: entries it does not grant are not shown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await run_in_threadpool(self._build, scope)
        except (FerryError, StorageError) as exc:
            response = error_response(exc)
        await response(scope, receive, send)

    def _build(self, scope: Scope) -> Response:
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        index, mime_types = self.state.index, self.state.settings.mime_types
        cursor = params.get("cursor") or None
        link = link_access(scope)
        # Only a prefix link reaches further than this page: then every link on it carries it along.
        link_query = link.query if link is not None and link.prefix is not None else ""
        if _wants_json(params, scope) or not params.get("q", "").strip():
            # A listing (not a search): a directory changed on disk is rescanned by the index's
            # writer thread first, waited for only briefly (a write-locked index stalls no listing).
            self.state.async_index.refresh(self.directory)
        if _wants_json(params, scope):
            page = self._granted(index.list_dir(self.directory, limit=_limit(params, 100), cursor=cursor))
            listing = listing_model(self.directory, page, mime_types)
            for entry in listing.entries if link_query else ():
                entry.url += "?" + link_query
            negotiated = params.get("format") != "json"
            return JSONResponse(listing.model_dump(mode="json"), headers=_VARY if negotiated else None)
        given = _limit(params, 0) or None  # kept in the page's links and forms
        limit = given or HTML_PAGE
        query = params.get("q", "").strip()
        if query:
            found = index.search(query, limit=limit, cursor=cursor)
            data = search_model(query, found, mime_types)
            return _html(render_search(HtmlPage(self.directory, data, "name", False, given, cursor)))
        sort = _SORTS.get(params.get("sort", "name"), "name")
        descending = params.get("order") == "desc"
        page = self._granted(
            index.list_dir(self.directory, limit=limit, cursor=cursor, sort=sort, descending=descending)
        )
        settings = self.state.settings
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
