"""Ferry's domain errors and the one place they become HTTP responses.

FerryError                  base: carries status (500), a short detail and extra headers
├── BadRequest              400: a request Ferry cannot make sense of (a path, a cursor, a limit)
├── Unauthorized            401: no valid bearer token or signed link where one is required
│                                (with WWW-Authenticate)
├── Forbidden               403: the credentials do not allow this (a link used from another
│                                address or below its folder, search with a link), or the storage
│                                refuses a write
├── NotFound                404: nothing servable here (including everything the path gate refuses)
├── MethodNotAllowed        405: a write while writes are disabled (with Allow)
├── Conflict                409: something in the way of a write or delete, or signing is off
├── Gone                    410: a genuine signed link past its expiry
├── PreconditionFailed      412: a PUT or DELETE whose If-Match, If-None-Match or
│                                If-Unmodified-Since does not hold
├── PayloadTooLarge         413: an upload over FERRY_MAX_UPLOAD_SIZE
├── UriTooLong              414: a path too long for the file system
├── UnsupportedMediaType    415: an upload that is not multipart/form-data (not raised at present)
├── TooManyRequests         429: FERRY_MAX_CONNECTIONS_PER_IP reached (with Retry-After)
├── ServiceUnavailable      503: try again later (with Retry-After): out of descriptors, a file
│                                changing, checksums busy or not computed yet, the index being
│                                rebuilt from the disk (Retry-After: 5)
└── InsufficientStorage     507: no space (or quota) left for the upload

Storage raises its own errors (app/storage/errors.py; `write_refusal` there maps the file system's
refusals of a write by errno class); `http_error` is the one place they become these.
`error_response` is the one function that turns either kind into a response: FastAPI's exception
handler calls it, and so does the one place (app/main.py) that answers for the plain-ASGI routes
under /files/.
"""

from __future__ import annotations

from typing import ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.storage import errors as storage
from app.storage.errors import StorageError


class FerryError(Exception):
    status: ClassVar[int] = 500
    default_detail: ClassVar[str] = "Internal Server Error"

    def __init__(self, detail: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.detail = detail or self.default_detail
        self.headers = headers or {}
        super().__init__(self.detail)


class BadRequest(FerryError):
    status = 400
    default_detail = "Bad Request"


class Unauthorized(FerryError):
    status = 401
    default_detail = "a valid bearer token is required"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, {"www-authenticate": 'Bearer realm="ferry"'})


class Forbidden(FerryError):
    status = 403
    default_detail = "Forbidden"


class NotFound(FerryError):
    status = 404
    default_detail = "Not Found"


class MethodNotAllowed(FerryError):
    status = 405
    default_detail = "writes are disabled (FERRY_WRITE_TOKEN is not set)"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, {"allow": "GET, HEAD"})


class Conflict(FerryError):
    status = 409
    default_detail = "Conflict"


class Gone(FerryError):
    status = 410
    default_detail = "Gone"


class PreconditionFailed(FerryError):
    status = 412
    default_detail = "Precondition Failed"


class PayloadTooLarge(FerryError):
    status = 413
    default_detail = "the body is larger than FERRY_MAX_UPLOAD_SIZE"


class UriTooLong(FerryError):
    status = 414
    default_detail = "the path is too long for the file system"


class UnsupportedMediaType(FerryError):
    status = 415
    default_detail = "expected multipart/form-data"


class TooManyRequests(FerryError):
    status = 429
    default_detail = "too many concurrent downloads from this address"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, {"retry-after": "5"})


class ServiceUnavailable(FerryError):
    status = 503
    default_detail = "temporarily out of resources; try again"

    def __init__(self, detail: str | None = None, retry_after: int = 1) -> None:
        super().__init__(detail, {"retry-after": str(retry_after)})


class InsufficientStorage(FerryError):
    status = 507
    default_detail = "not enough space to store the upload"


def http_error(exc: StorageError) -> FerryError:
    """Storage's error as Ferry answers it (details and Retry-After included)."""
    detail = exc.detail
    match exc:
        case storage.InvalidInput():
            return BadRequest(detail)
        case storage.NotServable():
            return NotFound(detail)
        case storage.InTheWay():
            return Conflict(detail)
        case storage.WriteRefused():
            return Forbidden(detail)
        case storage.NameTooLong():
            return UriTooLong(detail)
        case storage.NoSpace():
            return InsufficientStorage(detail)
        case storage.OutOfDescriptors():
            return ServiceUnavailable(detail)
        case storage.IndexRebuilding():
            return ServiceUnavailable(detail, retry_after=5)
        case storage.Changed():
            return PreconditionFailed(detail)
        case storage.Unreachable():
            return ServiceUnavailable(detail, retry_after=5)
    return FerryError(detail)


def error_response(exc: FerryError | StorageError, *, close: bool = False) -> Response:
    """The JSON answer to `exc`; `close`: the connection closes after it (a refused upload's body
    may be unread, and is not read to its end)."""
    if isinstance(exc, StorageError):
        exc = http_error(exc)
    headers = {**exc.headers, "connection": "close"} if close else exc.headers
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)


async def handle_ferry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FerryError | StorageError)
    return error_response(exc)
