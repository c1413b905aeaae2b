"""Integrity fields: RFC 9530 digests, the RFC 3230 `Digest` header, SHA256SUMS lines. Pure.

RFC 9530 fields are Structured Field Dictionaries (RFC 8941): `Repr-Digest` and `Content-Digest`
map an algorithm to a byte sequence (`sha-256=:<base64>:`), `Want-Repr-Digest` and
`Want-Content-Digest` map an algorithm to a preference from 0 (not acceptable) to 10.
"""

from __future__ import annotations

import base64
import binascii
import re

# The algorithms Ferry computes, by their RFC 9530 registry names, with their hashlib names.
ALGORITHMS: dict[str, str] = {"sha-256": "sha256", "sha-512": "sha512"}
_SIZES = {"sha-256": 32, "sha-512": 64}
# RFC 8941 §3.1.2 key: lcalpha or "*", then lcalpha / DIGIT / "_" / "-" / "." / "*".
_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_BYTES = re.compile(r":([A-Za-z0-9+/=]*):")
MAX_FIELD = 4096


class DigestFieldError(ValueError):
    """A Content-Digest or Repr-Digest field that is not a valid dictionary of byte sequences."""


def _members(field: str) -> list[tuple[str, str]]:
    """The members of a dictionary field (split on top-level commas, parameters dropped)."""
    if len(field) > MAX_FIELD:
        raise DigestFieldError("the field is too long")
    members = []
    for raw in field.split(","):
        item = raw.strip(" \t")
        if not item:
            raise DigestFieldError("an empty member")
        key, eq, value = item.partition("=")
        if not _KEY.fullmatch(key):
            raise DigestFieldError(f"{key!r} is not a dictionary key")
        value = value.partition(";")[0].strip(" \t") if eq else "?1"
        members.append((key, value))
    return members


def parse_digest_field(field: str) -> dict[str, bytes]:
    """`sha-256=:<b64>:, sha-512=:<b64>:` → {"sha-256": b"...", ...} for the algorithms Ferry
    knows, with the right length; others are skipped. Raises DigestFieldError if malformed."""
    found: dict[str, bytes] = {}
    for key, value in _members(field):
        match = _BYTES.fullmatch(value)
        if match is None:
            raise DigestFieldError(f"the value of {key!r} is not a byte sequence")
        try:
            digest = base64.b64decode(match.group(1), validate=True)
        except binascii.Error as exc:
            raise DigestFieldError(f"the value of {key!r} is not base64") from exc
        if key in _SIZES:
            if len(digest) != _SIZES[key]:
                raise DigestFieldError(f"a {key} digest is {_SIZES[key]} bytes, not {len(digest)}")
            found[key] = digest  # RFC 8941: a repeated key's last value wins
    return found


def parse_want_field(field: str) -> dict[str, int]:
    """`sha-256=10, sha-512=3` → {"sha-256": 10, "sha-512": 3} for known algorithms; a malformed
    field or value is ignored (a preference never makes a request fail)."""
    try:
        members = _members(field)
    except DigestFieldError:
        return {}
    wants: dict[str, int] = {}
    for key, value in members:
        if key in ALGORITHMS and value.isdigit() and int(value) <= 10:
            wants[key] = int(value)
    return wants


def wanted_algorithm(wants: dict[str, int]) -> str | None:
    """The algorithm a Want-*-Digest field prefers most (sha-256 on a tie), or None."""
    ranked = sorted((weight, key == "sha-256", key) for key, weight in wants.items() if weight > 0)
    return ranked[-1][2] if ranked else None


def format_digest_field(digests: dict[str, bytes]) -> str:
    """{"sha-256": b"..."} → `sha-256=:<b64>:` (RFC 9530 Repr-Digest / Content-Digest)."""
    return ", ".join(f"{alg}=:{base64.b64encode(value).decode()}:" for alg, value in digests.items())


def format_legacy_digest(digests: dict[str, bytes]) -> str:
    """{"sha-256": b"..."} → `SHA-256=<b64>` (the RFC 3230 Digest header, RFC 5843 names)."""
    return ",".join(f"{alg.upper()}={base64.b64encode(value).decode()}" for alg, value in digests.items())


WANT_CONTENT_DIGEST = "sha-256=10, sha-512=5"


def checksum_line(hex_digest: str, name: str) -> str:
    """One line of a SHA256SUMS file as GNU `sha256sum` writes it (and `sha256sum -c` reads it):
    a name with a backslash, newline or carriage return is escaped and the line starts with '\\'."""
    if any(c in name for c in "\\\n\r"):
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{hex_digest}  {escaped}\n"
    return f"{hex_digest}  {name}\n"
