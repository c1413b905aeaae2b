"""GET/HEAD /files/{path} when files live in a bucket (FERRY_STORAGE=s3://…).

The same steps as app/routes/files.py — authenticate → name rules → object or folder → plan →
respond — with the object's stat (one HEAD) in place of an opened descriptor: conditional requests
and ranges are decided by Ferry's own planner against the object's ETag and Last-Modified, and the
bytes are read in windows pinned to that ETag (app/transfer/objects.py), so a download never
mixes two versions. "Folders" are key prefixes; their listings come from the index, which the
bucket keeper fills by listing the bucket (app/storage/bucket_index.py).

FERRY_S3_DOWNLOADS=redirect: once Ferry has authorised a GET of a file, it answers 302 to a
presigned URL valid for PRESIGN_SECONDS, and the bytes go from the store to the client directly.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from urllib.parse import quote

from starlette.responses import RedirectResponse
from starlette.types import ASGIApp

from app.archives.layout import Layout
from app.auth import Access, link_of
from app.errors import NotFound, ServiceUnavailable
from app.http.conditional import Validators, make_validators
from app.http.headers import file_disposition
from app.http.mime import content_type_for
from app.http.plan import FileFacts, ResponsePlan
from app.http.ranges import parse_range_header
from app.integrity import Integrity
from app.request import PREFIX, FileRequest
from app.routes.archives import Archives, Manifest
from app.routes.files import disposition_for
from app.services import Services
from app.storage.backend import Stat
from app.storage.errors import NotServable
from app.storage.paths import LinkScope
from app.storage.s3 import S3Storage
from app.storage.values import FileDigest, Identity, entry_from_object
from app.transfer.archive import ArchiveSender
from app.transfer.download import TransferOptions
from app.transfer.object_archive import ObjectArchiveSender
from app.transfer.objects import Head, ObjectSender
from app.transfer.slots import DownloadSlots
from app.views import documents
from app.views.listing import DirectoryListing

PRESIGN_SECONDS = 300  # how long a redirect's presigned URL is valid
MAX_OFFSET = 2**62  # no object is larger: a bigger range start is left to the planner (416)


def object_identity(st: Stat) -> Identity:
    entry = entry_from_object(st.path, False, st.size, st.mtime_ns, st.version)
    return (entry.dev, entry.ino, entry.size, entry.mtime_ns)


def object_validators(st: Stat) -> Validators:
    """The validators of an object's version, made from its identity (the store's ETag and
    version id, size, mtime) exactly as a local file's are from its stat: strong (any change of
    the bytes changes the store's ETag), the same in a listing as in a download, and the same on
    every replica."""
    dev, ino, size, mtime_ns = object_identity(st)
    return make_validators(dev=dev, ino=ino, size=size, mtime_ns=mtime_ns)


class BucketDownloads:
    """GET/HEAD /files/{path} of a bucket: an object, a folder redirect, or a listing."""

    def __init__(self, services: Services, bucket: S3Storage) -> None:
        self.services = services
        self.bucket = bucket
        self.integrity = Integrity(
            services.settings, services.index, services.async_index, services.on_demand
        )
        self.slots = DownloadSlots(services.settings.max_connections_per_ip)
        self.options = TransferOptions.of(services.settings)
        self.archives = BucketArchives(services, self.slots, self.options, bucket)

    async def __call__(self, request: FileRequest) -> ASGIApp:
        gate = self.services.gate
        access = gate.authenticate(request)
        gate.read(access)  # FERRY_DOWNLOAD_AUTH, before any object is looked at
        path = request.path.strip("/")
        try:
            st, head = await self._look(request, path)  # the name rules first: a refused name is a 404
        except NotServable:
            if path:  # gone from the bucket: from the index too
                self.services.async_index.enqueue(self.services.index.forget, path)
            raise
        if st.is_dir:
            return await self._directory(request, access, path)
        if request.path.endswith("/"):
            raise NotFound()
        if "meta4" in request.query or "checksums" in request.query:
            digest = await self._digest(st)
            if digest is None:
                raise ServiceUnavailable("this file's checksum is not computed yet; try again later", 60)
            if "meta4" in request.query:
                mirrors = self.services.settings.mirrors
                return documents.metalink(request, st.name, st.size, digest, mirrors, link_of(access))
            return documents.checksum_file(st.name, digest)
        if self.services.settings.s3_downloads == "redirect" and request.method == "GET":
            url = await self.bucket.presign(path, timedelta(seconds=PRESIGN_SECONDS))
            return RedirectResponse(url, 302, headers={"cache-control": "no-store"})
        return await self._send(request, access, st, head)

    async def _look(self, request: FileRequest, path: str) -> tuple[Stat, Head | None]:
        """The object's stat, and for a GET that will send bytes the first of them, from one
        request: a GET of the bytes the request asks for first (its one range's first window, or
        the file's) carries the object's metadata too, so no HEAD is needed. Anything else (a
        folder, a missing key, a range past the end, HEAD, several ranges, a revalidation) is one
        HEAD."""
        window = self._first_window(request) if path and not request.path.endswith("/") else None
        found = await self.bucket.stat_reading(path, *window) if window is not None else None
        if found is not None and window is not None:
            return found[0], Head(window[0], found[1])
        return await self.bucket.stat(path), None

    def _first_window(self, request: FileRequest) -> tuple[int, int] | None:
        """The bytes a GET will send first, as far as its Range field tells before the size is
        known: [first, first + a chunk) of its one range, or the file's first chunk."""
        settings = self.services.settings
        if request.method != "GET" or settings.s3_downloads == "redirect":
            return None
        if "meta4" in request.query or "checksums" in request.query:
            return None
        if "if-none-match" in request.headers or "if-modified-since" in request.headers:
            return None  # a revalidation, most often answered 304: no bytes to fetch ahead
        chunk = settings.chunk_size
        header = request.headers.get("range")
        specs = parse_range_header(header, max_ranges=settings.max_ranges) if header else None
        if specs is None:
            return (0, chunk)  # no Range, or one to be ignored: the whole file
        first, last = specs[0]
        if len(specs) != 1 or first is None or first > MAX_OFFSET:
            return None  # several ranges, a suffix, or an offset past any object
        return (first, first + chunk if last is None else min(last + 1, first + chunk))

    async def _digest(self, st: Stat) -> FileDigest | None:
        """The object's SHA-256: stored with it by Ferry's upload, else known to the index."""
        if st.sha256 is not None:
            return FileDigest(st.sha256)
        return await self.integrity.digests.get(object_identity(st), wait=True)

    async def _send(self, request: FileRequest, access: Access, st: Stat, head: Head | None) -> ASGIApp:
        settings = self.services.settings
        ident = object_identity(st)
        digest = FileDigest(st.sha256) if st.sha256 is not None else await self.integrity.digests.get(ident)
        content_type = content_type_for(st.name, settings.mime_types)
        disposition = disposition_for(request, settings.disposition, content_type)
        facts = FileFacts(
            size=st.size,
            validators=object_validators(st),
            content_type=content_type,
            content_disposition=file_disposition(disposition, st.name, query=bool(request.query_string)),
            integrity=self.integrity.known_fields(request.path, ident, digest, link_of(access)),
        )
        plan = request.plan(facts, max_ranges=settings.max_ranges)
        release = self.slots.hold(plan, request.method, request.client)
        return ObjectSender(
            plan, self.bucket, st, self.options, on_close=release, activity=self.services.activity, head=head
        )

    async def _directory(self, request: FileRequest, access: Access, path: str) -> ASGIApp:
        if request.path and not request.path.endswith("/"):
            # Same-origin by construction: the Location is always a path under /files/.
            query = request.query_string
            return RedirectResponse(PREFIX + quote(request.path) + "/" + ("?" + query if query else ""), 301)
        if "archive" in request.query:
            return await self.archives.answer(request, path, None)
        if "checksums" in request.query:
            raise NotFound()  # a folder's SHA256SUMS is served from a local root only
        # A signed link's coverage is lexical (app/http/signing.py): a bucket has no symlinks.
        return DirectoryListing(path, self.services, request, access, keep=None)


class BucketArchives(Archives):
    """`?archive=` on a bucket's folder: the members' bytes come from their objects."""

    on_disk = False

    def __init__(
        self, services: Services, slots: DownloadSlots, options: TransferOptions, bucket: S3Storage
    ) -> None:
        super().__init__(services, slots, options)
        self.bucket = bucket

    def _sender(
        self,
        plan: ResponsePlan,
        layout: Layout,
        manifest: Manifest,
        granted: LinkScope | None,
        kind: str,
        release: Callable[[], None] | None,
    ) -> ArchiveSender:
        return ObjectArchiveSender(
            plan,
            layout,
            self.bucket,
            manifest.source,
            manifest.identity,
            self.options,
            kind=kind,
            on_close=release,
            activity=self.services.activity,
        )
