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
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from pydantic import SecretStr
from starlette.types import Scope

from app.errors import Forbidden, Gone, Unauthorized
from app.http import signing
from app.settings import Settings
from app.storage.paths import normal_url_path

PREFIX = "/files"
# The link that authorised a listing, kept in the scope so its pages can carry it on to their links.
LINK_KEY = "ferry.link"


@dataclass(frozen=True, slots=True)
class LinkAccess:
    """A request allowed by a signed link: its query parameters, and the directory a prefix covers."""

    query: str  # "expires=…&prefix=…&sig=…", ready to append to a child link
    prefix: str | None  # "/docs/" for a prefix link, else None


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
    """FERRY_DOWNLOAD_AUTH applied to one request."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.download_auth
        self.readers = [*settings.read_tokens, *([settings.write_token] if settings.write_token else [])]
        self.keys = [key.get_secret_value().encode() for key in settings.signing_keys]

    def _has_token(self, authorization: str | None) -> bool:
        return token_matches(bearer(authorization), self.readers)

    def api(self, authorization: str | None) -> None:
        """The JSON API and search: a read token unless downloads are public."""
        if self.mode != "public" and not self._has_token(authorization):
            raise Unauthorized("a valid bearer token is required to read")

    def download(self, scope: Scope) -> None:
        """GET/HEAD under /files/: raises unless the request may read its path."""
        if self.mode == "public":
            return
        if self._has_token(_header(scope, b"authorization")):
            return
        if self.mode == "token":
            raise Unauthorized("a valid bearer token is required to read")
        params = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        path = normal_url_path(scope["path"][len(PREFIX) :])  # the path the request will reach
        client = scope.get("client")
        verdict = signing.verify(
            self.keys, path, params, client=client[0] if client else None, now=int(time.time())
        )
        if verdict is signing.Verdict.MISSING:
            raise Unauthorized("a signed link or a bearer token is required to read")
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
        scope[LINK_KEY] = LinkAccess(urlencode(link, safe="/"), prefix)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def link_access(scope: Scope) -> LinkAccess | None:
    """The signed link this request was allowed by, if any (app/views/listing.py)."""
    found = scope.get(LINK_KEY)
    return found if isinstance(found, LinkAccess) else None
