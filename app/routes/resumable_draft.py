"""The IETF httpbis "Resumable Uploads for HTTP" draft, on the resumable-upload core tus uses.

A `PUT /files/{path}` or `POST /files/{dir}/` carrying `Upload-Complete` (and the write token, and
`Upload-Draft-Interop-Version`) creates an upload resource under /api/uploads/ and appends its body
as it arrives: with `Upload-Complete: ?1` and the whole body it is a plain atomic upload that is also
resumable if the connection is cut; with `?0` the answer is 201 with the resource's Location. The
POST's file name comes from Content-Disposition (or, for tus-js-client, `filename` in
Upload-Metadata). On the resource: HEAD tells Upload-Offset, Upload-Complete, Upload-Length and
Upload-Limit; PATCH (application/partial-upload, Upload-Offset) appends, completing the upload with
`Upload-Complete: ?1`; DELETE cancels; OPTIONS (there and on /files/) announces Upload-Limit and
Accept-Patch. The final answer is the PUT's (or the POST's), with `Upload-Complete: ?1`.

No `104 (Upload Resumption Supported)` interim answer is sent (uvicorn cannot send one from ASGI):
a client resumes an upload it created with `?0` (the Location comes in the 201), or, for a cut
`?1` creation, by the Location it learns no other way than by creating with `?0` first.

Content-Digest checks the body of one request (bytes that do not match are discarded, 400);
Repr-Digest (sha-256) given at creation checks the whole file at completion (a mismatch ends the
upload). Completed uploads are remembered for HEAD and PATCH (400 completed-upload) while the
process runs.

Long because: creation, the resource's methods and the append they share are one protocol's
steps over the same upload state, kept together as tus's are.
"""

from __future__ import annotations

import contextlib
import hmac
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

from app.auth import bearer
from app.errors import FerryError, PayloadTooLarge, TooManyRequests, Unauthorized, error_response
from app.http import resumable_draft as draft
from app.http.conditional import RequestConditions
from app.http.digests import ALGORITHMS, DigestFieldError, format_digest_field, parse_digest_field
from app.http.resumable_draft import DraftError
from app.http.tus import TusError, parse_metadata
from app.request import FileRequest
from app.routes.uploads import PREFIX, UploadCore, conditions_of, let_go, make_core, precondition
from app.services import Services
from app.storage.errors import StorageError
from app.storage.resumable import ChecksumMismatch, TooManyUploads, owner_of
from app.storage.upload_store import Resumable
from app.storage.values import Entry, FileDigest
from app.transfer.resumable import append_body
from app.transfer.upload import ClientGone, EarlyBody, body_chunks
from app.views.entries import entry_model

# By the app's Services: an entry lives as long as its DraftUploads, which holds the Services (so
# the id is not reused meanwhile).
_DRAFTS: weakref.WeakValueDictionary[int, DraftUploads] = weakref.WeakValueDictionary()
_REMEMBERED = 1024  # completed uploads kept for HEAD (per process)
_REFUSED = (DraftError, TusError, FerryError, StorageError, ChecksumMismatch, TooManyUploads)


def wants_draft(headers: Mapping[str, str]) -> bool:
    """A PUT or POST under /files/ that asks for a resumable upload (a valid Upload-Complete)."""
    return draft.parse_boolean(headers.get("upload-complete")) is not None


def _content_digest(fields: Mapping[str, str]) -> tuple[str, bytes] | None:
    """This request's Content-Digest as (hashlib name, digest): sha-256 preferred, else sha-512."""
    value = fields.get("content-digest")
    if value is None:
        return None
    try:
        found = parse_digest_field(value)
    except DigestFieldError as exc:
        raise DraftError(400, f"content-digest: {exc}") from exc
    for algorithm in ("sha-256", "sha-512"):
        if algorithm in found:
            return ALGORITHMS[algorithm], found[algorithm]
    raise DraftError(400, "content-digest: no supported algorithm (sha-256, sha-512)")


def _repr_digest(fields: Mapping[str, str]) -> str | None:
    """The whole file's SHA-256 the client gives in Repr-Digest (hex), to check at completion."""
    value = fields.get("repr-digest")
    if value is None:
        return None
    try:
        found = parse_digest_field(value)
    except DigestFieldError as exc:
        raise DraftError(400, f"repr-digest: {exc}") from exc
    if "sha-256" not in found:
        raise DraftError(400, "repr-digest: a resumable upload is checked by its sha-256")
    return found["sha-256"].hex()


class DraftUploads:
    """Creation (from Writes), and HEAD, PATCH, DELETE, OPTIONS on the upload resources."""

    def __init__(self, services: Services, core: UploadCore) -> None:
        self.services = services
        self.settings = services.settings
        self.core = core
        self._completed: OrderedDict[str, tuple[str, int]] = OrderedDict()  # id → (owner, length)

    # -- what every answer says ------------------------------------------------------------------

    def limits(self, upload: Resumable | None = None) -> str:
        if upload is None:
            age = int(self.settings.upload_expiry)
        else:
            age = max(0, int(upload.expires - time.time()))
        return draft.format_limit({"max-size": self.settings.max_upload_size, "max-age": age})

    def _state(self, upload: Resumable) -> dict[str, str]:
        headers = {
            "upload-complete": "?0",
            "upload-offset": str(upload.offset),
            "upload-limit": self.limits(upload),
            "upload-draft-interop-version": str(draft.INTEROP_VERSION),
        }
        if upload.length is not None:
            headers["upload-length"] = str(upload.length)
        return headers

    def _refusal(self, exc: Exception, with_body: bool, headers: dict[str, str]) -> Response:
        """A refused draft request; the connection closes when a body may be left unread."""
        close = {"connection": "close"} if with_body else {}
        if isinstance(exc, DraftError):
            kind = draft.PROBLEM_JSON if exc.problem is not None else "application/json"
            response: Response = JSONResponse(
                exc.document(), status_code=exc.status, headers={**headers, **close}, media_type=kind
            )
        elif isinstance(exc, TusError):
            response = JSONResponse(
                {"detail": exc.detail}, status_code=exc.status, headers={**headers, **close}
            )
        elif isinstance(exc, ChecksumMismatch):
            response = JSONResponse({"detail": exc.detail}, status_code=400, headers=headers)
        elif isinstance(exc, TooManyUploads):
            response = error_response(TooManyRequests(exc.detail), close=with_body)
        else:
            assert isinstance(exc, FerryError | StorageError)
            response = error_response(exc, close=with_body)
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("upload-complete", "?0")
        if response.status_code == 413:
            response.headers["upload-limit"] = self.limits()
        return response

    def _owner(self, authorization: str | None) -> str:
        """The write token's holder (401 otherwise, 405 while writes are off), as its owner key."""
        gate = self.services.gate
        gate.write(gate.token(authorization))
        token = bearer(authorization)
        if token is None:
            raise Unauthorized()
        return owner_of(token)

    # -- creation: PUT /files/{path}, POST /files/{dir}/ ------------------------------------------

    async def create(self, request: FileRequest, receive: Receive) -> Response | None:
        """A PUT or POST with Upload-Complete, its write token already checked (None when the
        client went away: the bytes that came are kept for it to resume)."""
        fields = request.headers
        headers: dict[str, str] = {}
        try:
            draft.check_interop(fields.get("upload-draft-interop-version"))
            owner = self._owner(fields.get("authorization"))
            complete = draft.parse_boolean(fields.get("upload-complete")) is True
            path = self._target(request)
            length = draft.request_length(
                fields.get("upload-length"), complete, fields.get("content-length"), 0
            )
            if length is not None and length > self.settings.max_upload_size:
                raise PayloadTooLarge("the upload is larger than the maximum upload size")
            checksum = _content_digest(fields)
            kept = {"draft": request.method}
            for name in ("if-match", "if-none-match"):
                if name in fields:
                    kept[name] = fields[name]
            expected = _repr_digest(fields)
            if expected is not None:
                kept["repr-sha-256"] = expected
            conditions = RequestConditions(
                if_match=kept.get("if-match"), if_none_match=kept.get("if-none-match")
            )
            max_size = self.settings.max_upload_size
            check = precondition(self.core, conditions)
            upload = await self.core.create(path, length, owner, kept, check, max_size)
            headers["location"] = f"{request.base_url}{PREFIX}/{upload.id}"
            return await self._append(request.headers, receive, upload, complete, checksum, None, headers)
        except ClientGone:
            return None
        except _REFUSED as exc:
            return self._refusal(exc, True, headers)

    def _target(self, request: FileRequest) -> str:
        path = request.path
        if request.method == "PUT":
            if not path or path.endswith("/"):
                raise DraftError(400, "PUT needs a file path")
            return path
        if path and not path.endswith("/"):
            raise DraftError(400, "POST uploads go to a directory URL ending with '/'")
        name = draft.disposition_filename(request.headers.get("content-disposition"))
        if name is None:
            metadata = parse_metadata(request.headers.get("upload-metadata"))  # tus-js-client's
            try:
                name = draft.disposition_filename(f'filename="{metadata.get("filename", b"").decode()}"')
            except UnicodeDecodeError:
                name = None
        if name is None:
            raise DraftError(400, "a resumable POST names its file in Content-Disposition (filename=)")
        return path + name

    # -- the upload resource: /api/uploads/{id} -----------------------------------------------------

    async def resource(self, request: Request, upload_id: str) -> Response:
        """HEAD, PATCH, DELETE or OPTIONS on an upload resource, in the draft's protocol."""
        method = request.method
        with_body = method == "PATCH"
        headers: dict[str, str] = {}  # the upload's state before the request
        learnt: dict[str, str] = {}  # what the append tells of it since
        try:
            if method == "OPTIONS":
                return self.options()
            draft.check_interop(request.headers.get("upload-draft-interop-version"))
            owner = self._owner(request.headers.get("authorization"))
            done = self._completed.get(upload_id)
            if done is not None and done[0] == owner:
                if method == "HEAD":
                    return Response(status_code=204, headers=self._done_headers(done[1]))
                if method == "PATCH":
                    raise draft.completed()
                return Response(status_code=204)
            upload = await self.core.find(upload_id, owner)
            headers = self._state(upload)
            if method == "HEAD":
                return Response(status_code=204, headers={**headers, "cache-control": "no-store"})
            if method == "DELETE":
                await self.core.terminate(upload)
                return Response(status_code=204)
            if method != "PATCH":
                return Response(status_code=405, headers={"allow": "HEAD, PATCH, DELETE, OPTIONS"})
            fields = request.headers
            draft.check_partial(fields.get("content-type"))
            complete = draft.parse_boolean(fields.get("upload-complete"))
            if complete is None:
                raise DraftError(400, "an append needs Upload-Complete (?0 or ?1)")
            given = draft.parse_integer(fields.get("upload-offset"))
            draft.check_offset(given, upload.offset)  # before taking the lock: told at once
            checksum = _content_digest(fields)
            return await self._append(fields, request.receive, upload, complete, checksum, given, learnt)
        except ClientGone:
            return Response(status_code=400)  # nobody is left to read it
        except _REFUSED as exc:
            return self._refusal(exc, with_body, {**headers, **learnt})

    def _done_headers(self, length: int) -> dict[str, str]:
        return {
            "upload-complete": "?1",
            "upload-offset": str(length),
            "upload-length": str(length),
            "upload-limit": self.limits(),
            "cache-control": "no-store",
        }

    def options(self) -> Response:
        """What the draft asks OPTIONS to say: the limits, and the PATCH body type."""
        if not self.services.gate.writes_enabled:
            return Response(status_code=204, headers={"allow": "OPTIONS, GET, HEAD"})
        return Response(
            status_code=204,
            headers={
                "allow": "OPTIONS, GET, HEAD, PUT, POST, PATCH, DELETE",
                "accept-patch": draft.PARTIAL_UPLOAD,
                "upload-limit": self.limits(),
                "upload-draft-interop-version": str(draft.INTEROP_VERSION),
            },
        )

    # -- appending ---------------------------------------------------------------------------------

    async def _append(
        self,
        fields: Mapping[str, str],
        receive: Receive,
        upload: Resumable,
        complete: bool,
        checksum: tuple[str, bytes] | None,
        given: int | None,
        headers: dict[str, str],
    ) -> Response:
        """Append the body under the upload's lock; publish it when the request says it completes
        the upload. `headers`: what the answer carries besides the upload's state (Location)."""
        self._room(fields, upload, upload.offset, complete)  # refused before a byte of it is sent
        with EarlyBody(receive) as body:  # the body flows while the upload's file is opened and locked
            append = await self.core.append(upload)
            try:
                if given is not None:
                    draft.check_offset(given, append.size)  # what the lock holder sees is the truth
                indicated = self._room(fields, append.upload, append.size, complete)
                if indicated is not None and append.upload.length is None:
                    await self.core.declare(append, indicated)
                length = append.upload.length
                room = (self.settings.max_upload_size if length is None else length) - append.size
                async with contextlib.aclosing(
                    body_chunks(body.receive, room, self.services.activity)
                ) as chunks:
                    try:
                        await append_body(self.core, append, chunks, self.settings.chunk_size, checksum)
                    except ChecksumMismatch:
                        headers.update(self._state(append.upload))
                        raise
                if not complete:
                    state = {**self._state(append.upload), **headers}
                    return Response(status_code=201 if given is None else 204, headers=state)
                if append.upload.length is None:
                    await self.core.declare(append, append.size)
                elif append.size != append.upload.length:
                    headers.update(self._state(append.upload))
                    raise draft.inconsistent(
                        f"the upload is {append.upload.length} bytes long; "
                        f"{append.size} arrived before it was said complete"
                    )
                meta = append.upload.metadata
                try:
                    created, entry = await self.core.complete(
                        append,
                        precondition(self.core, conditions_of(append.upload)),
                        _repr_check(meta.get("repr-sha-256")),
                    )
                except Exception:
                    # Whatever stops the publishing ends the upload (its bytes are dropped): the
                    # answer is its final one, and HEAD says it is complete from now on.
                    self._remember(append.upload, append.size)
                    headers["upload-complete"] = "?1"
                    raise
                self._remember(append.upload, entry.size)
                return self._published(meta.get("draft", "PUT"), created, entry)
            finally:
                await let_go(self.core, append)

    def _room(self, fields: Mapping[str, str], upload: Resumable, size: int, complete: bool) -> int | None:
        """The upload's length this request indicates (None: not said), checked against what
        the upload already knows and has, and the body's length against the room left."""
        indicated = draft.request_length(
            fields.get("upload-length"), complete, fields.get("content-length"), size
        )
        draft.check_known_length(upload.length, indicated, size)
        max_size = self.settings.max_upload_size
        if indicated is not None and indicated > max_size:
            raise PayloadTooLarge("the upload is larger than the maximum upload size")
        length = upload.length if upload.length is not None else indicated
        room = (max_size if length is None else length) - size
        sent = fields.get("content-length", "")
        if sent.isdigit() and int(sent) > room:
            raise PayloadTooLarge(f"the body is longer than the {room} bytes the upload has left")
        return indicated

    def _remember(self, upload: Resumable, length: int) -> None:
        self._completed[upload.id] = (upload.owner, length)
        while len(self._completed) > _REMEMBERED:
            self._completed.popitem(last=False)

    def _published(self, method: str, created: bool, entry: Entry) -> Response:
        """The answer the PUT (or the POST) would have given, with Upload-Complete: ?1."""
        model = entry_model(entry, self.settings.mime_types)
        headers = {
            "etag": model.etag or "",
            "location": model.url,
            "upload-complete": "?1",
            "upload-offset": str(entry.size),
        }
        if entry.sha256 is not None:
            headers["repr-digest"] = format_digest_field({"sha-256": entry.sha256})
        body = model.model_dump(mode="json")
        if method == "POST":
            return JSONResponse({"entries": [body]}, status_code=201, headers=headers)
        if created:
            return JSONResponse(body, status_code=201, headers=headers)
        return Response(status_code=204, headers=headers)


def _repr_check(expected: str | None) -> Callable[[FileDigest], None] | None:
    """The check of the whole file against the client's Repr-Digest (None: nothing to check)."""
    if expected is None:
        return None

    def verify(digest: FileDigest) -> None:
        if not hmac.compare_digest(digest.sha256.hex(), expected):
            raise DraftError(400, "the upload does not match its Repr-Digest; it was discarded")

    return verify


def draft_uploads(services: Services) -> DraftUploads:
    """The one DraftUploads of an app: creation (app/routes/writes.py) and the upload resources
    (app/routes/tus.py) share what it remembers."""
    found = _DRAFTS.get(id(services))
    if found is None:
        found = DraftUploads(services, make_core(services))
        _DRAFTS[id(services)] = found
    return found


def options_router(draft_uploads: DraftUploads) -> APIRouter:
    """OPTIONS /files/{path}: whether (and within which limits) an upload there can be resumed."""
    router = APIRouter(tags=["uploads"])

    async def options(request: Request, path: str = "") -> Response:
        return draft_uploads.options()

    for route in ("/files/", "/files/{path:path}"):
        router.add_api_route(route, options, methods=["OPTIONS"], include_in_schema=False)
    return router
