"""GET/HEAD /files/{path}: the download hot path, served as plain ASGI.

Downloads bypass FastAPI's routing and dependency machinery (which costs more per request than
the rest of a small download together); `FerryApp` parses every request under /files/ once
(app/request.py) and hands a GET or HEAD here: authenticate → resolve → directory or file → plan
→ respond. Digests come from app/integrity.py, the bytes go out through app/transfer/download.py.

Besides the file itself: `?meta4` answers the file's Metalink document, `?checksums` its line of
a SHA256SUMS file, a directory's `?checksums` its SHA256SUMS (app/views/checksums.py) and its
`?archive=zip|tar` the folder as one archive (app/routes/archives.py).
"""

from __future__ import annotations

import os
import stat
from urllib.parse import quote

from starlette.responses import RedirectResponse
from starlette.types import ASGIApp

from app.auth import Access, link_of
from app.errors import NotFound
from app.http.conditional import make_validators
from app.http.headers import file_disposition
from app.http.mime import ACTIVE_TYPES, content_type_for
from app.http.plan import FileFacts
from app.integrity import Fields, Integrity
from app.request import PREFIX, FileRequest
from app.routes.archives import Archives
from app.services import Services
from app.storage.errors import NotServable
from app.storage.paths import LinkScope, SafePath, open_beneath, relative, resolve_to_open
from app.transfer.download import FileSender, TransferOptions
from app.transfer.slots import DownloadSlots
from app.views import documents
from app.views.checksums import ChecksumsList, Generations
from app.views.listing import DirectoryListing


class Downloads:
    """GET/HEAD /files/{path}: a file, a directory redirect, or a listing (as an ASGI app)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.integrity = Integrity(
            services.settings, services.index, services.async_index, services.on_demand
        )
        self.checksum_generations = Generations()
        self.slots = DownloadSlots(services.settings.max_connections_per_ip)
        self.options = TransferOptions.of(services.settings)
        self.archives = Archives(services, self.slots, self.options)

    async def __call__(self, request: FileRequest) -> ASGIApp:
        gate, policy = self.services.gate, self.services.policy
        access = gate.authenticate(request)
        gate.read(access)  # FERRY_DOWNLOAD_AUTH, before any file is looked at
        safe = resolve_to_open(request.path, policy)
        link = link_of(access)
        # A folder link grants its prefix after resolution: not where a symlink inside it leads.
        granted = LinkScope.of(link.prefix, policy) if link and link.prefix else None
        try:
            fd, st = open_beneath(safe, policy)
        except NotServable:
            if path := relative(safe, policy):  # gone from the disk: from the index too
                self.services.async_index.enqueue(self.services.index.forget, path)
            raise
        if granted is not None and not granted.holds_open(fd, safe):
            os.close(fd)
            raise NotFound()
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            if link is not None and granted is None:  # a link to this folder's listing
                granted = LinkScope.of(request.path, policy)
            return await self._directory(request, access, safe, granted)
        return await self._file(request, access, safe, fd, st)

    async def _file(
        self, request: FileRequest, access: Access, safe: SafePath, fd: int, st: os.stat_result
    ) -> ASGIApp:
        """The answer for an opened file; `fd` is closed, or owned by the answer that sends it."""
        try:
            if request.path.endswith("/"):
                raise NotFound()
            if "meta4" not in request.query and "checksums" not in request.query:
                return self._send(
                    request, safe, fd, st, await self.integrity.fields(request, fd, st, link_of(access))
                )
        except BaseException:
            os.close(fd)
            raise
        try:
            digest = await self.integrity.required(fd, st)
        finally:
            os.close(fd)
        if "meta4" in request.query:
            mirrors = self.services.settings.mirrors
            return documents.metalink(request, safe.name, st.st_size, digest, mirrors, link_of(access))
        return documents.checksum_file(safe.name, digest)

    def _send(
        self, request: FileRequest, safe: SafePath, fd: int, st: os.stat_result, integrity: Fields
    ) -> FileSender:
        plan = request.plan(
            self.facts(request, safe, st, integrity), max_ranges=self.services.settings.max_ranges
        )
        release = self.slots.hold(plan, request.method, request.client)
        return FileSender(plan, fd, st, self.options, on_close=release, activity=self.services.activity)

    def facts(self, request: FileRequest, safe: SafePath, st: os.stat_result, integrity: Fields) -> FileFacts:
        """What the answer for this opened file depends on (app/routes/fast_files.py keeps them
        per file version)."""
        settings = self.services.settings
        content_type = content_type_for(safe.name, settings.mime_types)
        disposition = disposition_for(request, settings.disposition, content_type)
        return FileFacts(
            size=st.st_size,
            validators=make_validators(
                dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns
            ),
            content_type=content_type,
            content_disposition=file_disposition(disposition, safe.name, query=bool(request.query_string)),
            integrity=integrity,
        )

    async def _directory(
        self, request: FileRequest, access: Access, safe: SafePath, granted: LinkScope | None
    ) -> ASGIApp:
        if request.path and not request.path.endswith("/"):
            # Same-origin by construction: the Location is always a path under /files/.
            query = request.query_string
            return RedirectResponse(PREFIX + quote(request.path) + "/" + ("?" + query if query else ""), 301)
        directory = relative(safe, self.services.policy)
        if "archive" in request.query:
            link = link_of(access)
            one_folder = link is not None and not link.prefix  # a link to this folder's listing
            return await self.archives.answer(request, directory, granted, one_folder=one_folder)
        keep = None if granted is None else granted.holds
        if "checksums" in request.query:
            recursive = request.query["checksums"] == "all"
            return ChecksumsList(
                directory, self.services, self.checksum_generations, recursive=recursive, keep=keep
            )
        return DirectoryListing(directory, self.services, request, access, keep=keep)


def disposition_for(request: FileRequest, default: str, content_type: str) -> str:
    # Stored HTML, SVG or XML never renders as a page of this origin (stored XSS).
    if request.query.get("download") == "1" or content_type.partition(";")[0] in ACTIVE_TYPES:
        return "attachment"
    if request.query.get("inline") == "1":
        return "inline"
    return default
