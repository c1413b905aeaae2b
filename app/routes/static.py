"""GET/HEAD /_ferry/static/{name}: the CSS, JS and icon the HTML pages use, from the package."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.errors import NotFound
from app.views.assets import STATIC, STATIC_PREFIX, static_bytes, static_version

router = APIRouter()


@router.api_route("/" + STATIC_PREFIX + "{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def static_file(name: str, request: Request) -> Response:
    content_type = STATIC.get(name)  # a fixed set of names: nothing else is reachable
    if content_type is None:
        raise NotFound()
    etag = f'"{static_version(name)}"'
    headers = {
        "cache-control": "public, max-age=86400",
        "etag": etag,
        "x-content-type-options": "nosniff",
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = static_bytes(name)
    if request.method == "HEAD":
        headers["content-length"] = str(len(body))
        return Response(status_code=200, headers=headers, media_type=content_type)
    return Response(body, headers=headers, media_type=content_type)
