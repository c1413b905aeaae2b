"""Ferry's domain errors and the one place they become HTTP responses.

FerryError               base: carries status, a short detail and extra headers
├── BadRequest           400: a request Ferry cannot make sense of
└── NotFound             404: nothing servable here (including everything the path gate refuses)
"""

from __future__ import annotations

from typing import ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


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


class NotFound(FerryError):
    status = 404
    default_detail = "Not Found"


def error_response(exc: FerryError) -> Response:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


async def handle_ferry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FerryError)
    return error_response(exc)
