"""The JSON API over the index: /api/files/{path} and /api/search."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.errors import NotFound
from app.settings import Settings
from app.storage.async_index import AsyncIndex
from app.storage.index import Index
from app.storage.paths import PathPolicy, resolve
from app.views.entries import EntryModel, Listing, SearchResults, entry_model, listing_model, search_model

router = APIRouter(prefix="/api", tags=["index"])

MAX_PAGE = 1000
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="entries per page")]
Cursor = Annotated[str | None, Query(description="next_cursor from the previous page")]


def _state(request: Request) -> tuple[Settings, PathPolicy, Index]:
    state = request.app.state
    return state.settings, state.policy, state.index


def directory_listing(request: Request, path: str, limit: int, cursor: str | None) -> EntryModel | Listing:
    """A file's entry, or one page of a directory (the same JSON as /files/{dir}/?format=json)."""
    settings, policy, index = _state(request)
    writes: AsyncIndex = request.app.state.async_index  # index writes go to its one writer thread
    entry = index.entry_for(resolve(path, policy), write=writes.enqueue)
    if entry is None:
        raise NotFound()
    if not entry.is_dir:
        return entry_model(entry, settings.mime_types)
    writes.refresh(entry.path)
    page = index.list_dir(entry.path, limit=limit, cursor=cursor)
    return listing_model(entry.path, page, settings.mime_types)


# Sync handlers: FastAPI runs them in its thread pool, so SQLite never blocks the event loop.
_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"description": "a malformed path or cursor"},
    404: {"description": "nothing servable at this path"},
}


@router.get("/files/{path:path}", response_model=EntryModel | Listing, responses=_ERRORS)
def api_files(request: Request, path: str, limit: Limit = 100, cursor: Cursor = None) -> EntryModel | Listing:
    return directory_listing(request, path, limit, cursor)


@router.get("/search", response_model=SearchResults, responses={400: _ERRORS[400]})
def api_search(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=255, description="part of a name, any case")],
    limit: Limit = 100,
    cursor: Cursor = None,
) -> SearchResults:
    settings, _, index = _state(request)
    return search_model(q, index.search(q, limit=limit, cursor=cursor), settings.mime_types)
