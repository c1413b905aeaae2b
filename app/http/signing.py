"""Signed expiring links: HMAC-SHA256 over what a link may do, for how long, and from where.

A link is ``/files/<path>?expires=<unix>[&prefix=/<dir>/][&ip=<cidr>]&sig=<base64url>``. The
signature covers, one field per line (the path last, since only it may hold a newline)::

    ferry-link-v1 / method class ("read") / scope ("file" or "prefix") / expires / ip / path

The path is the *decoded* path below /files/, with a leading '/' ("/docs/a b.txt"), so every
percent-encoding of one URL names the same signed path. A prefix link signs a directory path ending
in '/' ("/docs/"), which covers the files and listings below it but never "/docs-other/"; the
part below the prefix may not hold '.', '..' or empty segments, so no spelling climbs out.

Several keys may be configured, newest first: links are minted with the first, and a link signed
with any listed key stays valid until it expires, so a key can be rotated without breaking live
links. Pure: no I/O, no clock (``now`` is given), no framework.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

VERSION = b"ferry-link-v1"
READ = "read"
METHOD_CLASSES = frozenset({READ})
# The query parameters a link adds; a request may carry each at most once.
PARAMS = ("expires", "prefix", "ip", "sig")
MAX_TTL = 366 * 24 * 3600
_EXPIRES = re.compile(r"[0-9]{1,12}")  # unix seconds; up to the year 33658
_SIG = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes of HMAC-SHA256, base64url without padding
_DURATION = re.compile(r"\s*([0-9]{1,9})\s*([smhdw]?)\s*", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Verdict(enum.Enum):
    VALID = "valid"
    MISSING = "missing"  # no link parameters at all: the request has no signature
    INVALID = "invalid"  # malformed, altered, signed with an unknown key, another path, another address
    EXPIRED = "expired"  # genuine, but its time is over


@dataclass(frozen=True, slots=True)
class Link:
    """What a signature grants: a method class on a path (or every path below a prefix) until
    `expires`, optionally only to clients in the network `ip`."""

    path: str  # decoded, with a leading '/'; a prefix ends with '/'
    expires: int
    prefix: bool = False
    ip: str | None = None  # a normalised network ("192.0.2.0/24", "2001:db8::1/128")
    method_class: str = READ


def canonical_path(path: str, *, prefix: bool) -> str:
    """A path below /files/ as links sign it: '/'-rooted, plain segments, '/'-terminated for a prefix.

    Raises ValueError for anything a request could not name exactly ('..', '.', empty segments,
    backslashes, control characters)."""
    inner = path.strip("/")
    if inner and not _plain(inner):
        raise ValueError(f"{path!r} is not a plain path below the storage root")
    if prefix:
        return "/" + inner + "/" if inner else "/"
    if not inner:
        raise ValueError("a file link needs a file path (use a prefix link for a directory)")
    return "/" + inner + ("/" if path.endswith("/") else "")


def normalise_network(text: str) -> str:
    """'192.0.2.7/24' → '192.0.2.0/24'; a bare address is its own /32 or /128. ValueError if bad."""
    return str(ipaddress.ip_network(text.strip(), strict=False))


def parse_duration(text: str) -> int:
    """'90', '90s', '30m', '1h', '7d', '2w' → seconds (1 to MAX_TTL). ValueError otherwise."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 30m, 1h, 7d)")
    seconds = int(match.group(1)) * _SECONDS[match.group(2).lower()]
    if not 1 <= seconds <= MAX_TTL:
        raise ValueError(f"a link lives from 1 second to {MAX_TTL // 86400} days, not {text!r}")
    return seconds


def new_link(path: str, *, ttl: int, now: int, prefix: bool = False, ip: str | None = None) -> Link:
    """The link to mint for a path as a person names it ("docs/a.txt", "/docs/"); ValueError if bad."""
    if not 1 <= ttl <= MAX_TTL:
        raise ValueError(f"a link lives from 1 second to {MAX_TTL // 86400} days")
    network = normalise_network(ip) if ip else None
    return Link(canonical_path(path, prefix=prefix), now + ttl, prefix, network)


def _message(link: Link) -> bytes:
    scope = "prefix" if link.prefix else "file"
    fields = (VERSION.decode(), link.method_class, scope, str(link.expires), link.ip or "", link.path)
    return "\n".join(fields).encode("utf-8", "surrogatepass")


def signature(key: bytes, link: Link) -> str:
    digest = hmac.new(key, _message(link), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def link_params(key: bytes, link: Link) -> list[tuple[str, str]]:
    """The query parameters of a signed link, in the order links carry them."""
    params = [("expires", str(link.expires))]
    if link.prefix:
        params.append(("prefix", link.path))
    if link.ip:
        params.append(("ip", link.ip))
    params.append(("sig", signature(key, link)))
    return params


def link_target(key: bytes, link: Link) -> str:
    """The site-relative URL of a link: ``/files/<percent-encoded path>?<params>``."""
    return "/files" + quote(link.path) + "?" + urlencode(link_params(key, link), safe="/")


def _plain(rest: str) -> bool:
    """Segments below a prefix: no '.', '..', empty segments, backslashes or control characters."""
    if any(ord(c) < 0x20 or c == "\x7f" or c == "\\" for c in rest):
        return False
    return all(segment not in ("", ".", "..") for segment in rest.split("/"))


def _covers(link: Link, path: str) -> bool:
    if not link.prefix:
        return path == link.path
    if path == link.path[:-1] and path:  # "/docs" answers with a redirect to "/docs/"
        return True
    if not path.startswith(link.path):
        return False
    rest = path[len(link.path) :]
    return not rest or _plain(rest.removesuffix("/"))


def _in_network(network: str, client: str | None) -> bool:
    if client is None:
        return False
    try:
        return ipaddress.ip_address(client) in ipaddress.ip_network(network)
    except ValueError:
        return False


def _parse(params: Sequence[tuple[str, str]]) -> dict[str, str] | None:
    found: dict[str, str] = {}
    for name, value in params:
        if name in PARAMS:
            if name in found:
                return None  # a repeated parameter is ambiguous: never guess which one counts
            found[name] = value
    return found


def verify(
    keys: Sequence[bytes],
    path: str,
    params: Sequence[tuple[str, str]],
    *,
    client: str | None,
    now: int,
    method_class: str = READ,
) -> Verdict:
    """Whether the link parameters of a request grant `method_class` on the decoded `path`.

    `path` is the decoded request path below /files/ with its leading '/'. Every key is tried, each
    in constant time; a signature is checked before its expiry, so only a genuine link is told it
    expired."""
    found = _parse(params)
    if found is None:
        return Verdict.INVALID
    if not found:
        return Verdict.MISSING
    expires, sig = found.get("expires", ""), found.get("sig", "")
    if method_class not in METHOD_CLASSES or not _EXPIRES.fullmatch(expires) or not _SIG.fullmatch(sig):
        return Verdict.INVALID
    prefix = "prefix" in found
    ip = found.get("ip") or None
    link = Link(found["prefix"] if prefix else path, int(expires), prefix, ip, method_class)
    if prefix and not link.path.endswith("/"):
        return Verdict.INVALID
    given = sig.encode("ascii")
    matched = False
    for key in keys:  # no early exit: the time taken does not say which key matched
        matched |= hmac.compare_digest(signature(key, link).encode("ascii"), given)
    if not matched or not _covers(link, path):
        return Verdict.INVALID
    if ip is not None and not _in_network(ip, client):
        return Verdict.INVALID
    return Verdict.EXPIRED if now >= link.expires else Verdict.VALID
