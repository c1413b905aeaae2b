"""Cross-origin access, off unless FERRY_CORS_ORIGINS names the origins allowed (or ``*``).

Downloads need more than Access-Control-Allow-Origin to be useful from a page: the Range and
If-* request headers must pass a preflight, and Content-Range, Content-Disposition and ETag must
be readable by the script.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Message, Scope, Send

from app.request import first_field

_EXPOSE = b"Content-Length, Content-Range, Content-Disposition, ETag, Last-Modified, Accept-Ranges"
_ALLOW_HEADERS = "Range, If-Range, If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since, "
_ALLOW_HEADERS += "Authorization, Content-Type"
# Resumable uploads (tus, /api/uploads/): a page's client sends and reads these.
_EXPOSE += b", Location, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm"
_EXPOSE += b", Upload-Offset, Upload-Length, Upload-Expires, Upload-Metadata, Upload-Defer-Length"
_ALLOW_HEADERS += ", Tus-Resumable, Upload-Length, Upload-Defer-Length, Upload-Metadata, Upload-Offset"
_ALLOW_HEADERS += ", Upload-Checksum"
# The IETF resumable-upload draft (PUT/POST /files/ with Upload-Complete, then /api/uploads/).
_EXPOSE += b", Upload-Complete, Upload-Limit, Upload-Draft-Interop-Version, Accept-Patch, Repr-Digest"
_ALLOW_HEADERS += ", Upload-Complete, Upload-Draft-Interop-Version, Content-Digest, Repr-Digest"
_ALLOW_HEADERS += ", Content-Disposition"


class Cors:
    def __init__(self, origins: list[str], *, writes: bool) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.encode() for o in origins)
        self.methods = "GET, HEAD, PUT, POST, PATCH, DELETE" if writes else "GET, HEAD"

    def origin(self, scope: Scope) -> bytes | None:
        """The request's Origin if it is allowed, else None."""
        found = first_field(scope["headers"], b"origin")
        if found is None:
            return None
        origin = found.encode("latin-1")
        return origin if self.any or origin in self.origins else None

    def preflight(self, scope: Scope) -> Response | None:
        """The answer to a CORS preflight (OPTIONS with Access-Control-Request-Method), if it is one."""
        if scope["method"] != "OPTIONS":
            return None
        origin = self.origin(scope)
        if origin is None or first_field(scope["headers"], b"access-control-request-method") is None:
            return None
        return Response(
            status_code=204,
            headers={
                "access-control-allow-origin": "*" if self.any else origin.decode("latin-1"),
                "access-control-allow-methods": self.methods,
                "access-control-allow-headers": _ALLOW_HEADERS,
                "access-control-max-age": "600",
                "vary": "Origin",
            },
        )

    def wrap(self, scope: Scope, send: Send) -> Send:
        """`send` with the CORS response headers added for an allowed origin."""
        origin = self.origin(scope)
        if origin is None:
            return send
        allow = b"*" if self.any else origin

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"access-control-allow-origin", allow),
                    (b"access-control-expose-headers", _EXPOSE),
                    (b"vary", b"Origin"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        return send_with_cors
