"""What to answer to GET/HEAD of a file: status, headers and body segments. Pure: no I/O.

This is where preconditions, If-Range and Range meet, in the order RFC 9110 §13.2.2 gives them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.http.byteranges import Segment, multipart_segments, new_boundary, segments_length
from app.http.conditional import (
    Precondition,
    RequestConditions,
    Validators,
    evaluate,
    if_range_matches,
)
from app.http.digests import format_digest_field, format_legacy_digest
from app.http.ranges import (
    ByteRange,
    Ignore,
    Partial,
    Unsatisfiable,
    format_content_range,
    format_unsatisfied_range,
    plan_ranges,
)


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What the response needs to know about the opened file."""

    size: int
    validators: Validators
    content_type: str
    content_disposition: str
    # Known digests of the whole file by RFC 9530 name, and an RFC 6249 Link field (mirrors,
    # the .meta4): sent on 200, 206 and 304, as they describe the representation, not the body.
    digests: dict[str, bytes] = field(default_factory=dict)
    link: str | None = None
    # The same two as ready header fields (`integrity_headers`), when the caller keeps them.
    integrity: tuple[tuple[str, str], ...] | None = None
    # False: only the whole representation can be sent now (a ZIP of files whose CRC-32s are not
    # known yet), so Range is ignored and `Accept-Ranges: none` says so.
    ranges: bool = True


@dataclass(frozen=True, slots=True)
class DownloadRequest:
    method: str
    range: str | None = None
    if_range: str | None = None
    conditions: RequestConditions = field(default_factory=RequestConditions)


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    status: int
    headers: list[tuple[str, str]]
    body: list[Segment]

    @property
    def content_length(self) -> int:
        return segments_length(self.body)


def _validator_headers(v: Validators) -> list[tuple[str, str]]:
    return [("etag", v.etag), ("last-modified", v.last_modified_header)]


def plan_download(
    request: DownloadRequest, facts: FileFacts, *, max_ranges: int, now: int, boundary: str | None = None
) -> ResponsePlan:
    """Decide the whole response for GET or HEAD of an existing file.

    The body is always the GET body; a HEAD answer carries the same headers and sends none of it.
    """
    v = facts.validators
    accept = "bytes" if facts.ranges else "none"
    common = [("accept-ranges", accept), *_validator_headers(v), ("x-content-type-options", "nosniff")]
    outcome = evaluate(request.method, request.conditions, v)
    if outcome is Precondition.FAILED:
        return ResponsePlan(412, [*common, _length(0)], [])
    described = _integrity_headers(facts)
    if outcome is Precondition.NOT_MODIFIED:
        return ResponsePlan(304, [*common, *described], [])

    entity = [
        ("content-type", facts.content_type),
        ("content-disposition", facts.content_disposition),
        *described,
    ]
    whole = ByteRange(0, facts.size)
    # RFC 9110 §14.2: Range is defined for GET only; HEAD (and an If-Range that does not match,
    # §13.1.5) gets the whole representation.
    use_range = request.method == "GET" and request.range is not None and facts.ranges
    if use_range and request.if_range is not None:
        use_range = if_range_matches(request.if_range, v, now=now)
    plan = plan_ranges(request.range, facts.size, max_ranges=max_ranges) if use_range else Ignore()

    match plan:
        case Ignore():
            body: list[Segment] = [whole] if facts.size else []
            return ResponsePlan(200, [*common, *entity, _length(facts.size)], body)
        case Unsatisfiable(size=size):
            headers = [*common, ("content-range", format_unsatisfied_range(size)), _length(0)]
            return ResponsePlan(416, headers, [])
        case Partial(ranges=(only,)):
            body = [only]
            headers = [*common, *entity, ("content-range", format_content_range(only, facts.size))]
            return ResponsePlan(206, [*headers, _length(only.length)], body)
        case Partial(ranges=ranges):
            b = boundary or new_boundary()
            body = multipart_segments(ranges, facts.size, facts.content_type, b)
            headers = [
                *common,
                ("content-type", f"multipart/byteranges; boundary={b}"),
                ("content-disposition", facts.content_disposition),
                *described,
            ]
            return ResponsePlan(206, [*headers, _length(segments_length(body))], body)
    raise AssertionError(plan)  # pragma: no cover


def integrity_headers(digests: dict[str, bytes], link: str | None) -> tuple[tuple[str, str], ...]:
    """Repr-Digest and Digest for the known digests, and the Link field."""
    headers = []
    if digests:
        headers.append(("repr-digest", format_digest_field(digests)))
        headers.append(("digest", format_legacy_digest(digests)))
    if link:
        headers.append(("link", link))
    return tuple(headers)


def _integrity_headers(facts: FileFacts) -> tuple[tuple[str, str], ...]:
    if facts.integrity is not None:
        return facts.integrity
    return integrity_headers(facts.digests, facts.link)


def _length(n: int) -> tuple[str, str]:
    return ("content-length", str(n))
