"""PUT, POST (multipart) and DELETE under /files/ when files live in a bucket (FERRY_STORAGE=s3://…).

The same contract as a local root (app/routes/writes.py), over `S3Storage.write` and `delete`:
the write token first, then the name rules and the size, then the preconditions, and only then the
body, so a refused upload never sends a byte of it (``Expect: 100-continue``).

- **PUT** streams the body into the bucket: one PUT, or a multipart upload of FERRY_S3_PART_SIZE
  parts aborted when the body fails, is cut off, does not match its digest or shutdown cancels it
  (app/transfer/object_upload.py): nothing partial is ever visible or left pending. Preconditions
  are evaluated by Ferry against the ETag it shows (the same in listings and downloads, on every
  replica), then pinned at the store with the store's own ETag (or "nothing there"): a write
  racing in between is refused (412) rather than overwritten.
- **POST** (multipart/form-data) spools every file part to an unlinked temporary file beside the
  index (local disk, up to FERRY_MAX_UPLOAD_SIZE) while the form arrives: a form cut off, too
  large or failing a digest stores nothing. Once it is whole and verified, and every part's name
  checked against the bucket, the parts are written one after the other, each atomically with its
  SHA-256 and CRC-32. An object store has no transaction over several keys: should the store fail while the
  parts are written, those written before stay (each whole) and the answer is the error.
- **DELETE** of a file honours If-Match. A folder is a key prefix that exists only while a key lies
  below it, so it is never empty: deleting one is 409, as for a folder with something in it on a
  local root (a folder holding nothing does not exist: 404).

A bucket keeps files and folders apart as a disk does: a PUT where a folder is, or below a file,
is 409. The index is updated at once (the entry, its parent folders, the digest by the object's
identity); other replicas see the change at their next listing round.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive

from app import metrics
from app.errors import (
    BadRequest,
    Conflict,
    FerryError,
    MethodNotAllowed,
    PayloadTooLarge,
    PreconditionFailed,
    Unauthorized,
    UriTooLong,
)
from app.http.conditional import RequestConditions, write_allowed
from app.http.digests import format_digest_field
from app.http.mime import content_type_for
from app.request import FileRequest
from app.routes.bucket_files import object_validators
from app.routes.resumable_draft import draft_uploads, wants_draft
from app.services import Services
from app.storage.backend import Stat
from app.storage.bucket_index import index_written
from app.storage.digests import DigestBuilder
from app.storage.errors import InTheWay, InvalidInput, NotServable, StorageError, write_refusal
from app.storage.paths import WriteTarget
from app.storage.s3 import S3Storage
from app.storage.values import Entry
from app.storage.writes import AtomicWrite
from app.transfer.object_upload import Stoppable, checked, spool_file, spooled, to_the_end
from app.transfer.upload import (
    ClientGone,
    MultipartUpload,
    body_chunks,
    expected_digests,
    extra_algorithms,
    hashed,
    multipart_boundary,
    verify,
)
from app.views.entries import entry_model

MAX_KEY_BYTES = 1024  # the longest key S3 stores, the bucket's prefix included


def _ancestors(path: str) -> list[str]:
    """The folders above `path`, outermost first ('a', 'a/b' for 'a/b/c')."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _conditional(conditions: RequestConditions) -> bool:
    return any(
        value is not None
        for value in (conditions.if_match, conditions.if_none_match, conditions.if_unmodified_since)
    )


class BucketWrites:
    """PUT/POST/DELETE /files/{path} of a bucket: the answer, once the upload (if any) is stored."""

    def __init__(self, services: Services, bucket: S3Storage) -> None:
        self.services = services
        self.bucket = bucket
        self.gate = services.gate
        self.settings = services.settings
        self.index = services.index
        self.async_index = services.async_index
        self.activity = services.activity
        self.draft = draft_uploads(services)

    async def __call__(self, request: FileRequest, receive: Receive) -> ASGIApp | None:
        """The answer to a write (None when the client went away: nobody is left to answer). A
        FerryError or StorageError is raised for app/main.py to answer, closing the connection."""
        try:
            try:
                self.gate.write(self.gate.authenticate(request))  # the write token, before anything
                if request.method == "DELETE":
                    return await self._delete(request.path, request.conditions)
                if wants_draft(request.headers):
                    return await self.draft.create(request, receive)  # resumable (IETF draft)
                if request.method == "PUT":
                    return await self._put(request, receive)
                return await self._post(request, receive)
            except OSError as exc:  # a form's spool files, on the local disk
                refusal = write_refusal(exc)
                if refusal is None:
                    raise
                raise refusal from exc
        except ClientGone:
            metrics.UPLOADS.labels("failed").inc()
            return None
        except (FerryError, StorageError) as exc:
            if request.method != "DELETE" and not isinstance(exc, (Unauthorized, MethodNotAllowed)):
                metrics.UPLOADS.labels("failed").inc()
            raise

    # --- PUT -------------------------------------------------------------------------------------

    async def _put(self, request: FileRequest, receive: Receive) -> Response:
        path, fields, conditions = request.path, request.headers, request.conditions
        if path.endswith("/") or not path:
            raise BadRequest("PUT needs a file path")
        self._storable(path, UriTooLong)
        self._declared_size(fields)
        expected = expected_digests(fields)
        before = await self._current(path)
        if not write_allowed(conditions, None if before is None else object_validators(before)):
            raise PreconditionFailed()
        pinned = _conditional(conditions)  # a write racing since the check is refused, not lost
        stoppable = Stoppable(receive)
        async with contextlib.aclosing(
            body_chunks(stoppable, self.settings.max_upload_size, self.activity)
        ) as chunks:
            write = self.bucket.write(
                path,
                checked(chunks, expected),
                if_match=before.etag if pinned and before is not None else None,
                if_none_match=pinned and before is None,
                sha256=expected.get("sha-256"),
                content_type=content_type_for(path.rpartition("/")[2], self.settings.mime_types),
            )
            stat = await to_the_end(write, stoppable.stop)
        entry = await self.async_index.write(self._indexed, stat, before is None)
        model = entry_model(entry, self.settings.mime_types)
        headers = {"etag": model.etag or "", "location": model.url}
        if entry.sha256 is not None:
            headers["repr-digest"] = format_digest_field({"sha-256": entry.sha256})
        if before is None:
            return JSONResponse(model.model_dump(mode="json"), status_code=201, headers=headers)
        return Response(status_code=204, headers=headers)

    # --- POST ------------------------------------------------------------------------------------

    async def _post(self, request: FileRequest, receive: Receive) -> Response:
        path, fields = request.path, request.headers
        if path and not path.endswith("/"):
            raise BadRequest("POST uploads go to a directory URL ending with '/'")
        folder = path.strip("/")
        if folder:
            self._storable(folder, UriTooLong)
            await self._no_file_in_the_way(folder, itself=True)
        self._declared_size(fields)
        boundary = multipart_boundary(fields.get("content-type"))
        expected = expected_digests(fields)
        spool = self.settings.index_file.parent
        await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)

        def open_part(name: str, extra: tuple[str, ...]) -> AtomicWrite:
            target = f"{folder}/{name}" if folder else name
            self._storable(target, BadRequest, what="a file part's name: ")
            write = AtomicWrite(
                WriteTarget(-1, name, target, []), fsync=False, builder=DigestBuilder(None, extra)
            )
            write.fd = spool_file(spool)
            return write

        upload = MultipartUpload(boundary, open_part, self.settings.chunk_size)
        whole = DigestBuilder(extra=extra_algorithms(expected)) if expected else None
        try:
            async with contextlib.aclosing(
                body_chunks(receive, self.settings.max_upload_size, self.activity)
            ) as chunks:
                await upload.feed(chunks if whole is None else hashed(chunks, whole))
            if not upload.files:
                raise BadRequest("no file parts in the form")
            if whole is not None:
                verify(whole, expected, "the form data")
            for write, part_expected in zip(upload.files, upload.expected, strict=True):
                verify(write.builder, part_expected, f"the file part {write.target.name!r}")
            # The whole form arrived and holds together: every target is checked before the first
            # part is stored, so only the store itself failing can stop it half way.
            befores = [await self._current(write.target.path) for write in upload.files]
            entries = []
            stored: set[str] = set()
            for write, before in zip(upload.files, befores, strict=True):
                stop = asyncio.Event()
                stored_part = self.bucket.write(
                    write.target.path,
                    spooled(write, self.settings.chunk_size, stop),
                    sha256=write.builder.digest(),
                    crc32=write.builder.crc32,
                    content_type=content_type_for(write.target.name, self.settings.mime_types),
                )
                stat = await to_the_end(stored_part, stop.set)
                created = before is None and write.target.path not in stored
                stored.add(write.target.path)
                entries.append(await self.async_index.write(self._indexed, stat, created))
        finally:
            for write in upload.files:
                write.abort()  # closes the spool file, which goes with it
        models = [entry_model(e, self.settings.mime_types).model_dump(mode="json") for e in entries]
        return JSONResponse({"entries": models}, status_code=201)

    # --- DELETE ----------------------------------------------------------------------------------

    async def _delete(self, path: str, conditions: RequestConditions) -> Response:
        if not path.strip("/"):
            raise Conflict("the root cannot be deleted")
        current = await self.bucket.stat(path.rstrip("/"))  # the name rules first: refused is 404
        if current.is_dir:
            raise InTheWay("the directory is not empty")  # a bucket's folder holds a key, or is not
        if path.endswith("/"):
            raise NotServable()  # only a folder is served with a '/'
        if not write_allowed(conditions, object_validators(current)):
            raise PreconditionFailed()
        pin = current.etag if _conditional(conditions) else None
        await self.bucket.delete(path, if_match=pin)
        # A folder is gone from the bucket with its last key: from the index too.
        gone = [path]
        for folder in reversed(_ancestors(path)):
            try:
                await self.bucket.stat(folder)
                break
            except NotServable:
                gone.append(folder)
        for removed in gone:
            await self.async_index.write(self.index.remove, removed)
        return Response(status_code=204)

    # --- checks ----------------------------------------------------------------------------------

    def _storable(self, path: str, error: type[FerryError], what: str = "") -> None:
        """Refuse a name the bucket may not hold, before anything is read: the name rules (as the
        path gate's), then S3's key length."""
        try:
            key = self.bucket.key(path)
        except StorageError as exc:
            if what:
                raise InvalidInput(f"{what}not a usable file name") from exc
            raise
        if len((self.bucket.config.location.prefix + key).encode()) > MAX_KEY_BYTES:
            raise error(f"{what}the key is longer than {MAX_KEY_BYTES} bytes")

    def _declared_size(self, fields: Mapping[str, str]) -> None:
        """413 before a body byte is read, when Content-Length already says too much."""
        declared = fields.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.settings.max_upload_size:
            raise PayloadTooLarge()

    async def _current(self, path: str) -> Stat | None:
        """The object a write to `path` replaces (None: none yet); 409 for a folder there or a
        file above it, as on a disk."""
        await self._no_file_in_the_way(path, itself=False)
        try:
            current = await self.bucket.stat(path)
        except NotServable:
            return None
        if current.is_dir:
            raise InTheWay(f"a directory is in the way of {path.rpartition('/')[2]!r}")
        return current

    async def _no_file_in_the_way(self, path: str, *, itself: bool) -> None:
        folders = _ancestors(path) + ([path] if itself else [])
        found = await asyncio.gather(*(self.bucket.head(folder) for folder in folders))
        for folder, stat in zip(folders, found, strict=True):
            if stat is not None:
                raise InTheWay(f"a file is in the way of {folder.rpartition('/')[2]!r}")

    # --- the index (its writer thread) -----------------------------------------------------------

    def _indexed(self, stat: Stat, created: bool) -> Entry:
        return index_written(self.index, stat, created)
