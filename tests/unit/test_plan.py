"""plan_download: the contract's download cases, with §13.2.2 precedence between preconditions,
If-Range and Range."""

from __future__ import annotations

import random
from typing import TypedDict

import pytest

from app.http.conditional import RequestConditions, Validators
from app.http.headers import content_disposition
from app.http.plan import DownloadRequest, FileFacts, ResponsePlan, plan_download
from tests.support.multipart import boundary_of, materialise, parse_byteranges

T = 784111777
LAST_MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sun, 06 Nov 1994 08:49:36 GMT"
LATER = "Sun, 06 Nov 1994 08:49:38 GMT"
NOW = T + 3600
ETAG = '"5-1a2b-3e8-abc"'
DATA = random.Random(1).randbytes(1000)
EMPTY = b""
DISPOSITION = content_disposition("attachment", "résumé.txt")

ENTITY = ("content-type", "content-disposition")
ALWAYS = {"accept-ranges": "bytes", "etag": ETAG, "last-modified": LAST_MODIFIED}


class Headers(TypedDict, total=False):
    """A request's Range, If-Range and precondition fields, as `plan` takes them."""

    range_header: str
    if_range: str
    if_match: str
    if_none_match: str
    if_modified_since: str
    if_unmodified_since: str


def facts(data: bytes = DATA) -> FileFacts:
    return FileFacts(
        size=len(data),
        validators=Validators(etag=ETAG, last_modified=T),
        content_type="text/plain",
        content_disposition=DISPOSITION,
    )


def plan(
    method: str = "GET",
    range_header: str | None = None,
    if_range: str | None = None,
    data: bytes = DATA,
    now: int = NOW,
    **conditions: str,
) -> ResponsePlan:
    request = DownloadRequest(
        method, range=range_header, if_range=if_range, conditions=RequestConditions(**conditions)
    )
    return plan_download(request, facts(data), max_ranges=16, now=now)


def header_map(p: ResponsePlan) -> dict[str, str]:
    names = [name for name, _ in p.headers]
    assert len(names) == len(set(names)), f"repeated header in {names}"
    assert all(name == name.lower() for name in names)
    return dict(p.headers)


def check_whole(p: ResponsePlan, data: bytes = DATA) -> None:
    """200 with every header the contract lists and the whole file."""
    assert p.status == 200
    assert header_map(p) == {
        **ALWAYS,
        "content-type": "text/plain",
        "content-disposition": DISPOSITION,
        "content-length": str(len(data)),
        "x-content-type-options": "nosniff",
    }
    assert materialise(p.body, data) == data
    assert p.content_length == len(data)


def check_single(p: ResponsePlan, first: int, last: int, data: bytes = DATA) -> None:
    assert p.status == 206
    assert header_map(p) == {
        **ALWAYS,
        "content-type": "text/plain",
        "content-disposition": DISPOSITION,
        "content-range": f"bytes {first}-{last}/{len(data)}",
        "content-length": str(last - first + 1),
        "x-content-type-options": "nosniff",
    }
    assert materialise(p.body, data) == data[first : last + 1]


def check_no_body(p: ResponsePlan, status: int) -> dict[str, str]:
    assert p.status == status
    assert p.body == [] and p.content_length == 0
    headers = header_map(p)
    assert headers["etag"] == ETAG
    return headers


# --- 200 and 206 ------------------------------------------------------------------------------------


def test_plan_download_get_whole_file_has_every_header() -> None:
    check_whole(plan())


def test_plan_download_head_has_the_get_headers() -> None:
    head, get = plan("HEAD"), plan()
    assert head.status == 200
    assert head.headers == get.headers


def test_plan_download_empty_file_is_200_with_no_body() -> None:
    check_whole(plan(data=EMPTY), EMPTY)


@pytest.mark.parametrize(
    ("range_header", "first", "last"),
    [
        pytest.param("bytes=0-99", 0, 99, id="a-b"),
        pytest.param("bytes=990-", 990, 999, id="open"),
        pytest.param("bytes=-100", 900, 999, id="suffix"),
        pytest.param("bytes=-5000", 0, 999, id="suffix-longer-than-file"),
        pytest.param("bytes=500-5000", 500, 999, id="end-clamped"),
        pytest.param("bytes=0-9,10-19", 0, 19, id="adjacent-coalesced"),
        pytest.param("bytes=0-9,5000-6000", 0, 9, id="unsatisfiable-part-dropped"),
        pytest.param("bytes=999-999", 999, 999, id="last-byte"),
    ],
)
def test_plan_download_single_range_is_206_with_content_range(
    range_header: str, first: int, last: int
) -> None:
    check_single(plan(range_header=range_header), first, last)


def test_plan_download_several_ranges_are_multipart_byteranges() -> None:
    p = plan(range_header="bytes=0-9,20-29,-10")
    headers = header_map(p)
    assert p.status == 206
    assert headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert "content-range" not in headers
    assert headers["content-disposition"] == DISPOSITION
    assert headers["x-content-type-options"] == "nosniff"
    body = materialise(p.body, DATA)
    assert headers["content-length"] == str(len(body))
    parts = parse_byteranges(body, boundary_of(headers["content-type"]))
    assert [(x.headers["content-range"], x.data) for x in parts] == [
        ("bytes 0-9/1000", DATA[0:10]),
        ("bytes 20-29/1000", DATA[20:30]),
        ("bytes 990-999/1000", DATA[990:1000]),
    ]
    assert all(x.headers["content-type"] == "text/plain" for x in parts)


def test_plan_download_multipart_uses_the_given_boundary() -> None:
    p = plan_download(
        DownloadRequest("GET", range="bytes=0-0,2-2"), facts(), max_ranges=16, now=NOW, boundary="b0und"
    )
    assert header_map(p)["content-type"] == "multipart/byteranges; boundary=b0und"


def test_plan_download_multipart_boundaries_differ_between_responses() -> None:
    a, b = (header_map(plan(range_header="bytes=0-0,2-2"))["content-type"] for _ in range(2))
    assert a != b


# --- 416 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_header", "data"),
    [
        pytest.param("bytes=1000-", DATA, id="start-at-eof"),
        pytest.param("bytes=5000-6000,-0", DATA, id="all-unsatisfiable"),
        pytest.param("bytes=0-", EMPTY, id="empty-file-open"),
        pytest.param("bytes=0-0", EMPTY, id="empty-file-first-byte"),
    ],
)
def test_plan_download_unsatisfiable_is_416_with_star_content_range(range_header: str, data: bytes) -> None:
    headers = check_no_body(plan(range_header=range_header, data=data), 416)
    assert headers["content-range"] == f"bytes */{len(data)}"
    assert headers["content-length"] == "0"


# --- Range ignored: 200 with the whole file -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "range_header"),
    [
        pytest.param("HEAD", "bytes=0-99", id="head-with-range"),
        pytest.param("HEAD", "bytes=5000-", id="head-with-unsatisfiable-range"),
        pytest.param("GET", "items=0-1", id="unknown-unit"),
        pytest.param("GET", "bytes=abc", id="invalid-syntax"),
        pytest.param("GET", "bytes=5-2", id="last-before-first"),
        pytest.param("GET", "bytes=0-,0-", id="sum-past-the-file"),
        pytest.param("GET", "bytes=" + ",".join(f"{2 * i}-{2 * i}" for i in range(17)), id="17-ranges"),
    ],
)
def test_plan_download_ignored_range_is_200_whole_file(method: str, range_header: str) -> None:
    check_whole(plan(method, range_header=range_header))


# --- If-Range --------------------------------------------------------------------------------------------


def test_plan_download_if_range_matching_etag_is_206() -> None:
    check_single(plan(range_header="bytes=0-99", if_range=ETAG), 0, 99)


def test_plan_download_if_range_matching_date_is_206() -> None:
    check_single(plan(range_header="bytes=0-99", if_range=LAST_MODIFIED), 0, 99)


@pytest.mark.parametrize(
    ("if_range", "now"),
    [
        pytest.param('"stale"', NOW, id="stale-etag"),
        pytest.param(f"W/{ETAG}", NOW, id="weak-etag"),
        pytest.param(EARLIER, NOW, id="old-date"),
        pytest.param(LATER, NOW, id="later-date"),
        pytest.param(LAST_MODIFIED, T, id="date-not-a-second-old"),
        pytest.param("garbage", NOW, id="garbage"),
    ],
)
def test_plan_download_if_range_mismatch_is_200_whole_file(if_range: str, now: int) -> None:
    check_whole(plan(range_header="bytes=0-99", if_range=if_range, now=now))


def test_plan_download_if_range_mismatch_beats_unsatisfiable_range() -> None:
    # §13.1.5: a false If-Range means the Range header is ignored, so there is nothing to refuse.
    check_whole(plan(range_header="bytes=5000-", if_range='"stale"'))


def test_plan_download_if_range_without_range_is_200() -> None:
    check_whole(plan(if_range=ETAG))


# --- 304 and 412 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "conditions",
    [
        pytest.param({"if_none_match": ETAG}, id="inm-equal"),
        pytest.param({"if_none_match": f"W/{ETAG}"}, id="inm-weak"),
        pytest.param({"if_none_match": "*"}, id="inm-star"),
        pytest.param({"if_modified_since": LAST_MODIFIED}, id="ims-equal"),
        pytest.param({"if_modified_since": LATER}, id="ims-later"),
    ],
)
def test_plan_download_not_modified_is_304_with_etag_and_no_body(method: str, conditions: Headers) -> None:
    headers = check_no_body(plan(method, **conditions), 304)
    assert headers["last-modified"] == LAST_MODIFIED
    # §15.4.5: no content; a Content-Length, if any, must be the length a 200 would have had.
    assert headers.get("content-length", str(len(DATA))) == str(len(DATA))
    assert "content-range" not in headers


@pytest.mark.parametrize(
    "conditions",
    [
        pytest.param({"if_match": '"stale"'}, id="if-match-stale"),
        pytest.param({"if_match": f"W/{ETAG}"}, id="if-match-weak"),
        pytest.param({"if_match": "garbage"}, id="if-match-malformed"),
        pytest.param({"if_unmodified_since": EARLIER}, id="ius-earlier"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_plan_download_failed_precondition_is_412(method: str, conditions: Headers) -> None:
    headers = check_no_body(plan(method, **conditions), 412)
    assert "content-range" not in headers


def test_plan_download_if_match_pass_serves_the_range() -> None:
    check_single(plan(range_header="bytes=0-99", if_match=ETAG), 0, 99)


def test_plan_download_if_unmodified_since_pass_serves_the_range() -> None:
    check_single(plan(range_header="bytes=0-99", if_unmodified_since=LAST_MODIFIED), 0, 99)


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        # §13.2.2: preconditions are evaluated before Range and If-Range.
        pytest.param(
            {"if_match": '"stale"', "range_header": "bytes=0-99"}, 412, id="if-match-fail-beats-range"
        ),
        pytest.param(
            {"if_match": '"stale"', "range_header": "bytes=5000-"}, 412, id="if-match-fail-beats-416"
        ),
        pytest.param(
            {"if_match": '"stale"', "range_header": "bytes=0-99", "if_range": ETAG},
            412,
            id="if-match-fail-beats-if-range",
        ),
        pytest.param({"if_match": '"stale"', "if_none_match": ETAG}, 412, id="if-match-fail-beats-304"),
        pytest.param(
            {"if_unmodified_since": EARLIER, "range_header": "bytes=0-99"}, 412, id="ius-fail-beats-range"
        ),
        pytest.param({"if_none_match": ETAG, "range_header": "bytes=0-99"}, 304, id="304-beats-range"),
        pytest.param({"if_none_match": ETAG, "range_header": "bytes=5000-"}, 304, id="304-beats-416"),
        pytest.param(
            {"if_modified_since": LATER, "range_header": "bytes=0-99"}, 304, id="ims-304-beats-range"
        ),
    ],
)
def test_plan_download_preconditions_come_before_range(kwargs: Headers, status: int) -> None:
    check_no_body(plan(**kwargs), status)


def test_plan_download_if_none_match_mismatch_serves_the_range() -> None:
    check_single(plan(range_header="bytes=0-99", if_none_match='"stale"'), 0, 99)
