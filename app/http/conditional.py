"""Validators and conditional requests (RFC 9110 §8.8, §13). Pure: no I/O, no framework imports."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from app.http.headers import format_http_date, parse_etag_list, parse_http_date


@dataclass(frozen=True, slots=True)
class Validators:
    """The strong ETag (with quotes) and Last-Modified (epoch seconds) of an opened file."""

    etag: str
    last_modified: int

    @property
    def last_modified_header(self) -> str:
        return format_http_date(self.last_modified)


def make_validators(*, dev: int, ino: int, size: int, mtime_ns: int) -> Validators:
    """Validators from a file's stat: the ETag changes when the file is modified or replaced."""
    # The inode changes on an atomic os.replace even when size and mtime happen to match.
    etag = f'"{dev:x}-{ino:x}-{size:x}-{mtime_ns:x}"'
    return Validators(etag=etag, last_modified=mtime_ns // 1_000_000_000)


@dataclass(frozen=True, slots=True)
class RequestConditions:
    """The precondition header fields of a request, as received (None when absent)."""

    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None


class Precondition(Enum):
    PROCEED = auto()
    NOT_MODIFIED = auto()  # 304
    FAILED = auto()  # 412


def _strong_match(header: str, etag: str) -> bool:
    tags = parse_etag_list(header)
    return tags is None or any(not t.weak and t.opaque == etag for t in tags)


def _weak_match(header: str, etag: str) -> bool:
    tags = parse_etag_list(header)
    return tags is None or any(t.opaque == etag for t in tags)


def evaluate(method: str, conditions: RequestConditions, current: Validators) -> Precondition:
    """Evaluate preconditions in the order of RFC 9110 §13.2.2 for an existing representation."""
    safe = method in ("GET", "HEAD")
    # Step 1: If-Match uses the strong comparison (§13.1.1).
    if conditions.if_match is not None:
        if not _strong_match(conditions.if_match, current.etag):
            return Precondition.FAILED
    # Step 2: If-Unmodified-Since only when If-Match is absent; an invalid date is ignored (§13.1.4).
    elif conditions.if_unmodified_since is not None:
        date = parse_http_date(conditions.if_unmodified_since)
        if date is not None and current.last_modified > date:
            return Precondition.FAILED
    # Step 3: If-None-Match uses the weak comparison (§13.1.2).
    if conditions.if_none_match is not None:
        if _weak_match(conditions.if_none_match, current.etag):
            return Precondition.NOT_MODIFIED if safe else Precondition.FAILED
    # Step 4: If-Modified-Since only for GET/HEAD and only when If-None-Match is absent (§13.1.3).
    elif safe and conditions.if_modified_since is not None:
        date = parse_http_date(conditions.if_modified_since)
        if date is not None and current.last_modified <= date:
            return Precondition.NOT_MODIFIED
    return Precondition.PROCEED


def if_range_matches(if_range: str, current: Validators, *, now: int) -> bool:
    """Whether a Range may be honoured under this If-Range value (RFC 9110 §13.1.5)."""
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        # Strong comparison only: a weak tag never matches.
        return value == current.etag
    date = parse_http_date(value)
    # A date matches only if it equals Last-Modified exactly and Last-Modified is strong, i.e. at
    # least one second older than the response (§8.8.2.2).
    return date is not None and date == current.last_modified and now - current.last_modified >= 1


def write_allowed(conditions: RequestConditions, current: Validators | None) -> bool:
    """Whether a PUT/DELETE may replace `current` (None: nothing there yet), RFC 9110 §13.2.2."""
    if current is None:
        # If-Match needs a current representation; If-None-Match: * asks for none (§13.1.1, §13.1.2).
        return conditions.if_match is None
    return evaluate("PUT", conditions, current) is Precondition.PROCEED
