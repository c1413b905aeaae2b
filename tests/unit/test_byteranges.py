"""multipart/byteranges bodies (RFC 9110 §14.6) parse back with python-multipart to the exact bytes."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.http.byteranges import multipart_segments, new_boundary, segments_length
from app.http.conditional import Validators
from app.http.headers import content_disposition
from app.http.plan import DownloadRequest, FileFacts, plan_download
from app.http.ranges import ByteRange
from tests.support.multipart import boundary_of, materialise, parse_byteranges

T = 784111777
BOUNDARY = "3d6b6a416f9b5c0d7e8f1a2b3c"


def file_data(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def facts_for(data: bytes, content_type: str = "video/mp4") -> FileFacts:
    return FileFacts(
        size=len(data),
        validators=Validators(etag='"v1"', last_modified=T),
        content_type=content_type,
        content_disposition=content_disposition("attachment", "clip.mp4"),
    )


def content_range(value: str) -> tuple[int, int, int]:
    """(first, last, complete-length) of ``bytes first-last/complete-length`` (RFC 9110 §14.4)."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", value)
    assert match is not None, value
    first, last, size = (int(g) for g in match.groups())
    return first, last, size


def check_parts(body: bytes, boundary: str, ranges: list[tuple[int, int]], data: bytes, ctype: str) -> None:
    """The body holds one part per (first, last) range, in order, with the right headers and bytes."""
    parts = parse_byteranges(body, boundary)
    assert len(parts) == len(ranges)
    for part, (first, last) in zip(parts, ranges, strict=True):
        assert part.headers == {
            "content-type": ctype,
            "content-range": f"bytes {first}-{last}/{len(data)}",
        }
        assert part.data == data[first : last + 1]


@pytest.mark.parametrize(
    "ranges",
    [
        pytest.param([(0, 0), (2, 2)], id="two-single-bytes"),
        pytest.param([(0, 99), (200, 299), (900, 999)], id="three"),
        pytest.param([(0, 0), (999, 999)], id="first-and-last"),
        pytest.param([(10, 989)], id="one-part"),
    ],
)
def test_multipart_segments_parse_back(ranges: list[tuple[int, int]]) -> None:
    data = file_data(1000)
    segments = multipart_segments(
        tuple(ByteRange(a, b + 1) for a, b in ranges), len(data), "text/plain; charset=utf-8", BOUNDARY
    )
    body = materialise(segments, data)
    assert segments_length(segments) == len(body)
    check_parts(body, BOUNDARY, ranges, data, "text/plain; charset=utf-8")


def test_multipart_segments_framing() -> None:
    data = file_data(100)
    segments = multipart_segments((ByteRange(0, 1), ByteRange(5, 7)), 100, "text/plain", BOUNDARY)
    body = materialise(segments, data)
    # RFC 2046 §5.1.1: delimiters are CRLF "--" boundary; the last one is followed by "--".
    assert body.startswith(f"--{BOUNDARY}\r\n".encode())
    assert body.endswith(f"\r\n--{BOUNDARY}--\r\n".encode())
    assert body.count(f"--{BOUNDARY}".encode()) == 3
    assert body == (
        f"--{BOUNDARY}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-0/100\r\n\r\n".encode()
        + data[0:1]
        + f"\r\n--{BOUNDARY}\r\nContent-Type: text/plain\r\nContent-Range: bytes 5-6/100\r\n\r\n".encode()
        + data[5:7]
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def test_multipart_segments_reference_the_file_instead_of_copying_it() -> None:
    ranges = (ByteRange(0, 10**9), ByteRange(2 * 10**9, 3 * 10**9))
    segments = multipart_segments(ranges, 4 * 10**9, "application/octet-stream", BOUNDARY)
    assert [s for s in segments if isinstance(s, ByteRange)] == list(ranges)
    assert sum(len(s) for s in segments if isinstance(s, bytes)) < 1000
    assert segments_length(segments) > 2 * 10**9


def test_new_boundary_is_a_valid_random_boundary() -> None:
    boundaries = {new_boundary() for _ in range(50)}
    assert len(boundaries) == 50
    for b in boundaries:
        # RFC 2046 §5.1.1: 1 to 70 bchars, not ending in a space; at least 96 random bits.
        assert re.fullmatch(r"[0-9A-Za-z'()+_,\-./:=?]{1,70}", b)
        assert len(b) >= 24


# --- property: whatever ranges are asked for, the 206 body is those bytes ---------------------------


@st.composite
def disjoint_ranges(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    """A file size and 2..16 inclusive ranges with at least one byte between any two."""
    count = draw(st.integers(min_value=2, max_value=16))
    position = draw(st.integers(min_value=0, max_value=50))
    ranges = []
    for i in range(count):
        if i:
            position += draw(st.integers(min_value=1, max_value=50))  # a gap: never coalesced
        length = draw(st.integers(min_value=1, max_value=80))
        ranges.append((position, position + length - 1))
        position += length
    size = position + draw(st.integers(min_value=0, max_value=50))
    return size, ranges


@settings(max_examples=200, deadline=None)
@given(case=disjoint_ranges(), suffix=st.booleans(), draw=st.data())
def test_plan_download_multipart_body_parses_back_to_the_requested_bytes(
    case: tuple[int, list[tuple[int, int]]], suffix: bool, draw: st.DataObject
) -> None:
    size, ranges = case
    data = file_data(size)
    specs = [f"{a}-{b}" for a, b in ranges]
    if suffix and ranges[-1][1] == size - 1:
        specs[-1] = f"-{size - ranges[-1][0]}"  # the same bytes, asked as a suffix
    specs = draw.draw(st.permutations(specs))  # the answer is in file order whatever the order asked
    plan = plan_download(
        DownloadRequest("GET", range="bytes=" + ",".join(specs)), facts_for(data), max_ranges=16, now=T + 10
    )
    headers = dict(plan.headers)
    body = materialise(plan.body, data)
    assert plan.status == 206
    assert "content-range" not in headers
    assert int(headers["content-length"]) == len(body) == plan.content_length
    check_parts(body, boundary_of(headers["content-type"]), ranges, data, "video/mp4")


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=3000),
    specs=st.lists(
        st.tuples(st.integers(0, 3500), st.integers(0, 3500)).map(sorted), min_size=1, max_size=16
    ),
)
def test_plan_download_any_range_set_serves_the_union_of_requested_bytes(
    size: int, specs: list[list[int]]
) -> None:
    data = file_data(size)
    header = "bytes=" + ",".join(f"{a}-{b}" for a, b in specs)
    plan = plan_download(DownloadRequest("GET", range=header), facts_for(data), max_ranges=16, now=T + 10)
    headers = dict(plan.headers)
    body = materialise(plan.body, data)
    assert int(headers["content-length"]) == len(body)
    wanted = [range(size)[a : b + 1] for a, b in specs]
    positions = sorted(set().union(*wanted))
    if not positions:
        assert plan.status == 416
        assert headers["content-range"] == f"bytes */{size}"
        return
    if sum(len(w) for w in wanted) > size:
        assert plan.status == 200
        assert body == data
        return
    assert plan.status == 206
    if headers["content-type"].startswith("multipart/byteranges"):
        parts = parse_byteranges(body, boundary_of(headers["content-type"]))
        assert len(parts) >= 2
        served: list[int] = []
        for p in parts:
            first, last, complete = content_range(p.headers["content-range"])
            assert complete == size
            assert p.data == data[first : last + 1]
            served.extend(range(first, last + 1))
    else:
        first, last, complete = content_range(headers["content-range"])
        assert complete == size
        assert body == data[first : last + 1]
        served = list(range(first, last + 1))
    assert served == positions  # every requested byte once, in file order
