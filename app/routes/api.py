"""The JSON API over the index: /api/files/{path} and /api/search."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from app.errors import NotFound
from app.services import Services, services_of
from app.storage.paths import resolve, split_url_path
from app.storage.values import Entry, entry_from_object
from app.views.entries import EntryModel, Listing, SearchResults, entry_model, listing_model, search_model

router = APIRouter(prefix="/api", tags=["index"])

MAX_PAGE = 1000
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="entries per page")]
Cursor = Annotated[str | None, Query(description="next_cursor from the previous page")]


ServicesDep = Annotated[Services, Depends(services_of)]


async def api_reader(request: Request) -> None:
    """FastAPI dependency for /api/files and /api/search: a read token unless downloads are public."""
    gate = services_of(request).gate
    gate.api(gate.token(request.headers.get("authorization")))


def directory_listing(services: Services, path: str, limit: int, cursor: str | None) -> EntryModel | Listing:
    """A file's entry, or one page of a directory (the same JSON as /files/{dir}/?format=json)."""
    index, mime_types = services.index, services.settings.mime_types
    writes = services.async_index  # index writes go to its one writer thread
    if services.bucket is not None:
        entry = indexed_entry(services, path)
    else:
        entry = index.entry_for(resolve(path, services.policy), write=writes.enqueue)
    if entry is None:
        raise NotFound()
    if not entry.is_dir:
        return entry_model(entry, mime_types)
    writes.refresh(entry.path)
    page = index.list_dir(entry.path, limit=limit, cursor=cursor)
    return listing_model(entry.path, page, mime_types)


def indexed_entry(services: Services, path: str) -> Entry | None:
    """In a bucket (FERRY_STORAGE=s3://…) there is nothing under ROOT to stat: a path's entry is
    the index's, which the bucket keeper's listing rounds keep (the same name rules refuse it)."""
    key = "/".join(split_url_path(path, services.policy))
    return services.index.get(key) if key else entry_from_object("", True, 0, 0, "")


# Sync handlers: FastAPI runs them in its thread pool, so SQLite never blocks the event loop.
_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"description": "a malformed path or cursor"},
    404: {"description": "nothing servable at this path"},
}


@router.get("/files/{path:path}", response_model=EntryModel | Listing, responses=_ERRORS)
def api_files(
    services: ServicesDep, path: str, limit: Limit = 100, cursor: Cursor = None
) -> EntryModel | Listing:
    return directory_listing(services, path, limit, cursor)


@router.get("/search", response_model=SearchResults, responses={400: _ERRORS[400]})
def api_search(
    services: ServicesDep,
    q: Annotated[str, Query(min_length=1, max_length=255, description="part of a name, any case")],
    limit: Limit = 100,
    cursor: Cursor = None,
) -> SearchResults:
    found = services.index.search(q, limit=limit, cursor=cursor)
    return search_model(q, found, services.settings.mime_types)
