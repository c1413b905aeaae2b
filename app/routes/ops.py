from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import RedirectResponse

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/files/", status_code=302)


@router.api_route("/files", methods=["GET", "HEAD"], include_in_schema=False)
async def files_root() -> RedirectResponse:
    return RedirectResponse("/files/", status_code=301)
