"""tus 1.0 (tus.io) header fields: parsed, checked and formatted. Pure: no I/O, no framework.

The routes (app/routes/tus.py) call these before any byte of a body is read; each refusal is a
`TusError` carrying the status the protocol names for it (400, 409, 412, 413, 415, 460), and the
routes answer it. The upload itself (offsets, pieces, publishing) is app/storage/resumable.py's.
"""

from __future__ import annotations

import base64
import binascii
import re
from email.utils import formatdate

TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
)
# Upload-Checksum algorithms (tus names, which are hashlib's): tuspy sends sha1, tus-js-client
# sha256 or sha1 where it checksums at all; md5 for the older clients.
CHECKSUM_ALGORITHMS = ("sha256", "sha1", "md5")
_DIGEST_SIZES = {"sha256": 32, "sha1": 20, "md5": 16}
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
CHECKSUM_MISMATCH = 460  # tus checksum extension: "Checksum Mismatch"
MAX_METADATA = 8 * 1024  # bytes of Upload-Metadata: a path, a name and a few fields
_INTEGER = re.compile(r"[0-9]{1,19}")  # a non-negative decimal below 2**63, no sign, no spaces
_KEY = re.compile(r"[!-~]+")  # printable ASCII without space (and, below, without a comma)


class TusError(Exception):
    """A request tus says to refuse, with the status it names."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(detail)


def check_resumable(value: str | None) -> None:
    """Tus-Resumable must name the version Ferry speaks (412 otherwise, with Tus-Version sent)."""
    if value is None:
        raise TusError(412, "Tus-Resumable is required (1.0.0)")
    if value.strip() != TUS_VERSION:
        raise TusError(412, f"tus version {value.strip()!r} is not supported (1.0.0 is)")


def parse_integer(value: str | None, name: str) -> int | None:
    """Upload-Offset or Upload-Length: a non-negative decimal integer (None when absent)."""
    if value is None:
        return None
    value = value.strip()
    if not _INTEGER.fullmatch(value):
        raise TusError(400, f"{name} must be a non-negative integer")
    return int(value)


def parse_creation(length: str | None, defer: str | None) -> int | None:
    """The declared length of a new upload, or None when deferred (Upload-Defer-Length: 1)."""
    if defer is not None:
        if defer.strip() != "1":
            raise TusError(400, "Upload-Defer-Length must be 1")
        if length is not None:
            raise TusError(400, "Upload-Length and Upload-Defer-Length exclude each other")
        return None
    declared = parse_integer(length, "Upload-Length")
    if declared is None:
        raise TusError(400, "Upload-Length (or Upload-Defer-Length: 1) is required")
    return declared


def parse_metadata(value: str | None) -> dict[str, bytes]:
    """`key base64,key2 base64,flag` → {"key": b"...", "key2": b"...", "flag": b""}.

    Keys are unique, non-empty, without spaces or commas; a value is base64 (possibly empty)."""
    if value is None or not value.strip():
        return {}
    if len(value) > MAX_METADATA:
        raise TusError(400, f"Upload-Metadata is longer than {MAX_METADATA} bytes")
    found: dict[str, bytes] = {}
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not _KEY.fullmatch(parts[0]):
            raise TusError(400, "Upload-Metadata pairs are 'key base64value', comma-separated")
        key = parts[0]
        if key in found:
            raise TusError(400, f"Upload-Metadata repeats the key {key!r}")
        try:
            found[key] = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
        except binascii.Error:
            raise TusError(400, f"the Upload-Metadata value of {key!r} is not base64") from None
    return found


def format_metadata(metadata: dict[str, bytes]) -> str:
    """The inverse of `parse_metadata` (HEAD sends a created upload's metadata back)."""
    return ",".join(f"{k} {base64.b64encode(v).decode()}" if v else k for k, v in metadata.items())


def parse_checksum(value: str | None) -> tuple[str, bytes] | None:
    """`sha256 <base64>` → ("sha256", digest); None when absent. An algorithm Ferry does not
    compute is 400, as tus says."""
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise TusError(400, f"Upload-Checksum algorithm {algorithm!r} is not supported")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise TusError(400, "the Upload-Checksum value is not base64") from None
    if len(digest) != _DIGEST_SIZES[algorithm]:
        raise TusError(400, f"a {algorithm} checksum is {_DIGEST_SIZES[algorithm]} bytes")
    return algorithm, digest


def check_patch(content_type: str | None) -> None:
    """A PATCH body must be application/offset+octet-stream (415 otherwise)."""
    if (content_type or "").partition(";")[0].strip().lower() != OFFSET_CONTENT_TYPE:
        raise TusError(415, f"PATCH needs Content-Type: {OFFSET_CONTENT_TYPE}")


def check_offset(given: int | None, offset: int) -> None:
    """The client's Upload-Offset must be the upload's (409 otherwise: it resumes from HEAD's)."""
    if given is None:
        raise TusError(400, "Upload-Offset is required")
    if given != offset:
        raise TusError(409, f"Upload-Offset {given} is not the upload's offset {offset}")


def check_length(declared: int | None, offset: int, max_size: int) -> None:
    """A declared length must fit FERRY_MAX_UPLOAD_SIZE (413) and not be below what is stored."""
    if declared is None:
        return
    if declared > max_size:
        raise TusError(413, f"Upload-Length is larger than the maximum upload size ({max_size})")
    if declared < offset:
        raise TusError(400, f"Upload-Length {declared} is below the bytes already stored ({offset})")


def base_name(name: str) -> str:
    """A file name as a browser or client may send it (with a Windows or POSIX folder) → its base."""
    return name.replace("\\", "/").rpartition("/")[2].strip()


def target_path(metadata: dict[str, bytes]) -> str:
    """The file an upload is stored at ('/'-separated below ROOT, still to pass the write gate):
    `path` when it names a file; else `filename` in the folder that `folder` or a `path` ending in
    '/' names (the listing's form uploads), or at the top."""
    try:
        text = {k: v.decode() for k, v in metadata.items() if k in ("path", "folder", "filename")}
    except UnicodeDecodeError:
        raise TusError(400, "path, folder and filename metadata must be UTF-8") from None
    path = text.get("path", "")
    if path and not path.endswith("/"):
        return path.lstrip("/")
    folder = path or text.get("folder", "")
    name = base_name(text.get("filename", ""))
    if not name or name in (".", ".."):
        raise TusError(400, "Upload-Metadata needs a path, or a filename (and a folder)")
    folder = folder.strip("/")
    return f"{folder}/{name}" if folder else name


def format_expires(unix_seconds: float) -> str:
    """Upload-Expires: an HTTP date (RFC 9110 §5.6.7)."""
    return formatdate(unix_seconds, usegmt=True)


def options_headers(max_size: int) -> dict[str, str]:
    """What OPTIONS announces: the version, the extensions, the largest upload, the checksums."""
    return {
        "tus-resumable": TUS_VERSION,
        "tus-version": TUS_VERSION,
        "tus-extension": ",".join(EXTENSIONS),
        "tus-max-size": str(max_size),
        "tus-checksum-algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }
