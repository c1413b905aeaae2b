"""`GET /files/{dir}/?checksums`: a SHA256SUMS file for a directory that `sha256sum -c` accepts.

`?checksums` lists the directory's own files, `?checksums=all` every file below it (by path
relative to the directory, as `wget -r` or `rsync` lay them out). Files the background hasher
has not reached yet are hashed now when their total is within FERRY_HASH_ON_DEMAND_MAX; beyond
that the answer is 503 with Retry-After, never a list that silently leaves files out.

A large tree costs neither memory nor a burst of CPU: whether every file has a digest is one SQL
count, decided before the headers go out; the body then streams from the index a page at a time;
and each worker generates at most `GENERATIONS` bodies at once, answering more with 503.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app import metrics
from app.errors import BadRequest, FerryError, ServiceUnavailable
from app.http.digests import checksum_line
from app.http.headers import content_disposition
from app.services import Services
from app.storage.errors import StorageError
from app.storage.index import Index
from app.storage.on_demand import HashBusy, Hashed, OnDemandHasher
from app.storage.paths import open_beneath, resolve
from app.storage.values import Entry, Identity, identity

logger = logging.getLogger("ferry.checksums")

MAX_FILES = 100_000
GENERATIONS = 2  # SHA256SUMS bodies one worker generates at once
PAGE = 1000  # files per index query
RETRY_BUSY = 2  # seconds a client refused for too many generations waits


class Generations:
    """How many SHA256SUMS bodies are being generated in this worker (event loop only)."""

    def __init__(self, limit: int = GENERATIONS) -> None:
        self.limit = limit
        self.running = 0

    def try_begin(self) -> bool:
        if self.running >= self.limit:
            return False
        self.running += 1
        return True

    def end(self) -> None:
        self.running -= 1


class ChecksumsList:
    """A directory's SHA256SUMS as an ASGI app; a FerryError (too many files, checksums busy or not
    computed yet) is raised before anything is sent."""

    def __init__(
        self,
        directory: str,
        services: Services,
        generations: Generations,
        *,
        recursive: bool,
        keep: Callable[[str], bool] | None = None,
    ) -> None:
        self.directory = directory
        self.services = services
        self.generations = generations
        self.recursive = recursive
        self.keep = keep  # a signed link's scope: files it does not grant are left out
        # Digests of files hashed for this list but too fresh for the index to keep (by path).
        self.fresh: dict[str, tuple[Identity, bytes]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.generations.try_begin():
            raise ServiceUnavailable("other checksum lists are being generated; try again", RETRY_BUSY)
        try:
            await self._complete()
            await self._stream(head=scope["method"] == "HEAD")(scope, receive, send)
        finally:
            self.generations.end()

    async def _complete(self) -> None:
        """Make sure every file in scope has a digest (hashing what is missing within the on-demand
        bound), or raise: once the headers are sent the list can no longer be refused."""
        index = self.services.index
        await self.services.async_index.refreshed(self.directory)
        files, missing, unknown_bytes = await run_in_threadpool(
            index.digest_coverage, self.directory, recursive=self.recursive, limit=MAX_FILES + 1
        )
        if files > MAX_FILES:
            raise BadRequest(f"more than {MAX_FILES:,} files; ask for a subdirectory's checksums")
        if unknown_bytes > self.services.settings.hash_on_demand_max:
            rate = self.services.settings.hash_rate or 512 * 1024**2
            wait = max(1, min(3600, unknown_bytes // rate))
            raise ServiceUnavailable(f"{missing} checksums are still being computed; try again later", wait)
        after = ("", "")
        while missing:
            page, following = await run_in_threadpool(self._page, after, True)
            if following is None:
                break
            after = following
            for entry in page:
                hashed, ident = await _hash_now(index, self.services.on_demand, entry)
                if not hashed.settled:
                    self.fresh[entry.path] = (ident, hashed.digest.sha256)

    def _stream(self, *, head: bool) -> StreamingResponse:
        headers = {
            "content-disposition": content_disposition("attachment", "SHA256SUMS"),
            "cache-control": "no-cache",
            "x-content-type-options": "nosniff",
        }
        body = _nothing() if head else self._lines()  # a HEAD: the same headers, no list generated
        return StreamingResponse(body, media_type="text/plain; charset=utf-8", headers=headers)

    async def _lines(self) -> AsyncIterator[str]:
        """The body, one page of the index at a time (a page in memory, never the whole list)."""
        start = len(self.directory) + 1 if self.directory else 0
        after = ("", "")
        while True:
            page, following = await run_in_threadpool(self._page, after, False)
            if following is None:
                return
            after = following
            lines = []
            for entry in page:
                sha256 = entry.sha256 or self._fresh(entry) or await self._late(entry)
                if sha256 is None:
                    # Changed since the check and not hashable now: end the body short (the client
                    # sees an incomplete transfer) rather than send a list that leaves a file out.
                    logger.warning("%s changed during a SHA256SUMS; the response is cut short", entry.path)
                    raise ConnectionAbortedError("a file changed while its SHA256SUMS was being sent")
                lines.append(checksum_line(sha256.hex(), entry.path[start:]))
            yield "".join(lines)

    def _page(self, after: tuple[str, str], missing_only: bool) -> tuple[list[Entry], tuple[str, str] | None]:
        """The files of the next page in the link's scope (blocking: run in a thread) and the key to
        continue after; None once the index has no more."""
        index = self.services.index
        page = index.files_with_digests(
            self.directory, recursive=self.recursive, limit=PAGE, after=after, missing_only=missing_only
        )
        if not page:
            return [], None
        kept = page if self.keep is None else [e for e in page if self.keep(e.path)]
        return kept, _key(page[-1])

    async def _late(self, entry: Entry) -> bytes | None:
        """A file written since the check: hashed now if the on-demand bound allows."""
        if entry.size > self.services.settings.hash_on_demand_max:
            return None
        try:
            hashed, _ = await _hash_now(self.services.index, self.services.on_demand, entry)
        except FerryError:
            return None
        return hashed.digest.sha256

    def _fresh(self, entry: Entry) -> bytes | None:
        ident, sha256 = self.fresh.get(entry.path, (None, None))
        return sha256 if ident == (entry.dev, entry.ino, entry.size, entry.mtime_ns) else None


async def _nothing() -> AsyncIterator[str]:
    return
    yield


def _key(entry: Entry) -> tuple[str, str]:
    parent, _, name = entry.path.rpartition("/")
    return parent, name


async def _hash_now(index: Index, on_demand: OnDemandHasher, entry: Entry) -> tuple[Hashed, Identity]:
    try:
        fd, st = await run_in_threadpool(
            lambda: open_beneath(resolve(entry.path, index.policy), index.policy)
        )
    except (OSError, StorageError) as exc:
        raise ServiceUnavailable("the directory is changing; try again") from exc
    try:
        hashed = await on_demand.hash(fd, st)
    except HashBusy:
        metrics.ON_DEMAND_HASH_SKIPPED.inc()
        raise ServiceUnavailable("other checksums are being computed; try again", retry_after=5) from None
    finally:
        os.close(fd)
    if hashed is None:
        raise ServiceUnavailable("the directory is changing; try again")
    return hashed, identity(st)
