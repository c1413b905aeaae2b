"""The fast path's answer to a GET with only a Range (app/routes/fast_files.py `Planned.ranged`)
is the planner's (app/http/plan.py `plan_download`), field for field, for any size and Range."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.http.conditional import Validators
from app.http.plan import DownloadRequest, FileFacts, integrity_headers, plan_download
from app.http.ranges import Partial, one_range, plan_ranges
from app.routes.fast_plans import Planned
from app.transfer.uvicorn_adapter import Framed, answer_head

MAX_RANGES = 8
_SPEC = st.one_of(
    st.tuples(st.integers(0, 400), st.integers(0, 400)).map(lambda p: f"{p[0]}-{p[1]}"),
    st.integers(0, 400).map(lambda n: f"{n}-"),
    st.integers(0, 400).map(lambda n: f"-{n}"),
    st.sampled_from(["0-0", "007-010", " 1-2 ", "1-x", "", "9" * 30 + "-", "-0", "5-4"]),
)
_RANGE = st.one_of(
    st.lists(_SPEC, min_size=1, max_size=3).map(lambda specs: "bytes=" + ",".join(specs)),
    st.sampled_from(["items=0-9", "BYTES=0-1", "bytes = 3-4", "bytes=", "bytes"]),
    st.text(max_size=20),
)


def _facts(size: int, described: bool) -> FileFacts:
    digests = {"sha-256": b"\x01" * 32} if described else {}
    link = '</files/x?meta4>; rel=describedby; type="application/metalink4+xml"' if described else None
    return FileFacts(
        size=size,
        validators=Validators(etag='"e-1"', last_modified=1_700_000_000),
        content_type="application/octet-stream",
        content_disposition="attachment",
        digests=digests,
        link=link,
        integrity=integrity_headers(digests, link),
    )


@settings(max_examples=600, deadline=None)
@given(size=st.integers(0, 300), header=_RANGE, described=st.booleans())
def test_one_range_from_the_plain_answer_is_the_planners(size: int, header: str, described: bool) -> None:
    facts = _facts(size, described)
    plain = Planned.of(plan_download(DownloadRequest("GET"), facts, max_ranges=MAX_RANGES, now=0))
    planned = Planned.of(plan_download(DownloadRequest("GET", header), facts, max_ranges=MAX_RANGES, now=0))
    assert plain is not None and planned is not None
    wanted = plan_ranges(header, size, max_ranges=MAX_RANGES)
    ranged = plain.ranged(wanted)
    if isinstance(wanted, Partial) and len(wanted.ranges) > 1:
        assert ranged is None  # several ranges: multipart, left to the planner
        return
    if ranged is None:
        assert planned.status == 416
        return
    assert (ranged.status, ranged.fields, ranged.body, ranged.length) == (
        planned.status,
        planned.fields,
        planned.body,
        planned.length,
    )
    assert ranged.fields.framed == planned.fields.framed  # the wire form kept with the fields
    only = one_range(header.encode(), size)
    if only is not None:  # the shortcut for a simple field: the same answer, twice (framed once)
        for _ in range(2):
            again = plain.one(only)
            assert (again.status, again.fields, again.fields.framed, again.body, again.length) == (
                planned.status,
                planned.fields,
                planned.fields.framed,
                planned.body,
                planned.length,
            )


_FIELD = st.tuples(st.binary(min_size=1, max_size=12).filter(lambda b: b":" not in b), st.binary(max_size=20))


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from([200, 206, 304, 412, 416]),
    defaults=st.lists(_FIELD, max_size=3),
    fields=st.lists(_FIELD, max_size=8),
    keep_alive=st.booleans(),
)
def test_framed_fields_frame_as_the_plain_list(
    status: int, defaults: list[tuple[bytes, bytes]], fields: list[tuple[bytes, bytes]], keep_alive: bool
) -> None:
    """A head framed from `Framed` fields is byte for byte the one framed from the list."""
    framed = Framed(fields)
    assert framed == fields
    assert answer_head(status, defaults, framed, keep_alive) == answer_head(
        status, defaults, fields, keep_alive
    )


def test_a_satisfiable_range_is_taken_from_the_plain_answer() -> None:
    facts = _facts(100, True)
    plain = Planned.of(plan_download(DownloadRequest("GET"), facts, max_ranges=MAX_RANGES, now=0))
    assert plain is not None
    ranged = plain.ranged(plan_ranges("bytes=10-19", 100, max_ranges=MAX_RANGES))
    assert ranged is not None and ranged.status == 206
    assert ranged.fields[-2:] == [(b"content-range", b"bytes 10-19/100"), (b"content-length", b"10")]
