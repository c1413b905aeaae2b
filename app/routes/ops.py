from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import RedirectResponse, Response

from app import metrics

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/files/", status_code=302)


@router.api_route("/files", methods=["GET", "HEAD"], include_in_schema=False)
async def files_root() -> RedirectResponse:
    return RedirectResponse("/files/", status_code=301)
