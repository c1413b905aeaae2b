"""The files that ship inside the package for the HTML pages: templates, CSS, JS and an icon.

Only the names in `STATIC` are ever served, so a request can never reach another file.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from string import Template

STATIC_PREFIX = "_ferry/static/"
STATIC: dict[str, str] = {
    "ferry.css": "text/css; charset=utf-8",
    "ferry.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@cache
def static_bytes(name: str) -> bytes:
    """The bytes of a shipped static file; `name` must be a key of STATIC."""
    if name not in STATIC:
        raise KeyError(name)
    return resources.files("app.views").joinpath("static", name).read_bytes()


@cache
def static_version(name: str) -> str:
    """A short digest of the file, for cache-busting URLs and the ETag."""
    return hashlib.sha256(static_bytes(name)).hexdigest()[:12]


def static_href(name: str, *, up: str) -> str:
    """A relative link to a static file from a page `up` ('../' repeated) below the site root."""
    return f"{up}{STATIC_PREFIX}{name}?v={static_version(name)}"


@cache
def template(name: str) -> Template:
    return Template(resources.files("app.views").joinpath("templates", name).read_text("utf-8"))
