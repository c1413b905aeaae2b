"""The IETF httpbis "Resumable Uploads for HTTP" draft's header fields: parsed, checked and
formatted. Pure: no I/O, no framework.

The draft's fields are Structured Fields (RFC 8941): `Upload-Complete` a Boolean (`?0`, `?1`),
`Upload-Offset` and `Upload-Length` non-negative Integers, `Upload-Limit` a Dictionary of Integers.
A value of the wrong shape makes the field ignored (as if absent), as the draft says. Refusals are
`DraftError`s carrying the status and, for the draft's own problem types, the RFC 9457 problem
document the routes (app/routes/resumable_draft.py) answer with.

`Upload-Draft-Interop-Version` is required on every request: INTEROP_VERSION is the current one
(the draft text's "Draft Version Identification"); 6 is what tus-js-client 4 sends with
`protocol: 'ietf-draft-05'`, which speaks the same requests.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

INTEROP_VERSION = 8
ACCEPTED_VERSIONS = (INTEROP_VERSION, 6)
PARTIAL_UPLOAD = "application/partial-upload"
PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET = "mismatching-upload-offset"
COMPLETED_UPLOAD = "completed-upload"
INCONSISTENT_LENGTH = "inconsistent-upload-length"
_TITLES = {
    MISMATCHING_OFFSET: "offset from request does not match offset of resource",
    COMPLETED_UPLOAD: "upload is already completed",
    INCONSISTENT_LENGTH: "inconsistent length values for upload",
}
_SF_INTEGER = re.compile(r"-?[0-9]{1,15}")  # RFC 8941 §3.3.1: at most 15 digits
_SF_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_FILENAME_STAR = re.compile(r"""(?:^|;)\s*filename\*\s*=\s*(?:UTF-8|utf-8)''([^;\s]+)""")
_FILENAME = re.compile(r"""(?:^|;)\s*filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s"]+))""")


class DraftError(Exception):
    """A request the draft says to refuse: its status, and its problem type if the draft names one."""

    def __init__(self, status: int, detail: str, problem: str | None = None, **extra: int) -> None:
        self.status = status
        self.detail = detail
        self.problem = problem
        self.extra = extra
        super().__init__(detail)

    def document(self) -> dict[str, Any]:
        """The answer's JSON: an RFC 9457 problem for the draft's types, Ferry's {"detail"} else."""
        if self.problem is None:
            return {"detail": self.detail}
        return {
            "type": PROBLEM_BASE + self.problem,
            "title": _TITLES[self.problem],
            "detail": self.detail,
            **self.extra,
        }


def _bare(value: str) -> str:
    """An Item's bare value, its parameters dropped."""
    return value.partition(";")[0].strip(" \t")


def parse_boolean(value: str | None) -> bool | None:
    """Upload-Complete: `?1` → True, `?0` → False; absent or anything else → None (ignored)."""
    if value is None:
        return None
    bare = _bare(value)
    return {"?1": True, "?0": False}.get(bare)


def parse_integer(value: str | None) -> int | None:
    """Upload-Offset, Upload-Length: a non-negative sf-integer; absent or anything else → None."""
    if value is None:
        return None
    bare = _bare(value)
    if not _SF_INTEGER.fullmatch(bare) or bare.startswith("-"):
        return None
    return int(bare)


def format_boolean(value: bool) -> str:
    return "?1" if value else "?0"


def check_interop(value: str | None) -> int:
    """The client's Upload-Draft-Interop-Version: required, and one Ferry speaks (400 otherwise)."""
    accepted = " or ".join(str(v) for v in ACCEPTED_VERSIONS)
    version = parse_integer(value)
    if version is None:
        raise DraftError(400, f"Upload-Draft-Interop-Version is required ({accepted})")
    if version not in ACCEPTED_VERSIONS:
        raise DraftError(400, f"Upload-Draft-Interop-Version {version} is not supported ({accepted} is)")
    return version


def format_limit(limits: dict[str, int]) -> str:
    """Upload-Limit: `max-size=…, max-age=…` (an empty set of limits is `min-size=0`, as the draft
    asks a server without limits to say)."""
    if not limits:
        return "min-size=0"
    return ", ".join(f"{key}={value}" for key, value in limits.items())


def parse_limit(value: str | None) -> dict[str, int] | None:
    """Upload-Limit as a client reads it: unknown keys skipped; a malformed dictionary or a known
    key with a value that is not an Integer makes the whole field ignored (None)."""
    if value is None:
        return None
    found: dict[str, int] = {}
    for member in value.split(","):
        key, eq, raw = member.strip(" \t").partition("=")
        if not _SF_KEY.fullmatch(key):
            return None
        bare = _bare(raw) if eq else "?1"
        if not _SF_INTEGER.fullmatch(bare):
            if key in ("max-size", "min-size", "max-append-size", "min-append-size", "max-age"):
                return None
            continue
        found[key] = int(bare)
    return found


def check_partial(content_type: str | None) -> None:
    """An append's body must be application/partial-upload (415 otherwise)."""
    if (content_type or "").partition(";")[0].strip().lower() != PARTIAL_UPLOAD:
        raise DraftError(415, f"appending needs Content-Type: {PARTIAL_UPLOAD}")


def check_offset(given: int | None, offset: int) -> None:
    """An append's Upload-Offset must be the upload's: 409 with the mismatching-upload-offset
    problem (and both offsets) otherwise; 400 when it is absent or malformed."""
    if given is None:
        raise DraftError(400, "Upload-Offset (a non-negative integer) is required")
    if given != offset:
        raise DraftError(
            409,
            f"Upload-Offset {given} is not the upload's offset {offset}",
            MISMATCHING_OFFSET,
            **{"expected-offset": offset, "provided-offset": given},
        )


def completed() -> DraftError:
    """An append to an upload already complete."""
    return DraftError(400, "the upload is complete; nothing more can be appended", COMPLETED_UPLOAD)


def inconsistent(detail: str) -> DraftError:
    return DraftError(400, detail, INCONSISTENT_LENGTH)


def request_length(
    upload_length: str | None, complete: bool, content_length: str | None, offset: int
) -> int | None:
    """The upload's whole length a request indicates, or None: Upload-Length, and (with
    `Upload-Complete: ?1`) the offset plus Content-Length; the two must agree (400,
    inconsistent-upload-length)."""
    declared = parse_integer(upload_length)
    implied = None
    if complete and content_length is not None and content_length.strip().isdigit():
        implied = offset + int(content_length.strip())
    if declared is not None and implied is not None and declared != implied:
        raise inconsistent(f"Upload-Length {declared} and the complete body's end ({implied}) disagree")
    return declared if declared is not None else implied


def check_known_length(known: int | None, indicated: int | None, offset: int) -> None:
    """A length a request indicates must match the one already known and not be below the offset."""
    if indicated is None:
        return
    if known is not None and known != indicated:
        raise inconsistent(f"the upload's length is {known}, not {indicated}")
    if indicated < offset:
        raise inconsistent(f"the length {indicated} is below the bytes already stored ({offset})")


def disposition_filename(value: str | None) -> str | None:
    """The file name a Content-Disposition gives (`filename*=UTF-8''…` first, then `filename=`),
    its folder part dropped; None when it has none."""
    if not value:
        return None
    star = _FILENAME_STAR.search(value)
    if star is not None:
        try:
            name = unquote(star.group(1), errors="strict")
        except UnicodeDecodeError:
            return None
    else:
        plain = _FILENAME.search(value)
        if plain is None:
            return None
        name = plain.group(1) if plain.group(1) is not None else plain.group(2)
        name = re.sub(r"\\(.)", r"\1", name)
    name = name.replace("\\", "/").rpartition("/")[2].strip()
    return name if name and name not in (".", "..") else None
