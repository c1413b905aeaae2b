"""PUT, POST (multipart) and DELETE under /files/: authenticated, streamed, atomic writes.

Served as plain ASGI (like downloads) so the body is read only after the token, the size and the
preconditions have been accepted: a client sending ``Expect: 100-continue`` never uploads a body
that is going to be refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from starlette.responses import JSONResponse, Response
from starlette.types import Receive

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
from app.http.conditional import RequestConditions, make_validators, write_allowed
from app.http.digests import format_digest_field
from app.request import FileRequest
from app.routes.resumable_draft import draft_uploads, wants_draft
from app.services import Services
from app.storage.digests import DigestBuilder
from app.storage.errors import StorageError, write_refusal
from app.storage.paths import WriteTarget, child_target, open_write_target
from app.storage.values import Entry, entry_from_stat, identity
from app.storage.writes import AtomicWrite, commit_all, current, delete, too_long
from app.transfer.upload import (
    ClientGone,
    MultipartUpload,
    body_chunks,
    expected_digests,
    extra_algorithms,
    hashed,
    multipart_boundary,
    stream_body,
    verify,
)
from app.views.entries import entry_model


def _checker(request: RequestConditions) -> Callable[[os.stat_result | None], None]:
    def check(st: os.stat_result | None) -> None:
        validators = None
        if st is not None:
            validators = make_validators(
                dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns
            )
        if not write_allowed(request, validators):
            raise PreconditionFailed()

    return check


class Writes:
    """PUT/POST/DELETE /files/{path}: the answer, once the upload (if any) is stored."""

    def __init__(self, services: Services) -> None:
        self.gate = services.gate
        self.settings = services.settings
        self.policy = services.policy
        self.index = services.index
        self.async_index = services.async_index  # index writes never run on the loop
        self.activity = services.activity
        self.draft = draft_uploads(services)

    async def __call__(self, request: FileRequest, receive: Receive) -> Response | None:
        """The answer to a write (None when the client went away: nobody is left to answer). A
        FerryError is raised for app/main.py to answer, closing the connection."""
        try:
            try:
                self.gate.write(self.gate.authenticate(request))  # the write token, before anything
                if request.method != "DELETE" and wants_draft(request.headers):
                    return await self.draft.create(request, receive)  # resumable (IETF draft)
                return await self._handle(request, receive)
            except OSError as exc:
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

    async def _handle(self, request: FileRequest, receive: Receive) -> Response:
        path, method, fields = request.path, request.method, request.headers
        reason = too_long(self.policy.root, path)
        if reason is not None:
            raise UriTooLong(reason)  # before a directory is made or a body byte read
        if method == "DELETE":
            deleted = await asyncio.to_thread(self._delete, path, request.conditions)
            await self.async_index.write(self.index.remove, deleted)
            return Response(status_code=204)
        declared = fields.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.settings.max_upload_size:
            raise PayloadTooLarge()
        expected = expected_digests(fields)
        # The body's arrival is marked as a transfer (the background hasher waits meanwhile).
        async with contextlib.aclosing(
            body_chunks(receive, self.settings.max_upload_size, self.activity)
        ) as chunks:
            if method == "PUT":
                return await self._put(path, chunks, request.conditions, expected)
            return await self._post(path, chunks, fields.get("content-type"), expected)

    async def _put(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        request: RequestConditions,
        expected: dict[str, bytes],
    ) -> Response:
        if path.endswith("/") or not path:
            raise BadRequest("PUT needs a file path")
        target = await asyncio.to_thread(open_write_target, path, self.policy, create_parents=True)
        check = _checker(request)
        try:
            check(await asyncio.to_thread(current, target))  # refuse before reading the body
            write = await asyncio.to_thread(self._begin, target, extra_algorithms(expected))
            try:
                await stream_body(chunks, write, self.settings.chunk_size)
                verify(write.builder, expected, "the body")
                created, st = await asyncio.to_thread(write.commit, check)
            finally:
                self._end(write)  # not awaited: it must run even when shutdown cancels the task
            entry = await self.async_index.write(self._indexed, write, st, created)
        finally:
            target.close()
        model = entry_model(entry, self.settings.mime_types)
        headers = {"etag": model.etag or "", "location": model.url}
        if entry.sha256 is not None:
            headers["repr-digest"] = format_digest_field({"sha-256": entry.sha256})
        if created:
            return JSONResponse(model.model_dump(mode="json"), status_code=201, headers=headers)
        return Response(status_code=204, headers=headers)

    async def _post(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        content_type: str | None,
        expected: dict[str, bytes],
    ) -> Response:
        if path and not path.endswith("/"):
            raise BadRequest("POST uploads go to a directory URL ending with '/'")
        boundary = multipart_boundary(content_type)
        directory = await asyncio.to_thread(open_write_target, path, self.policy, create_parents=True)
        upload = MultipartUpload(
            boundary,
            lambda name, extra: self._begin(self._child(directory, name), extra),
            self.settings.chunk_size,
        )
        whole = DigestBuilder(extra=extra_algorithms(expected)) if expected else None
        try:
            try:
                await upload.feed(chunks if whole is None else hashed(chunks, whole))
                if not upload.files:
                    raise BadRequest("no file parts in the form")
                if whole is not None:
                    verify(whole, expected, "the form data")
                for write, part_expected in zip(upload.files, upload.expected, strict=True):
                    verify(write.builder, part_expected, f"the file part {write.target.name!r}")
                # All parts arrived: only now do they replace what was there, all or none.
                results = await asyncio.to_thread(commit_all, upload.files, _checker(RequestConditions()))
            finally:
                for write in upload.files:
                    self._end(write)  # not awaited: it must run even when shutdown cancels the task
            entries = [
                await self.async_index.write(self._indexed, w, st, created)
                for w, (created, st) in zip(upload.files, results, strict=True)
            ]
        finally:
            directory.close()
        models = [entry_model(e, self.settings.mime_types).model_dump(mode="json") for e in entries]
        return JSONResponse({"entries": models}, status_code=201)

    def _delete(self, path: str, request: RequestConditions) -> str:
        """Delete on disk; returns the path for the index to forget."""
        if not path.strip("/"):
            raise Conflict("the root cannot be deleted")
        target = open_write_target(path.rstrip("/"), self.policy, create_parents=False)
        try:
            delete(target, _checker(request), directory=path.endswith("/"))
        finally:
            target.close()
        return target.path

    # -- blocking steps, run in worker threads (`_indexed`: the index's writer thread) ----------

    def _child(self, directory: WriteTarget, name: str) -> WriteTarget:
        """The target of a form's file part, refused before its bytes are read if unstorable."""
        target = child_target(directory, name, self.policy)
        reason = too_long(self.policy.root, target.path)
        if reason is not None:
            raise BadRequest(f"a file part's name: {reason}")
        return target

    def _begin(self, target: WriteTarget, extra: tuple[str, ...] = ()) -> AtomicWrite:
        # The whole-file digest only: piece hashes would double the hashing an upload waits for.
        write = AtomicWrite(target, fsync=self.settings.fsync, builder=DigestBuilder(None, extra))
        write.open()
        try:
            self.async_index.call(self.index.begin_upload, write.temp_path)
        except BaseException:
            write.abort()  # unrecorded, a crash would leave it behind for good
            raise
        return write

    def _end(self, write: AtomicWrite) -> None:
        """On the loop, without awaiting: it must run even when shutdown cancels the task. The
        index write is queued for the writer thread, so a locked index stalls only that."""
        write.abort()  # a no-op after a commit
        self.async_index.enqueue(self.index.end_upload, write.temp_path)

    def _indexed(self, write: AtomicWrite, st: os.stat_result, created: bool) -> Entry:
        metrics.UPLOADS.labels("created" if created else "replaced").inc()
        metrics.UPLOAD_BYTES.inc(st.st_size)
        target = write.target
        for directory in target.created:
            self.index.sync_path(directory)
        digest = write.builder.result()
        self.index.put_digest(identity(st), digest)  # before the entry: the hasher then skips it
        entry = replace(entry_from_stat(target.path, st), sha256=digest.sha256, crc32=digest.crc32)
        self.index.put(entry)
        return entry
