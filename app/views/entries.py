"""The public shape of index entries: the JSON models the API and listings return."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

from app.http.conditional import make_validators
from app.http.mime import content_type_for
from app.request import PREFIX
from app.storage.values import Entry, Page


class EntryModel(BaseModel):
    """A file or directory under ROOT."""

    name: str
    path: str = Field(description="'/'-separated path below ROOT")
    type: Literal["file", "dir"]
    size: int | None = Field(description="bytes; null for a directory")
    mtime: datetime = Field(description="last modification, RFC 3339 UTC")
    content_type: str | None = Field(description="what a download answers with; null for a directory")
    etag: str | None = Field(description="the strong ETag a download answers with; null for a directory")
    url: str = Field(description="where to download it (a listing for a directory)")
    sha256: str | None = Field(
        None, description="hex SHA-256 of the file's bytes; null while not computed yet, and for a directory"
    )


class Listing(BaseModel):
    """One page of a directory, sorted by name; pass `next_cursor` back as `cursor` for the next."""

    path: str
    entries: list[EntryModel]
    next_cursor: str | None


class SearchResults(BaseModel):
    """One page of entries whose name contains the query (case-insensitive), anywhere under ROOT."""

    query: str
    entries: list[EntryModel]
    next_cursor: str | None


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def _mtime(mtime_ns: int) -> datetime:
    """A file's mtime as a datetime; one outside the years 1-9999 (tmpfs keeps any 64-bit time)
    is shown as the nearest of those bounds rather than failing the whole listing."""
    try:
        return datetime.fromtimestamp(mtime_ns // 1000 / 1_000_000, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return _EARLIEST if mtime_ns < 0 else _LATEST


def entry_model(entry: Entry, mime_types: Mapping[str, str]) -> EntryModel:
    mtime = _mtime(entry.mtime_ns)
    url = PREFIX + quote(entry.path) + ("/" if entry.is_dir and entry.path else "")
    if entry.is_dir:
        return EntryModel(
            name=entry.name,
            path=entry.path,
            type="dir",
            size=None,
            mtime=mtime,
            content_type=None,
            etag=None,
            url=url,
        )
    etag = make_validators(dev=entry.dev, ino=entry.ino, size=entry.size, mtime_ns=entry.mtime_ns).etag
    return EntryModel(
        name=entry.name,
        path=entry.path,
        type="file",
        size=entry.size,
        mtime=mtime,
        content_type=content_type_for(entry.name, mime_types),
        etag=etag,
        url=url,
        sha256=None if entry.sha256 is None else entry.sha256.hex(),
    )


def listing_model(path: str, page: Page, mime_types: Mapping[str, str]) -> Listing:
    return Listing(
        path=path, entries=[entry_model(e, mime_types) for e in page.entries], next_cursor=page.next_cursor
    )


def search_model(query: str, page: Page, mime_types: Mapping[str, str]) -> SearchResults:
    entries = [entry_model(e, mime_types) for e in page.entries]
    return SearchResults(query=query, entries=entries, next_cursor=page.next_cursor)
