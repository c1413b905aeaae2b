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
from app.http.mime import ACTIVE_TYPES, content_type_for
from app.http.plan import DownloadRequest, FileFacts, plan_download
from app.routes.asgi import CONDITION_FIELDS, PREFIX, conditions, header_fields, query_params
from app.settings import Settings
from app.storage.paths import PathPolicy, SafePath, open_beneath, relative, resolve_to_open
from app.transfer.download import FileResponse, TransferOptions
from app.transfer.slots import DownloadSlots
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
        self.slots = DownloadSlots(self.settings.max_connections_per_ip)
        self.options = TransferOptions(
            chunk_size=self.settings.chunk_size,
            write_buffer=self.settings.write_buffer,
            zero_copy=self.settings.zero_copy,
            rate_limit=self.settings.rate_limit,
            rate_limit_after=self.settings.rate_limit_after,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self.state.gate.download(scope)  # FERRY_DOWNLOAD_AUTH, before any file is looked at
            response = self.respond(scope)
        except FerryError as exc:
            response = error_response(exc)
        await response(scope, receive, send)

    def respond(self, scope: Scope) -> Response:
        path: str = scope["path"][len(PREFIX) :]
        safe = resolve_to_open(path, self.policy)
        try:
            fd, st = open_beneath(safe, self.policy)
        except NotFound:
            self._forget(safe)
            raise
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            return self._directory(safe, path, scope)
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
        content_type = content_type_for(safe.name, settings.mime_types)
        facts = FileFacts(
            size=st.st_size,
            validators=make_validators(
                dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns
            ),
            content_type=content_type,
            content_disposition=content_disposition(_disposition(scope, settings, content_type), safe.name),
        )
        request = _download_request(scope)
        plan = plan_download(request, facts, max_ranges=settings.max_ranges, now=int(time.time()))
        release = None
        if plan.body and scope["method"] == "GET":
            release = self.slots.acquire(scope)  # 429 past FERRY_MAX_CONNECTIONS_PER_IP
        return FileResponse(plan, fd, st, self.options, on_close=release)

    def _directory(self, safe: SafePath, path: str, scope: Scope) -> Response:
        if path and not path.endswith("/"):
            # Same-origin by construction: the Location is always a path under /files/. The query
            # goes along: it may hold a signed link's parameters, or ?format=json.
            query = scope.get("query_string", b"").decode("latin-1")
            location = PREFIX + quote(path) + "/" + ("?" + quote(query, safe="=&;%+/") if query else "")
            return RedirectResponse(location, status_code=301)
        return DirectoryResponse(relative(safe, self.policy), self.state)


def _disposition(scope: Scope, settings: Settings, content_type: str) -> str:
    params = query_params(scope)
    # Stored HTML, SVG or XML never renders as a page of this origin (stored XSS).
    if params.get("download") == "1" or content_type.partition(";")[0] in ACTIVE_TYPES:
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
