"""GET/HEAD /files/{path}: the download hot path, served as plain ASGI.

Downloads bypass FastAPI's routing and dependency machinery (which costs more per request than
the rest of a small download together); `FerryApp` hands every GET/HEAD under /files/ straight to
`Downloads`. Everything else about the request still goes through the same gate and planner.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from urllib.parse import quote

from starlette.datastructures import State
from starlette.responses import RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from app.errors import FerryError, NotFound, error_response
from app.http.conditional import make_validators
from app.http.headers import content_disposition
from app.http.mime import content_type_for
from app.http.plan import DownloadRequest, FileFacts, plan_download
from app.routes.asgi import CONDITION_FIELDS, PREFIX, conditions, header_fields, query_params
from app.settings import Settings
from app.storage.paths import PathPolicy, SafePath, open_beneath, relative, resolve
from app.transfer.download import FileResponse
from app.views.listing import DirectoryResponse

_WANTED = frozenset({b"range", b"if-range"}) | CONDITION_FIELDS


def is_download(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and scope["path"].startswith(PREFIX)


class Downloads:
    """The ASGI app for GET/HEAD /files/{path}: a file, a directory redirect, or a listing."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.settings: Settings = state.settings
        self.policy: PathPolicy = state.policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = self.respond(scope)
        except FerryError as exc:
            response = error_response(exc)
        await response(scope, receive, send)

    def respond(self, scope: Scope) -> Response:
        path: str = scope["path"][len(PREFIX) :]
        safe = resolve(path, self.policy)
        try:
            fd, st = open_beneath(safe, self.policy)
        except NotFound:
            self._forget(safe)
            raise
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            return self._directory(safe, path)
        try:
            if path.endswith("/"):
                raise NotFound()
            return self._file(safe, fd, st, scope)
        except BaseException:
            os.close(fd)
            raise

    def _forget(self, safe: SafePath) -> None:
        """A path the disk no longer has leaves the index too (off the event loop)."""
        path = relative(safe, self.policy)
        if path:
            asyncio.get_running_loop().run_in_executor(None, self.state.index.forget, path)

    def _file(self, safe: SafePath, fd: int, st: os.stat_result, scope: Scope) -> FileResponse:
        settings = self.settings
        facts = FileFacts(
            size=st.st_size,
            validators=make_validators(
                dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns
            ),
            content_type=content_type_for(safe.name, settings.mime_types),
            content_disposition=content_disposition(_disposition(scope, settings), safe.name),
        )
        request = _download_request(scope)
        plan = plan_download(request, facts, max_ranges=settings.max_ranges, now=int(time.time()))
        return FileResponse(
            plan,
            fd,
            st,
            chunk_size=settings.chunk_size,
            write_buffer=settings.write_buffer,
            zero_copy=settings.zero_copy,
        )

    def _directory(self, safe: SafePath, path: str) -> Response:
        if path and not path.endswith("/"):
            # Same-origin by construction: the Location is always a path under /files/.
            return RedirectResponse(PREFIX + quote(path) + "/", status_code=301)
        return DirectoryResponse(relative(safe, self.policy), self.state)


def _disposition(scope: Scope, settings: Settings) -> str:
    params = query_params(scope)
    if params.get("download") == "1":
        return "attachment"
    if params.get("inline") == "1":
        return "inline"
    return settings.disposition


def _download_request(scope: Scope) -> DownloadRequest:
    fields = header_fields(scope, _WANTED)
    return DownloadRequest(
        method=scope["method"],
        range=fields.get(b"range"),
        if_range=fields.get(b"if-range"),
        conditions=conditions(fields),
    )
