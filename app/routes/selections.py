"""POST /api/archive: one URL for an archive of chosen files and folders of one folder.

The caller names paths below the storage root, all in one folder and all in the index; the answer
is that folder's `?archive=` URL with a `select=` per name (app/routes/archives.py), or, for one
selected folder, that folder's own archive URL. The URL is signed, so whoever holds it can
download and resume it, when FERRY_SIGNING_KEYS is set and either

- the caller holds the write token (who may mint links, as POST /api/sign): a prefix link to the
  folder, for `ttl` (a day unless given); or
- the caller came with a signed link covering the folder (its query parameters on this request,
  as a page opened through the link has them): a link of the same kind, never outliving the
  caller's nor leaving its network, so a link holder cannot widen what they were given (a link
  to one folder's listing selects that folder's files, not its folders, as for ?checksums=all).

Otherwise the URL is plain: downloads are public, or the caller has a token to send with it.
Who may ask is who may read the folder (FERRY_DOWNLOAD_AUTH), decided as for a listing of it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, field_validator

from app.auth import Access, LinkAccess, Token
from app.errors import BadRequest, Forbidden, NotFound
from app.http import signing
from app.request import FileRequest, scope_base_url
from app.services import Services, services_of
from app.storage.errors import StorageError
from app.storage.paths import LinkScope, split_url_path
from app.storage.values import join

router = APIRouter(prefix="/api", tags=["archives"])

MAX_PATHS = 1000
DEFAULT_TTL = 86_400  # a minted link lasts a day unless asked otherwise


class ArchiveRequest(BaseModel):
    """Files and folders of one folder, to download as one archive."""

    paths: list[str] = Field(
        description=f"paths below the storage root, all in one folder (at most {MAX_PATHS:,})",
        examples=[["photos/2024", "photos/cover.jpg"]],
    )
    format: Literal["zip", "tar"] = Field("zip", description="the archive's format")
    ttl: int | str | None = Field(
        None,
        description="a signed URL's lifetime: seconds, or 90s, 30m, 1h, 7d (at most 366d); "
        "a day unless given, and never past the caller's own signed link",
    )

    @field_validator("ttl")
    @classmethod
    def _seconds(cls, value: int | str | None) -> int | None:
        return None if value is None else signing.parse_duration(str(value))


class ArchiveLink(BaseModel):
    url: str = Field(description="the full URL, from FERRY_PUBLIC_URL (else this request's host)")
    href: str = Field(description="the same URL relative to the site root: /files/…/?archive=…")
    expires: int | None = Field(description="when a signed URL stops working, unix seconds; null: not signed")


@dataclasses.dataclass(frozen=True, slots=True)
class Selection:
    folder: str  # '/'-separated below ROOT, '' for ROOT
    names: list[str]  # of entries of `folder`, sorted; empty: the whole folder


@router.post(
    "/archive",
    response_model=ArchiveLink,
    responses={
        400: {"description": "no paths, too many, paths in more than one folder, or a malformed path"},
        401: {"description": "reading needs a token or a signed link (FERRY_DOWNLOAD_AUTH)"},
        403: {"description": "the signed link on this request does not cover what is asked for"},
        404: {"description": "a path not in the index, or folder archives are off (FERRY_ARCHIVES)"},
        410: {"description": "the signed link on this request has expired"},
        422: {"description": "a format or lifetime that cannot be used"},
    },
)
def archive_link(request: Request, body: ArchiveRequest) -> ArchiveLink:
    """The URL of one archive holding PATHS (sync: FastAPI runs it in a worker thread)."""
    services = services_of(request)
    folder, names = _one_folder(body.paths)
    access = _reader(services, request, folder)
    if not services.settings.archives:
        raise NotFound("folder archives are off (FERRY_ARCHIVES=false)")
    link = access if isinstance(access, LinkAccess) else None
    selection = _selection(services, folder, names, link)
    assert body.ttl is None or isinstance(body.ttl, int)  # seconds, once validated
    signed = _signed(services, access, selection, body.ttl, int(time.time()))
    query = [("archive", body.format), *(("select", name) for name in selection.names)]
    if signed is not None:
        query += signing.link_params(services.settings.signing_keys[0].get_secret_value().encode(), signed)
    href = (
        "/files/"
        + quote(selection.folder + "/" if selection.folder else "")
        + "?"
        + urlencode(query, safe="/")
    )
    base = scope_base_url(request.scope, services.settings.public_url)
    return ArchiveLink(url=base + href, href=href, expires=None if signed is None else signed.expires)


def _one_folder(paths: list[str]) -> tuple[str, list[str]]:
    """The folder every path is in and the names they have in it (lexical checks only)."""
    if not paths:
        raise BadRequest("paths: name at least one file or folder")
    if len(paths) > MAX_PATHS:
        raise BadRequest(f"paths: at most {MAX_PATHS:,} in one archive (select their folder instead)")
    folders, names = set(), set()
    for given in paths:
        inner = given.strip("/")
        try:
            signing.canonical_path(inner, prefix=False)
        except ValueError:
            raise BadRequest(f"paths: {given!r} is not a path below the storage root") from None
        folder, _, name = inner.rpartition("/")
        folders.add(folder)
        names.add(name)
    if len(folders) > 1:
        raise BadRequest("paths: every path must be in one folder")
    return folders.pop(), sorted(names)


def _reader(services: Services, request: Request, folder: str) -> Access:
    """Who asks, decided as for a GET of the folder's listing with this request's query and
    Authorization (a token, the signed link it carries, or anonymous); raises unless they may read."""
    client = request.client
    asked = FileRequest(
        method="GET",
        path=folder + "/" if folder else "",
        query_string=request.url.query,
        params=tuple(request.query_params.multi_items()),
        query=dict(request.query_params),
        headers={"authorization": request.headers.get("authorization", "")},
        client=client.host if client else None,
        scheme=request.url.scheme,
        server=None,
        public_url=services.settings.public_url,
    )
    gate = services.gate
    access = gate.authenticate(asked)
    gate.read(access)
    return access


def _selection(services: Services, folder: str, names: list[str], link: LinkAccess | None) -> Selection:
    """The named entries, each in the index (and, for a link holder, in the link's real scope)."""
    policy, index = services.policy, services.index
    scope = LinkScope.of(link.prefix or folder, policy) if link is not None else None
    services.async_index.refresh(folder)
    kinds = []
    for name in names:
        path = join(folder, name)
        try:
            split_url_path(path, policy)  # hidden or unservable names: refused as downloads refuse them
        except StorageError:
            raise NotFound(f"{path!r} is not in the index") from None
        entry = index.get(path)
        if entry is None or (scope is not None and not scope.holds(path)):
            raise NotFound(f"{path!r} is not in the index")
        if entry.is_dir and link is not None and link.prefix is None:
            # As for ?checksums=all: a link to one folder's listing grants that folder, not below.
            raise Forbidden("this link covers one folder, not the folders below it; ask for a folder link")
        kinds.append(entry.is_dir)
    if kinds == [True]:
        return Selection(join(folder, names[0]), [])  # one folder: its own archive
    return Selection(folder, names)


def _signed(
    services: Services, access: Access, selection: Selection, ttl: int | None, now: int
) -> signing.Link | None:
    """The link to sign the URL with, or None for a plain URL."""
    if not services.settings.signing_keys:
        return None
    lifetime = ttl or DEFAULT_TTL
    folder = "/" + selection.folder + "/" if selection.folder else "/"
    if isinstance(access, Token):
        if not access.write:
            return None  # a reader's token mints nothing; it reads the plain URL
        return signing.Link(folder, now + lifetime, prefix=True)
    if isinstance(access, LinkAccess):
        given = dict(parse_qsl(access.query))
        expires = min(int(given["expires"]), now + lifetime)
        return signing.Link(folder, expires, prefix=access.prefix is not None, ip=given.get("ip") or None)
    return None
