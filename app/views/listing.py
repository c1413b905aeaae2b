"""A plain directory listing: HTML whose links `wget -r -np` follows, or JSON.

The storage index (a later issue) replaces the scan here with paginated, sorted index reads.
"""

from __future__ import annotations

import html
import os
import stat
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from app.errors import FerryError, NotFound
from app.storage.paths import PathPolicy, SafePath, resolve


def _entries(directory: SafePath, url_dir: str, policy: PathPolicy) -> list[tuple[str, bool, int]]:
    entries = []
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise NotFound() from exc
    for name in names:
        try:
            safe = resolve(url_dir + name, policy)  # the same gate as downloads
            st = os.stat(safe)
        except (FerryError, OSError, ValueError):
            continue
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            entries.append((name, stat.S_ISDIR(st.st_mode), st.st_size))
    return entries


def _wants_json(request: Request) -> bool:
    return request.query_params.get("format") == "json" or "application/json" in request.headers.get(
        "accept", ""
    )


def listing_response(directory: SafePath, url_dir: str, request: Request, policy: PathPolicy) -> Response:
    entries = _entries(directory, url_dir, policy)
    if _wants_json(request):
        return JSONResponse(
            {
                "path": url_dir,
                "entries": [
                    {"name": n, "type": "dir" if d else "file", "size": None if d else size}
                    for n, d, size in entries
                ],
            }
        )
    title = html.escape("/" + url_dir)
    rows = "\n".join(
        f'<li><a href="{html.escape(quote(n))}{"/" if d else ""}">{html.escape(n)}{"/" if d else ""}</a>'
        f"{'' if d else f' <small>{size} bytes</small>'}</li>"
        for n, d, size in entries
    )
    parent = '<li><a href="../">../</a></li>\n' if url_dir else ""
    body = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Index of {title}</title>'
        f"</head>\n<body><h1>Index of {title}</h1>\n<ul>\n{parent}{rows}\n</ul></body></html>\n"
    )
    return HTMLResponse(body, headers={"x-content-type-options": "nosniff"})
