"""tus 1.0 at /api/uploads/: resumable uploads for any tus client (tuspy, tus-js-client, Uppy).

OPTIONS announces the version and extensions (creation, creation-with-upload,
creation-defer-length, termination, expiration, checksum); POST creates an upload (Upload-Length
or Upload-Defer-Length, Upload-Metadata with `path`, or `filename` and a folder) and answers 201
with its Location; HEAD tells its Upload-Offset; PATCH appends (Upload-Offset must be the
upload's: 409 otherwise; a second PATCH while one runs: 409 too); DELETE terminates it. Every
request but OPTIONS needs the write token, and an upload is visible only to the token that created
it (404 for any other). The bytes, locks and publishing are the core's (app/storage/resumable.py
on a local ROOT, app/storage/bucket_resumable.py on a bucket): the target appears, with its digest
in the index, only once the last byte is in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Protocol

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from app.auth import bearer
from app.errors import FerryError, TooManyRequests, error_response
from app.http import tus
from app.http.conditional import RequestConditions
from app.http.tus import TusError
from app.request import scope_base_url
from app.routes.resumable_draft import draft_uploads, options_router
from app.routes.uploads import PREFIX, UploadCore, conditions_of, let_go, precondition
from app.services import Services
from app.storage.errors import StorageError
from app.storage.resumable import ChecksumMismatch, TooManyUploads, owner_of
from app.storage.upload_store import Resumable
from app.transfer.resumable import append_body
from app.transfer.upload import ClientGone, EarlyBody, body_chunks


class DraftRoutes(Protocol):
    """The IETF draft's handling of an upload resource (app/routes/resumable_draft.py)."""

    async def resource(self, request: Request, upload_id: str) -> Response: ...


def is_draft(headers: Mapping[str, str]) -> bool:
    """A request to an upload resource in the IETF draft's protocol rather than tus's."""
    return "tus-resumable" not in headers and "upload-draft-interop-version" in headers


_WITH_BODY = ("POST", "PATCH")


def _refusal(exc: Exception, method: str) -> Response:
    """The answer to a refused tus request, with Tus-Resumable as every tus answer has; the
    connection closes when a body may be left unread."""
    close = method in _WITH_BODY
    if isinstance(exc, TusError):
        headers = {"connection": "close"} if close else {}
        if exc.status == 412:
            headers["tus-version"] = tus.TUS_VERSION
        response: Response = JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)
    elif isinstance(exc, ChecksumMismatch):
        response = JSONResponse({"detail": exc.detail}, status_code=tus.CHECKSUM_MISMATCH)
    elif isinstance(exc, TooManyUploads):
        response = error_response(TooManyRequests(exc.detail), close=close)
    else:
        assert isinstance(exc, FerryError | StorageError)
        response = error_response(exc, close=close)
    response.headers["tus-resumable"] = tus.TUS_VERSION
    return response


class TusRoutes:
    """The handlers, over one app's services and its resumable-upload core."""

    def __init__(self, services: Services, core: UploadCore, draft: DraftRoutes | None = None) -> None:
        self.services = services
        self.settings = services.settings
        self.core = core
        self.draft = draft

    def _owner(self, headers: Mapping[str, str]) -> str:
        """The write token's holder (401 otherwise, 405 while writes are off), as its owner key."""
        gate = self.services.gate
        authorization = headers.get("authorization")
        gate.write(gate.token(authorization))
        token = bearer(authorization)
        assert token is not None
        return owner_of(token)

    def _headers(self, upload: Resumable) -> dict[str, str]:
        return {
            "tus-resumable": tus.TUS_VERSION,
            "upload-offset": str(upload.offset),
            "upload-expires": tus.format_expires(upload.expires),
            "cache-control": "no-store",
        }

    async def handle(self, request: Request, upload_id: str | None) -> Response:
        method = request.method
        if self.draft is not None and upload_id is not None and is_draft(request.headers):
            return await self.draft.resource(request, upload_id)
        try:
            if method == "OPTIONS":
                return Response(status_code=204, headers=tus.options_headers(self.settings.max_upload_size))
            tus.check_resumable(request.headers.get("tus-resumable"))
            owner = self._owner(request.headers)
            if upload_id is None:
                if method != "POST":
                    return Response(status_code=405, headers={"allow": "OPTIONS, POST"})
                return await self._create(request, owner)
            upload = await self.core.find(upload_id, owner)
            if method == "HEAD":
                return self._head(upload)
            if method == "PATCH":
                return await self._patch(request, upload)
            await self.core.terminate(upload)
            return Response(status_code=204, headers={"tus-resumable": tus.TUS_VERSION})
        except ClientGone:
            return Response(status_code=400)  # nobody is left to read it
        except (TusError, FerryError, StorageError, ChecksumMismatch, TooManyUploads) as exc:
            return _refusal(exc, method)

    def _head(self, upload: Resumable) -> Response:
        headers = self._headers(upload)
        if upload.length is None:
            headers["upload-defer-length"] = "1"
        else:
            headers["upload-length"] = str(upload.length)
        if upload.metadata.get("tus"):
            headers["upload-metadata"] = upload.metadata["tus"]
        return Response(status_code=200, headers=headers)

    async def _create(self, request: Request, owner: str) -> Response:
        fields = request.headers
        length = tus.parse_creation(fields.get("upload-length"), fields.get("upload-defer-length"))
        tus.check_length(length, 0, self.settings.max_upload_size)
        raw = fields.get("upload-metadata") or ""
        path = tus.target_path(tus.parse_metadata(raw))
        kept = {"tus": raw.strip()}
        for name in ("if-match", "if-none-match"):
            if name in fields:
                kept[name] = fields[name]
        conditions = RequestConditions(if_match=kept.get("if-match"), if_none_match=kept.get("if-none-match"))
        max_size = self.settings.max_upload_size
        check = precondition(self.core, conditions)
        upload = await self.core.create(path, length, owner, kept, check, max_size)
        with_body = fields.get("content-type") is not None  # creation-with-upload
        if with_body or length == 0:  # creation-with-upload; an empty upload is complete at once
            if with_body:
                tus.check_patch(fields.get("content-type"))
            upload = await self._append(request, upload, tus.parse_checksum(fields.get("upload-checksum")))
        location = f"{scope_base_url(request.scope, self.settings.public_url)}{PREFIX}/{upload.id}"
        return Response(status_code=201, headers={**self._headers(upload), "location": location})

    async def _patch(self, request: Request, upload: Resumable) -> Response:
        fields = request.headers
        tus.check_patch(fields.get("content-type"))
        given = tus.parse_integer(fields.get("upload-offset"), "Upload-Offset")
        declared = tus.parse_integer(fields.get("upload-length"), "Upload-Length")
        checksum = tus.parse_checksum(fields.get("upload-checksum"))
        tus.check_offset(given, upload.offset)  # before taking the lock: a stale client is told at once
        upload = await self._append(request, upload, checksum, declared, given)
        return Response(status_code=204, headers=self._headers(upload))

    async def _append(
        self,
        request: Request,
        upload: Resumable,
        checksum: tuple[str, bytes] | None,
        declared: int | None = None,
        given: int | None = 0,
    ) -> Resumable:
        """Append the request's body under the upload's lock; publish it once complete."""
        self._check_room(request, upload, None)  # refused before a byte of it is read
        with EarlyBody(request.receive) as body:  # the body flows while the upload's file is opened
            append = await self.core.append(upload)
            try:
                tus.check_offset(given, append.size)  # what the lock holder sees is the truth
                if declared is not None:
                    tus.check_length(declared, append.size, self.settings.max_upload_size)
                    await self.core.declare(append, declared)
                room = self._check_room(request, append.upload, declared, append.size)
                async with contextlib.aclosing(
                    body_chunks(body.receive, room, self.services.activity)
                ) as chunks:
                    await append_body(self.core, append, chunks, self.settings.chunk_size, checksum)
                if append.upload.length is not None and append.size == append.upload.length:
                    await self.core.complete(append, precondition(self.core, conditions_of(append.upload)))
                appended: Resumable = append.upload
                return appended
            finally:
                await let_go(self.core, append)

    def _check_room(
        self, request: Request, upload: Resumable, declared: int | None, size: int | None = None
    ) -> int:
        """The bytes the upload has left (TusError 413 when the body's length says more)."""
        length = upload.length if upload.length is not None else declared
        stored = upload.offset if size is None else size
        room = (self.settings.max_upload_size if length is None else length) - stored
        sent = request.headers.get("content-length", "")
        if sent.isdigit() and int(sent) > room:
            raise TusError(413, f"the body is longer than the {room} bytes the upload has left")
        return room


def build_router(services: Services) -> APIRouter:
    """The tus routes of one app (a local ROOT or a bucket), and the IETF draft's requests to the
    same upload resources (app/routes/resumable_draft.py)."""
    draft = draft_uploads(services)
    core = draft.core
    routes = TusRoutes(services, core, draft)
    router = APIRouter(tags=["uploads"])
    router.include_router(options_router(draft))

    async def endpoint(request: Request) -> Response:
        """tus 1.0 creation (POST) and the server's capabilities (OPTIONS)."""
        return await routes.handle(request, None)

    async def upload(request: Request, upload_id: str) -> Response:
        """One tus upload: HEAD (its offset), PATCH (append), DELETE (terminate)."""
        return await routes.handle(request, upload_id)

    # Not in /openapi.json: tus is a protocol of header fields, which the schema cannot describe
    # (the README's "Resumable uploads" does).
    for path in (PREFIX, PREFIX + "/"):
        router.add_api_route(path, endpoint, methods=["OPTIONS", "POST"], include_in_schema=False)
    methods = ["HEAD", "PATCH", "DELETE", "OPTIONS"]
    router.add_api_route(PREFIX + "/{upload_id}", upload, methods=methods, include_in_schema=False)
    return router
