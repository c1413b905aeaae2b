"""A file's `?meta4` (its Metalink document) and `?checksums` (its line of a SHA256SUMS file)."""

from __future__ import annotations

from urllib.parse import quote

from starlette.responses import PlainTextResponse, Response

from app import __version__
from app.auth import LinkAccess
from app.http.digests import checksum_line
from app.http.headers import content_disposition
from app.http.metalink import METALINK_TYPE, Mirror, Pieces, metalink_document
from app.request import PREFIX, FileRequest
from app.storage.values import FileDigest

_NOSNIFF = {"x-content-type-options": "nosniff"}


def checksum_file(name: str, digest: FileDigest) -> Response:
    """The file's one SHA256SUMS line, for `sha256sum -c`."""
    headers = {"content-disposition": content_disposition("attachment", name + ".sha256"), **_NOSNIFF}
    return PlainTextResponse(checksum_line(digest.hex, name), headers=headers)


def metalink(
    request: FileRequest,
    name: str,
    size: int,
    digest: FileDigest,
    mirrors: list[str],
    link: LinkAccess | None,
) -> Response:
    """The file's Metalink document: this server's URL first (with the signature this request
    carried), then the mirrors; piece hashes when the index has them."""
    quoted = quote(request.path)
    signed = f"?{link.query}" if link else ""
    urls = [Mirror(f"{request.base_url}{PREFIX}{quoted}{signed}", 1)]
    urls += [Mirror(f"{base}/{quoted}", i) for i, base in enumerate(mirrors, start=2)]
    pieces = Pieces(digest.piece_length, digest.piece_hexes()) if digest.pieces else None
    document = metalink_document(
        name=name, size=size, sha256=digest.hex, urls=urls, pieces=pieces, generator=f"Ferry/{__version__}"
    )
    headers = {"content-disposition": content_disposition("attachment", name + ".meta4"), **_NOSNIFF}
    return Response(document, media_type=METALINK_TYPE, headers=headers)
