"""GET/HEAD of a file whose whole answer is small, decided for the protocol itself (FERRY_FAST_PATH).

A small download costs more in its ASGI round trips (a task, the scope's messages, two writes)
than in everything else together. For the common case — a file (or a range of it, a 304, a 412, a
416) whose answer fits in `MAX_BODY` bytes, asked by a request nothing else needs to see — the
protocol (app/transfer/front.py, protocol.py) asks `FastFiles.answer` first and writes what it
returns at once (the front sends a span starting on a page with sendfile: app/transfer/spans.py);
anything else is None, and the request goes to the ASGI app as before.

The answer is the slow path's own, by construction: the same gate (authenticate, resolve, open
beneath ROOT, a link's scope), the same facts and planner (`Downloads.facts`, `FileRequest.plan`),
the same digest fields (only when known without waiting), the same per-address slots. What it
does not do it leaves to the slow path: errors (401/403/404/410/429 …), directories, `?meta4`,
`?checksums`, `?archive`, Want-Repr-Digest, bodies past `MAX_BODY` or not in the page cache,
requests carrying a body, proxy or CORS headers, paced downloads.

What the first request for a method, path and query found — the path, the file version, its
facts and plain answer — answers the next one like it without the gate, the digest lookup or the
planner, as long as neither carries anything personal (a credential, a precondition) and the file
opened (through `open_beneath`, every time) is still that version (`Known`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from typing import Any

from app.auth import link_of
from app.errors import FerryError
from app.http.plan import DownloadRequest, FileFacts, plan_download
from app.http.ranges import ByteRange
from app.http.signing import PARAMS
from app.request import PREFIX, FileRequest
from app.routes.fast_plans import Known, Planned
from app.routes.files import Downloads
from app.storage.errors import StorageError
from app.storage.kept import KeptFiles
from app.storage.paths import LinkScope, open_beneath, resolve_to_open
from app.transfer.page_cache import PAGE, read_body_cached
from app.transfer.spans import Body, FileSpan, cached_span

MAX_BODY = 256 * 1024  # head and body in one write up to here; above, sendfile pays for itself
# A body starting on a page goes out with sendfile when the caller can, and one starting mid-page
# this long (its first page's part copied: spans.py).
_MID_PAGE_SPAN = 4 * PAGE
# Request fields whose presence leaves a request to the ASGI app: a body, an upgrade, what uvicorn's
# proxy-headers middleware rewrites the client or scheme from, a digest to compute.
_APP_FIELDS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"upgrade",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"want-repr-digest",
    }
)
_FAST_PARAMS = frozenset({"download", "inline", *PARAMS})
# The request fields that make a download's answer differ from its version's plain 200.
_PLANNED_FIELDS = ("range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
_CONDITIONS = (*_PLANNED_FIELDS[1:], "if-range")  # what else a Range's answer depends on
_VERSIONS = 8192  # file versions (and names, queries) whose facts are kept
# Request fields that make an answer personal: it is never answered from an earlier one's findings.
_PERSONAL = frozenset({b"authorization", *(name.encode() for name in _CONDITIONS)})
Answer = tuple[int, list[tuple[bytes, bytes]], Body]  # status, header fields, body
Scope = Mapping[str, Any]
Key = tuple[str, str, bytes]  # method, path, query: what `Known` is kept under


class FastFiles:
    """The fast answers of one app's `Downloads` (built by `FerryApp` when FERRY_FAST_PATH=on)."""

    def __init__(self, downloads: Downloads, *, cors: bool) -> None:
        self.downloads = downloads
        self.services = downloads.services
        self.max_ranges = self.services.settings.max_ranges
        self.public_url = self.services.settings.public_url
        self.zero_copy = self.services.settings.zero_copy != "off"
        self.app_fields = _APP_FIELDS | {b"origin"} if cors else _APP_FIELDS
        self._versions: dict[tuple[Any, ...], tuple[FileFacts, Planned | None]] = {}
        self._known: dict[Key, Known] = {}
        self.kept = KeptFiles()  # the descriptors of kept answers' files

    def answer(self, scope: Scope, *, spans: bool = False) -> Answer | None:
        """(status, header fields, body) for this GET or HEAD, or None: the app answers it.

        With `spans` (the connection's front, which can sendfile), a body of one span of the
        file is a `FileSpan` (the caller sends and closes it) when all of it is in the page cache
        and it starts on a page or is 16 KiB or longer, or when it is past `MAX_BODY` (streamed,
        cold pages from a thread; its slot and activity held until `on_end`); otherwise the
        bytes, read into one buffer. Sendfile spares a whole 64 KiB file two copies; for a short
        range starting mid-page it costs more than the copies it spares.

        A request that carries nothing personal (no credential, no precondition; one Range at
        most) is answered from what the last such request for the same method, path and query
        found (`Known`) while the file opened is still the version found then."""
        path: str = scope["path"]
        if not path.startswith(PREFIX) or path.endswith("/") or len(path) == len(PREFIX):
            return None
        app_fields = self.app_fields
        wanted: bytes | None = None  # the Range field
        key: Key | None = (scope["method"], path, scope["query_string"])
        for name, value in scope["headers"]:
            if name in app_fields:
                return None
            if name in _PERSONAL or (name == b"range" and wanted is not None):
                key = None
            elif name == b"range":
                wanted = value
        known = None if key is None else self._known.get(key)
        if known is not None:
            found = self._again(known, scope, wanted, spans)
            if found is not None:
                return found
        return self._first(scope, spans, key)

    def _again(self, known: Known, scope: Scope, wanted: bytes | None, spans: bool) -> Answer | None:
        """The answer from what an earlier request found, or None (the file changed, or the
        request needs more: `_first` answers it)."""
        opened = kept = self.kept.get(known.raw)
        if opened is None:
            try:
                opened = open_beneath(known.safe, self.services.policy)
            except (FerryError, StorageError):
                return None
        fd, st = opened
        method = scope["method"]
        plan: Planned | None = None
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == known.version and stat.S_ISREG(st.st_mode):
            if wanted is None:
                plan = known.whole
            elif method == "GET" and known.facts.ranges:
                plan = known.whole.for_range(wanted, self.max_ranges)
        if plan is None:
            if kept is None:
                os.close(fd)
            return None
        if kept is None:
            self.kept.keep(known.raw, fd, st)  # the next request for it: one lstat (app/storage/kept.py)
        client = scope.get("client")
        return self._send(fd, st, plan, method, client[0] if client else None, spans, shared=True)

    def _first(self, scope: Scope, spans: bool, key: Key | None) -> Answer | None:
        """The answer through the gate, the index of digests and the planner, as the app's; what
        it found is kept under `key` (when not None) for the next request like this one."""
        request = FileRequest.parse(scope, self.public_url)
        if request.params and any(name not in _FAST_PARAMS for name, _ in request.params):
            return None
        gate, policy = self.services.gate, self.services.policy
        try:
            access = gate.authenticate(request)
            gate.read(access)
            safe = resolve_to_open(request.path, policy)
            fd, st = open_beneath(safe, policy)
        except (FerryError, StorageError):
            return None  # the app answers errors (and forgets a vanished file in the index)
        handed = False
        try:
            if not stat.S_ISREG(st.st_mode) or request.path.endswith("/"):
                return None
            big = request.method == "GET" and st.st_size > MAX_BODY and "range" not in request.headers
            if big and not (spans and self.zero_copy):
                return None
            link = link_of(access)
            if link is not None and link.prefix:
                if not LinkScope.of(link.prefix, policy).holds_open(fd, safe):
                    return None
            integrity = self.downloads.integrity.known_now(request, st, link)
            if integrity is None:
                return None
            version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            cached = (*version, request.path, request.query_string, integrity)
            planned = self._versions.get(cached)
            if planned is None:
                planned = self._remember(cached, self.downloads.facts(request, safe, st, integrity))
            facts, whole = planned
            fields = request.headers
            if not any(name in fields for name in _PLANNED_FIELDS):
                plan = whole  # no Range, no precondition: this version's 200 (or HEAD), planned once
            elif (
                whole is not None
                and facts.ranges
                and request.method == "GET"
                and "range" in fields
                and not any(name in fields for name in _CONDITIONS)
                and (ranged := whole.for_range(fields["range"].encode("latin-1"), self.max_ranges))
            ):
                plan = ranged  # a Range and no precondition: the 200's fields, the range's two
            else:
                plan = Planned.of(request.plan(facts, max_ranges=self.max_ranges))
            if plan is None:
                return None
            if key and whole and link is None and self.downloads.integrity.settled(st):
                # Nothing in this answer came from a credential or the time, nor will its digest
                # fields change: kept for the next.
                if len(self._known) >= _VERSIONS:
                    self._known.clear()
                self._known[key] = Known(safe, version, facts, whole)
            handed = True
            return self._send(fd, st, plan, request.method, request.client, spans)
        finally:
            if not handed:
                os.close(fd)

    def _send(
        self,
        fd: int,
        st: os.stat_result,
        plan: Planned,
        method: str,
        client: str | None,
        spans: bool,
        *,
        shared: bool = False,
    ) -> Answer | None:
        """The answer of `plan` with its body from the open file `fd` (closed here unless the
        body is a `FileSpan` of it, or it is `shared`: a kept descriptor, which a span is sent
        from within the turn, and a stream from a dup of its own), or None."""
        owned = -1 if shared else fd  # what this call closes unless the caller is handed it
        try:
            if method == "HEAD" or not plan.body:
                return plan.status, plan.fields, b""
            if self.downloads.options.rate_limit:
                return None  # paced: the app's
            body: Body | None
            first = plan.body[0] if len(plan.body) == 1 else None
            one = first if spans and self.zero_copy and isinstance(first, ByteRange) else None
            if plan.length > MAX_BODY and one is None:
                return None
            if one is not None and plan.length > MAX_BODY:
                if shared:  # a stream outlives the turn: a descriptor of its own
                    fd = owned = os.dup(fd)
                body = FileSpan(fd, one.start, one.length)  # streamed: pages not cached from a thread
            elif one is not None and (one.length >= _MID_PAGE_SPAN or not one.start % PAGE):
                body = cached_span(fd, one.start, one.length)
                if body is not None:
                    body.shared = shared
                else:
                    body = read_body_cached(fd, st, plan.body)
            else:
                body = read_body_cached(fd, st, plan.body)
            if body is None:
                return None
            # A GET with a body: FERRY_MAX_CONNECTIONS_PER_IP counts it, for as long as it is sent
            # (an answer written whole: no longer than the check), and so does the transfer mark.
            activity = self.services.activity
            try:
                if isinstance(body, FileSpan) and body.count > MAX_BODY:
                    release = self.downloads.slots.acquire(client)
                    activity.begin()
                    body.on_end = _ending(release, activity.end)  # held until the stream ends
                else:
                    self.downloads.slots.check(client)
                    activity.mark()
            except FerryError:
                return None
            if isinstance(body, FileSpan):
                owned = -1  # the caller's to send and close (unless shared)
            return plan.status, plan.fields, body
        finally:
            if owned >= 0:
                os.close(owned)

    def _remember(self, key: tuple[Any, ...], facts: FileFacts) -> tuple[FileFacts, Planned | None]:
        """A file version's facts, and its plain answer (no Range, no precondition)."""
        plain = plan_download(DownloadRequest("GET"), facts, max_ranges=self.max_ranges, now=0)
        version = (facts, Planned.of(plain))
        if len(self._versions) >= _VERSIONS:
            self._versions.clear()
        self._versions[key] = version
        return version


def _ending(release: Callable[[], None] | None, end: Callable[[], None]) -> Callable[[int, bool], None]:
    def ended(sent: int, cut: bool) -> None:
        if release is not None:
            release()
        end()

    return ended
