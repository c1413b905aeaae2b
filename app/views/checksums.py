"""`GET /files/{dir}/?checksums`: a SHA256SUMS file for a directory that `sha256sum -c` accepts.

`?checksums` lists the directory's own files, `?checksums=all` every file below it (by path
relative to the directory, as `wget -r` or `rsync` lay them out). Files the background hasher
has not reached yet are hashed now when their total is within FERRY_HASH_ON_DEMAND_MAX; beyond
that the answer is 503 with Retry-After, never a list that silently leaves files out.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from app.errors import BadRequest, FerryError, ServiceUnavailable, error_response
from app.http.digests import checksum_line
from app.http.headers import content_disposition
from app.storage.digests import hash_open_file, identity, settled
from app.storage.index import Entry, Index
from app.storage.paths import open_beneath, resolve

MAX_FILES = 100_000


class ChecksumsResponse(Response):
    def __init__(
        self, directory: str, state: State, *, recursive: bool, keep: Callable[[str], bool] | None = None
    ) -> None:
        self.directory = directory
        self.state = state
        self.recursive = recursive
        self.keep = keep  # a signed link's scope: files it does not grant are left out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await run_in_threadpool(self._build)
        except FerryError as exc:
            response = error_response(exc)
        await response(scope, receive, send)

    def _build(self) -> Response:
        index: Index = self.state.index
        files = index.files_with_digests(self.directory, recursive=self.recursive, limit=MAX_FILES + 1)
        if len(files) > MAX_FILES:
            raise BadRequest(f"more than {MAX_FILES:,} files; ask for a subdirectory's checksums")
        if self.keep is not None:
            files = [e for e in files if self.keep(e.path)]
        missing = [e for e in files if e.sha256 is None]
        unknown_bytes = sum(e.size for e in missing)
        if unknown_bytes > self.state.settings.hash_on_demand_max:
            rate = self.state.settings.hash_rate or 512 * 1024**2
            wait = max(1, min(3600, unknown_bytes // rate))
            raise ServiceUnavailable(
                f"{len(missing)} checksums are still being computed; try again later", retry_after=wait
            )
        digests = {e.path: e.sha256 for e in files if e.sha256 is not None}
        for entry in missing:
            digests[entry.path] = _hash_now(index, entry)
        start = len(self.directory) + 1 if self.directory else 0
        body = "".join(checksum_line(digests[e.path].hex(), e.path[start:]) for e in files)
        headers = {
            "content-disposition": content_disposition("attachment", "SHA256SUMS"),
            "cache-control": "no-cache",
            "x-content-type-options": "nosniff",
        }
        return PlainTextResponse(body, headers=headers)


def _hash_now(index: Index, entry: Entry) -> bytes:
    try:
        fd, st = open_beneath(resolve(entry.path, index.policy), index.policy)
    except (OSError, FerryError) as exc:
        raise ServiceUnavailable("the directory is changing; try again") from exc
    try:
        built = hash_open_file(fd, st)
    finally:
        os.close(fd)
    if built is None:
        raise ServiceUnavailable("the directory is changing; try again")
    digest = built.result()
    if settled(st):
        index.put_digest(identity(st), digest)
    return digest.sha256
