from __future__ import annotations

import os

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from app import metrics
from app.request import PREFIX
from app.services import services_of
from app.storage.errors import Unreachable

router = APIRouter()


@router.get(
    "/healthz",
    responses={
        200: {"description": 'ready: {"status": "ok"}; or {"status": "degraded", "index": "rebuilding"}'},
        503: {"description": "the storage root is missing, or the bucket does not answer"},
    },
)
async def healthz(request: Request) -> JSONResponse:
    """200 once ready to serve; 503 while the storage root is not there (an unmounted volume), or
    while the bucket does not answer a listing (checked at most once a second).

    While a damaged index is rebuilt, downloads, listings and writes work and search answers 503:
    still 200 (a restart would only rebuild again), but "degraded", so a look tells the truth."""
    services = services_of(request)
    if services.bucket is not None:
        try:
            await services.bucket.reachable()
        except Unreachable as exc:
            return JSONResponse({"status": "unavailable", "detail": exc.detail}, status_code=503)
    elif not os.path.isdir(services.settings.root):
        return JSONResponse(
            {"status": "unavailable", "detail": "the storage root is missing"}, status_code=503
        )
    if services.index.rebuilding:
        return JSONResponse({"status": "degraded", "index": "rebuilding"})
    return JSONResponse({"status": "ok"})


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse(PREFIX, status_code=302)


@router.api_route(PREFIX.rstrip("/"), methods=["GET", "HEAD"], include_in_schema=False)
async def files_root() -> RedirectResponse:
    return RedirectResponse(PREFIX, status_code=301)
