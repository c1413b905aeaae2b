"""GET/HEAD /files/{path}: the download hot path, served as plain ASGI.

Downloads bypass FastAPI's routing and dependency machinery (which costs more per request than
the rest of a small download together); `FerryApp` hands every GET/HEAD under /files/ straight to
`Downloads`. Everything else about the request still goes through the same gate and planner.

Besides the file itself: `?meta4` answers the file's Metalink document, `?checksums` its line of
a SHA256SUMS file, and a directory's `?checksums` its SHA256SUMS (app/views/checksums.py).
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from starlette.datastructures import State
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from app import __version__, metrics
from app.auth import link_access
from app.errors import FerryError, NotFound, ServiceUnavailable, error_response
from app.http.conditional import make_validators
from app.http.digests import ALGORITHMS, checksum_line, parse_want_field, wanted_algorithm
from app.http.headers import content_disposition, file_disposition
from app.http.metalink import METALINK_TYPE, Mirror, Pieces, link_field, metalink_document
from app.http.mime import ACTIVE_TYPES, content_type_for
from app.http.plan import DownloadRequest, FileFacts, integrity_headers, plan_download
from app.routes.asgi import CONDITION_FIELDS, PREFIX, conditions, header_fields, query_params
from app.settings import Settings
from app.storage.async_index import AsyncIndex
from app.storage.errors import NotServable, StorageError
from app.storage.on_demand import DigestCache, HashBusy, OnDemandHasher
from app.storage.paths import (
    LinkScope,
    PathPolicy,
    SafePath,
    normal_url_path,
    open_beneath,
    relative,
    resolve_to_open,
)
from app.storage.values import FileDigest, identity
from app.transfer.activity import Activity
from app.transfer.download import FileResponse, TransferOptions
from app.transfer.slots import DownloadSlots
from app.views.checksums import ChecksumsResponse, Generations
from app.views.listing import DirectoryResponse

_WANTED = frozenset({b"range", b"if-range", b"want-repr-digest"}) | CONDITION_FIELDS
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


def is_download(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and scope["path"].startswith(PREFIX)


def base_url(scope: Scope, settings: Settings) -> str:
    """This server as the client reached it (FERRY_PUBLIC_URL when set), for absolute links."""
    if settings.public_url:
        return settings.public_url
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
    if not _HOST.fullmatch(host):
        address, port = scope.get("server") or ("127.0.0.1", 80)
        host = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return f"{scope.get('scheme', 'http')}://{host}"


class _Deferred(Response):
    """A response decided after blocking work (hashing a file) done off the event loop."""

    def __init__(self, make: Callable[[], Awaitable[Response]], cleanup: Callable[[], None]) -> None:
        self.make = make
        self.cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self.make()
        except (FerryError, StorageError) as exc:
            self.cleanup()
            response = error_response(exc)
        except BaseException:
            self.cleanup()
            raise
        await response(scope, receive, send)


class Downloads:
    """The ASGI app for GET/HEAD /files/{path}: a file, a directory redirect, or a listing."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.settings: Settings = state.settings
        self.policy: PathPolicy = state.policy
        self.activity: Activity = state.activity
        self.async_index: AsyncIndex = state.async_index
        self.digests = DigestCache(lambda ident: self.async_index.read(state.index.digest, ident))
        self.on_demand: OnDemandHasher = state.on_demand
        self.checksum_generations = Generations()
        self._integrity_cache: dict[
            tuple[tuple[int, int, int, int], str, bool], tuple[tuple[str, str], ...]
        ] = {}
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
            response = await self.respond(scope)
        except (FerryError, StorageError) as exc:
            response = error_response(exc)
        await response(scope, receive, send)

    async def respond(self, scope: Scope) -> Response:
        path = normal_url_path(scope["path"][len(PREFIX) :])
        safe = resolve_to_open(path, self.policy)
        access = link_access(scope)
        # A folder link grants its prefix after resolution: not where a symlink inside it leads.
        granted = LinkScope.of(access.prefix, self.policy) if access and access.prefix else None
        try:
            fd, st = open_beneath(safe, self.policy)
        except NotServable:
            self._forget(safe)
            raise
        if granted is not None and not granted.holds_open(fd, safe):
            os.close(fd)
            raise NotFound()
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            if access is not None and granted is None:  # a link to this folder's listing
                granted = LinkScope.of(path, self.policy)
            return self._directory(safe, path, scope, granted)
        try:
            if path.endswith("/"):
                raise NotFound()
            return await self._file(safe, path, fd, st, scope)
        except BaseException:
            os.close(fd)
            raise

    def _forget(self, safe: SafePath) -> None:
        """A path the disk no longer has leaves the index too (on the index's writer thread)."""
        path = relative(safe, self.policy)
        if path:
            self.async_index.enqueue(self.state.index.forget, path)

    # -- a file ---------------------------------------------------------------------------------

    async def _file(self, safe: SafePath, path: str, fd: int, st: os.stat_result, scope: Scope) -> Response:
        params = query_params(scope) if scope["query_string"] else {}
        if "meta4" in params:
            return self._metalink(safe, path, fd, st, scope)
        if "checksums" in params:
            return self._checksum_file(safe, fd, st)
        fields = header_fields(scope, _WANTED)
        ident = identity(st)
        digest = await self.digests.get(ident)  # None rather than wait on a busy index
        want = fields.get(b"want-repr-digest")
        algorithm = wanted_algorithm(parse_want_field(want)) if want is not None else None
        if algorithm is None:
            return self._file_response(safe, path, fd, st, scope, params, fields, digest, {})
        known = None if algorithm == "sha-256" else self.on_demand.known(ident, ALGORITHMS[algorithm])
        extra = {algorithm: known} if known is not None else {}
        if digest is not None and (algorithm == "sha-256" or known is not None):
            return self._file_response(safe, path, fd, st, scope, params, fields, digest, extra)
        # A digest not known yet: only a GET waits for it, and only within the on-demand bound; a
        # HEAD never hashes (it answers with what is known).
        if scope["method"] != "GET" or st.st_size > self.settings.hash_on_demand_max:
            return self._file_response(safe, path, fd, st, scope, params, fields, digest, extra)

        async def hashed_first(algorithm: str = algorithm) -> Response:
            found, more = await self._hash(fd, st, algorithm)
            return self._file_response(safe, path, fd, st, scope, params, fields, found or digest, more)

        return _Deferred(hashed_first, lambda: os.close(fd))

    def _file_response(
        self,
        safe: SafePath,
        path: str,
        fd: int,
        st: os.stat_result,
        scope: Scope,
        params: dict[str, str],
        fields: dict[bytes, str],
        digest: FileDigest | None,
        extra: dict[str, bytes],
    ) -> FileResponse:
        settings = self.settings
        content_type = content_type_for(safe.name, settings.mime_types)
        facts = FileFacts(
            size=st.st_size,
            validators=make_validators(
                dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns
            ),
            content_type=content_type,
            content_disposition=file_disposition(
                _disposition(params, settings, content_type), safe.name, query=bool(scope["query_string"])
            ),
            integrity=self._integrity(path, scope, st, digest, extra),
        )
        request = DownloadRequest(
            method=scope["method"],
            range=fields.get(b"range"),
            if_range=fields.get(b"if-range"),
            conditions=conditions(fields),
        )
        plan = plan_download(request, facts, max_ranges=settings.max_ranges, now=int(time.time()))
        on_close = None
        if plan.body and scope["method"] == "GET":
            release = self.slots.acquire(scope)  # 429 past FERRY_MAX_CONNECTIONS_PER_IP
            self.activity.begin()  # the background hasher waits while bytes are moving

            def on_close() -> None:
                self.activity.end()
                if release is not None:
                    release()

        return FileResponse(plan, fd, st, self.options, on_close=on_close)

    def _integrity(
        self, path: str, scope: Scope, st: os.stat_result, digest: FileDigest | None, extra: dict[str, bytes]
    ) -> tuple[tuple[str, str], ...]:
        """Repr-Digest, Digest and Link for this response; the common case (a known digest, no
        extra algorithm, no signed link) is formatted once per file version, not per request."""
        plain = not extra and link_access(scope) is None
        key = (identity(st), path, digest is not None)
        if plain and (cached := self._integrity_cache.get(key)) is not None:
            return cached
        digests = {"sha-256": digest.sha256, **extra} if digest is not None else extra
        wants_link = digest is not None or self.settings.mirrors
        headers = integrity_headers(
            digests, self._links(path, scope, digest is not None) if wants_link else None
        )
        if plain:
            if len(self._integrity_cache) >= 8192:
                self._integrity_cache.clear()
            self._integrity_cache[key] = headers
        return headers

    def _links(self, path: str, scope: Scope, described: bool) -> str:
        quoted = quote(path)
        mirrors = [Mirror(f"{base}/{quoted}", i) for i, base in enumerate(self.settings.mirrors, start=1)]
        access = link_access(scope)  # a signed link: the .meta4 is reached with the same signature
        meta4 = PREFIX + quoted + "?meta4" + (f"&{access.query}" if access else "")
        return link_field(describedby=meta4 if described else None, duplicates=mirrors)

    async def _hash(
        self, fd: int, st: os.stat_result, algorithm: str
    ) -> tuple[FileDigest | None, dict[str, bytes]]:
        """A GET that wants a digest: hash the file on the on-demand pool if that does not mean
        waiting behind more than FERRY_HASH_ON_DEMAND_MAX of hashing; else go without it."""
        try:
            hashed = await self.on_demand.hash(fd, st, ALGORITHMS[algorithm])
        except HashBusy:
            metrics.ON_DEMAND_HASH_SKIPPED.inc()
            return None, {}
        if hashed is None:
            raise ServiceUnavailable("the file is changing; try again")
        if hashed.settled:
            self.digests.remember(identity(st), hashed.digest)
        return hashed.digest, {a: d for a, n in ALGORITHMS.items() if (d := hashed.extra.get(n)) is not None}

    async def _known_or_hashed(self, fd: int, st: os.stat_result) -> FileDigest:
        """The file's digest, hashed now if unknown and small enough, else 503; closes `fd`."""
        try:
            digest = await self.digests.get(identity(st), wait=True)  # needed: worth waiting for
            if digest is not None:
                return digest
            if st.st_size > self.settings.hash_on_demand_max:
                raise ServiceUnavailable(
                    "this file's checksum is not computed yet; try again later", retry_after=60
                )
            try:
                hashed = await self.on_demand.hash(fd, st)
            except HashBusy:
                metrics.ON_DEMAND_HASH_SKIPPED.inc()
                busy = "other checksums are being computed; try again"
                raise ServiceUnavailable(busy, retry_after=5) from None
            if hashed is None:
                raise ServiceUnavailable("the file is changing; try again")
            if hashed.settled:
                self.digests.remember(identity(st), hashed.digest)
            return hashed.digest
        finally:
            os.close(fd)

    def _checksum_file(self, safe: SafePath, fd: int, st: os.stat_result) -> Response:
        """`?checksums` on a file: its one SHA256SUMS line, for `sha256sum -c`."""

        async def make() -> Response:
            digest = await self._known_or_hashed(fd, st)
            headers = {
                "content-disposition": content_disposition("attachment", safe.name + ".sha256"),
                "x-content-type-options": "nosniff",
            }
            return PlainTextResponse(checksum_line(digest.hex, safe.name), headers=headers)

        return _Deferred(make, lambda: None)

    def _metalink(self, safe: SafePath, path: str, fd: int, st: os.stat_result, scope: Scope) -> Response:
        async def make() -> Response:
            digest = await self._known_or_hashed(fd, st)
            quoted = quote(path)
            access = link_access(scope)  # the file's URL with the signature this request carried
            signed = f"?{access.query}" if access else ""
            urls = [Mirror(f"{base_url(scope, self.settings)}{PREFIX}{quoted}{signed}", 1)]
            urls += [Mirror(f"{b}/{quoted}", i) for i, b in enumerate(self.settings.mirrors, start=2)]
            pieces = Pieces(digest.piece_length, digest.piece_hexes()) if digest.pieces else None
            document = metalink_document(
                name=safe.name,
                size=st.st_size,
                sha256=digest.hex,
                urls=urls,
                pieces=pieces,
                generator=f"Ferry/{__version__}",
            )
            disposition = content_disposition("attachment", safe.name + ".meta4")
            headers = {"content-disposition": disposition, "x-content-type-options": "nosniff"}
            return Response(document, media_type=METALINK_TYPE, headers=headers)

        return _Deferred(make, lambda: None)

    # -- a directory ------------------------------------------------------------------------------

    def _directory(self, safe: SafePath, path: str, scope: Scope, granted: LinkScope | None) -> Response:
        if path and not path.endswith("/"):
            # Same-origin by construction: the Location is always a path under /files/.
            query = scope["query_string"].decode("latin-1")
            return RedirectResponse(PREFIX + quote(path) + "/" + ("?" + query if query else ""), 301)
        params = query_params(scope) if scope["query_string"] else {}
        if "checksums" in params:
            return ChecksumsResponse(
                relative(safe, self.policy),
                self.state,
                self.checksum_generations,
                recursive=params["checksums"] == "all",
                keep=None if granted is None else granted.holds,
            )
        return DirectoryResponse(
            relative(safe, self.policy), self.state, keep=None if granted is None else granted.holds
        )


def _disposition(params: dict[str, str], settings: Settings, content_type: str) -> str:
    # Stored HTML, SVG or XML never renders as a page of this origin (stored XSS).
    if params.get("download") == "1" or content_type.partition(";")[0] in ACTIVE_TYPES:
        return "attachment"
    if params.get("inline") == "1":
        return "inline"
    return settings.disposition
