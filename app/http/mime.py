"""Content-Type from a file name. Pure: no I/O (the built-in table, not the host's mime.types)."""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping

DEFAULT_TYPE = "application/octet-stream"

# Types a browser would run as a document of the serving origin: always sent as attachments.
ACTIVE_TYPES = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml", "text/xsl"}
)

# Built-in table only, so every machine answers the same.
_TABLE = mimetypes.MimeTypes(filenames=())

# A compressed file is served as what it is, never with Content-Encoding, which would make
# browsers and curl --compressed unpack it behind the user's back.
_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/x-brotli",
}


def content_type_for(name: str, overrides: Mapping[str, str]) -> str:
    """The Content-Type for a file name; `overrides` maps lower-case extensions (".log") to types."""
    dot = name.rfind(".")
    if dot > 0:
        override = overrides.get(name[dot:].lower())
        if override is not None:
            return override
    mime, encoding = _guess(name)
    if mime is None and encoding is None:
        # mimetypes matches encoding suffixes case-sensitively (".GZ" is not ".gz"); ".Z" stays
        # compress because the exact name is tried first.
        mime, encoding = _guess(name.lower())
    if encoding is not None:
        return _ENCODING_TYPES.get(encoding, DEFAULT_TYPE)
    return mime or DEFAULT_TYPE


def _guess(name: str) -> tuple[str | None, str | None]:
    # guess_type() takes a URL: "./" keeps a file named "data:text/html,x" from being read as a
    # data: URL that chooses its own type.
    return _TABLE.guess_type("./" + name, strict=False)
