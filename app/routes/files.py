from __future__ import annotations

import os
import stat
import time
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from app.deps import PolicyDep, SettingsDep
from app.errors import NotFound
from app.http.conditional import RequestConditions, make_validators
from app.http.headers import content_disposition
from app.http.mime import content_type_for
from app.http.plan import DownloadRequest, FileFacts, plan_download
from app.settings import Settings
from app.storage.paths import PathPolicy, SafePath, open_beneath, resolve
from app.transfer.download import FileResponse
from app.views.listing import listing_response

router = APIRouter()


@router.api_route("/files", methods=["GET", "HEAD"], include_in_schema=False)
async def files_root() -> RedirectResponse:
    return RedirectResponse("/files/", status_code=301)


@router.api_route("/files/{path:path}", methods=["GET", "HEAD"])
async def get_file(path: str, request: Request, settings: SettingsDep, policy: PolicyDep) -> Response:
    safe = resolve(path, policy)
    fd, st = open_beneath(safe, policy)
    try:
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            return _directory(safe, path, request, policy)
        if path.endswith("/"):
            raise NotFound()
        facts = FileFacts(
            size=st.st_size,
            validators=make_validators(
                dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns
            ),
            content_type=content_type_for(safe.name, settings.mime_types),
            content_disposition=content_disposition(_disposition(request, settings), safe.name),
        )
        plan = plan_download(
            _download_request(request), facts, max_ranges=settings.max_ranges, now=int(time.time())
        )
    except BaseException:
        os.close(fd)
        raise
    return FileResponse(
        plan,
        fd,
        st,
        chunk_size=settings.chunk_size,
        write_buffer=settings.write_buffer,
        zero_copy=settings.zero_copy,
    )


def _directory(safe: SafePath, path: str, request: Request, policy: PathPolicy) -> Response:
    if path and not path.endswith("/"):
        # Same-origin by construction: the Location is always a path under /files/.
        return RedirectResponse("/files/" + quote(path) + "/", status_code=301)
    return listing_response(safe, path, request, policy)


def _disposition(request: Request, settings: Settings) -> str:
    query = request.query_params
    if query.get("download") == "1":
        return "attachment"
    if query.get("inline") == "1":
        return "inline"
    return settings.disposition


def _download_request(request: Request) -> DownloadRequest:
    h = request.headers
    return DownloadRequest(
        method=request.method,
        range=h.get("range"),
        if_range=h.get("if-range"),
        conditions=RequestConditions(
            if_match=h.get("if-match"),
            if_none_match=h.get("if-none-match"),
            if_modified_since=h.get("if-modified-since"),
            if_unmodified_since=h.get("if-unmodified-since"),
        ),
    )
