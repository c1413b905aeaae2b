"""Who may read: FERRY_DOWNLOAD_AUTH (public, token or signed), decided before any file is touched.

Every answer is decided from the request alone (its path, query, Authorization header and client
address), so a missing file and a forbidden one get the same refusal: nothing about what exists
leaks to a caller who may not read it. /healthz, /metrics, the pages' static assets, /openapi.json
and CORS preflights are never gated.

- public: everything may be read.
- token: GET/HEAD under /files/ and the JSON API need ``Authorization: Bearer`` with one of
  FERRY_READ_TOKENS or the write token (else 401 with ``WWW-Authenticate``).
- signed: the same token, or a signed link (app/http/signing.py) covering the path; a link grants
  files and listings, never search or the JSON API. No credentials → 401; a link that is malformed,
  altered, for another path or address, or signed with a key no longer listed → 403; a genuine link
  past its time → 410.

`Gate.authenticate` tells once per request who is asking (`Access`: a token, a signed link, or
anonymous); downloads, listings, the JSON API, writes and link minting each decide from that value.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlencode

from pydantic import SecretStr

from app.errors import Forbidden, Gone, MethodNotAllowed, Unauthorized
from app.http import signing
from app.request import READ_METHODS, FileRequest
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class Token:
    """A request with a valid bearer token: a read token, or the write token (which reads too)."""

    write: bool


@dataclass(frozen=True, slots=True)
class LinkAccess:
    """A request allowed by a signed link: its query parameters, and the directory a prefix covers."""

    query: str  # "expires=…&prefix=…&sig=…", ready to append to a child link
    prefix: str | None  # "/docs/" for a prefix link, else None


@dataclass(frozen=True, slots=True)
class Anonymous:
    """No credentials (or, with downloads public, none that matter)."""


Access = Token | LinkAccess | Anonymous
ANONYMOUS = Anonymous()


def bearer(authorization: str | None) -> bytes | None:
    scheme, _, given = (authorization or "").partition(" ")
    return given.strip().encode() if scheme.lower() == "bearer" and given.strip() else None


def token_matches(given: bytes | None, secrets: Iterable[SecretStr]) -> bool:
    """Constant time per secret, whatever the given token's length or content; every secret is tried."""
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given or b"\0", secret.get_secret_value().encode())
    return given is not None and matched


class Gate:
    """FERRY_DOWNLOAD_AUTH and the write token, applied to one request's `Access`."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.download_auth
        self.writer = [settings.write_token] if settings.write_token else []
        self.readers = [*settings.read_tokens, *self.writer]
        self.keys = [key.get_secret_value().encode() for key in settings.signing_keys]

    @property
    def writes_enabled(self) -> bool:
        return bool(self.writer)

    def token(self, authorization: str | None) -> Token | Anonymous:
        """Who the Authorization header says is asking (every secret compared, in constant time)."""
        given = bearer(authorization)
        if given is None:
            return ANONYMOUS
        write = token_matches(given, self.writer)
        if token_matches(given, self.readers):
            return Token(write=write)
        return ANONYMOUS

    def authenticate(self, request: FileRequest) -> Access:
        """Who asks for this /files/ request: a token, else (for a read, downloads `signed`) the
        signed link it carries, else anonymous. A link that is there but does not hold raises
        (403, or 410 once expired), before any file is looked at."""
        token = self.token(request.headers.get("authorization"))
        if isinstance(token, Token) or self.mode != "signed" or request.method not in READ_METHODS:
            return token
        return self._link(request)

    def _link(self, request: FileRequest) -> LinkAccess | Anonymous:
        params = request.params
        path = "/" + request.path  # the path the request will reach
        verdict = signing.verify(self.keys, path, params, client=request.client, now=int(time.time()))
        if verdict is signing.Verdict.MISSING:
            return ANONYMOUS
        if verdict is signing.Verdict.EXPIRED:
            raise Gone("this link has expired; ask for a new one")
        if verdict is not signing.Verdict.VALID:
            raise Forbidden("this link is not valid for this address")
        if any(name == "q" for name, _ in params):
            raise Forbidden("search needs a bearer token")
        link = [(name, value) for name, value in params if name in signing.PARAMS]
        prefix = dict(link).get("prefix")
        if prefix is None and path.endswith("/") and ("checksums", "all") in params:
            # A link to one folder's listing grants that folder, not the folders below it.
            raise Forbidden("this link covers one folder, not the folders below it; ask for a folder link")
        return LinkAccess(urlencode(link, safe="/"), prefix)

    def read(self, access: Access) -> None:
        """GET/HEAD under /files/: raises unless `access` may read (decided before any file)."""
        if self.mode == "public" or not isinstance(access, Anonymous):
            return
        if self.mode == "token":
            raise Unauthorized("a valid bearer token is required to read")
        raise Unauthorized("a signed link or a bearer token is required to read")

    def api(self, access: Access) -> None:
        """The JSON API and search: a read token unless downloads are public."""
        if self.mode != "public" and not isinstance(access, Token):
            raise Unauthorized("a valid bearer token is required to read")

    def write(self, access: Access) -> None:
        """PUT, POST and DELETE under /files/: the write token (405 while writes are disabled)."""
        if not self.writes_enabled:
            raise MethodNotAllowed()
        if not (isinstance(access, Token) and access.write):
            raise Unauthorized()

    def mint(self, access: Access) -> None:
        """POST /api/sign: the write token."""
        if not (isinstance(access, Token) and access.write):
            raise Unauthorized("minting links needs the write token")


def link_of(access: Access) -> LinkAccess | None:
    """The signed link a request was allowed by, if any (its pages carry it on to their links)."""
    return access if isinstance(access, LinkAccess) else None
