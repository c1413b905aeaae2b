"""Byte-range parsing and Content-Range formatting (RFC 9110 §14). Pure: no I/O, no framework imports.

`plan_ranges` turns a Range header and a representation size into exactly one of three outcomes:

- `Ignore`: serve the whole representation with 200 (no header, unknown unit, invalid syntax,
  too many ranges, or ranges that add up to more than the file);
- `Unsatisfiable`: 416 with ``Content-Range: bytes */size``;
- `Partial`: 206 with the satisfiable ranges, sorted and coalesced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Longer digit strings than this are "bigger than any file"; int() on them is never needed, which
# keeps huge numbers (CVE-2017-7529, MS15-034 style overflows) from costing anything.
_MAX_DIGITS = 18
_HUGE = 10**_MAX_DIGITS
_DIGITS = frozenset("0123456789")
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A half-open byte interval [start, stop)."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class Ignore:
    """Serve the whole representation (200)."""


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """416 Range Not Satisfiable, with ``Content-Range: bytes */size``."""

    size: int


@dataclass(frozen=True, slots=True)
class Partial:
    """206 Partial Content: one range (plain) or several (multipart/byteranges)."""

    ranges: tuple[ByteRange, ...]


RangePlan = Ignore | Unsatisfiable | Partial

# A parsed range-spec before it meets a size: (first, last) with None for an open end, or a
# suffix length as (None, n).
_Spec = tuple[int | None, int | None]


def _plain_int(text: str) -> int | None:
    """ASCII digits only: int() would also take '+1', ' 1', '1_0' and non-ASCII digits."""
    if not text or not _DIGITS.issuperset(text):
        return None
    digits = text.lstrip("0") or "0"
    return _HUGE if len(digits) > _MAX_DIGITS else int(digits)


def _parse_spec(spec: str) -> _Spec | None:
    first_text, dash, last_text = spec.partition("-")
    if not dash:
        return None
    if not first_text:
        # RFC 9110 §14.1.1: suffix-range = "-" suffix-length
        suffix = _plain_int(last_text)
        return None if suffix is None else (None, suffix)
    first = _plain_int(first_text)
    if first is None:
        return None
    if not last_text:
        return (first, None)
    last = _plain_int(last_text)
    # RFC 9110 §14.1.1: a range-spec with last-pos < first-pos is invalid. Compare the digits, not
    # the capped values, so that two huge numbers are still ordered.
    if last is None or _digits_key(last_text) < _digits_key(first_text):
        return None
    return (first, last)


def _digits_key(text: str) -> tuple[int, str]:
    """Orders strings of ASCII digits by their value without converting them."""
    digits = text.lstrip("0")
    return (len(digits), digits)


def parse_range_header(header: str, *, max_ranges: int) -> list[_Spec] | None:
    """The range-specs of a ``bytes`` Range header, or None if it is to be ignored."""
    unit, eq, range_set = header.partition("=")
    # RFC 9110 §14.2: a server MUST ignore a Range header field with a unit it does not understand.
    if not eq or unit.strip(_OWS).lower() != "bytes":
        return None
    specs: list[_Spec] = []
    for element in range_set.split(","):
        element = element.strip(_OWS)
        if not element:
            continue  # RFC 9110 §5.6.1.2: empty list elements are ignored
        if len(specs) == max_ranges:
            return None  # too many ranges: serve the whole file
        spec = _parse_spec(element)
        if spec is None:
            return None
        specs.append(spec)
    return specs or None


def _resolve(spec: _Spec, size: int) -> ByteRange | None:
    first, last = spec
    if first is None:
        assert last is not None
        # RFC 9110 §14.1.3: a suffix longer than the representation selects all of it;
        # a zero-length suffix is unsatisfiable.
        return ByteRange(max(0, size - last), size) if last > 0 and size > 0 else None
    if first >= size:
        return None
    # RFC 9110 §14.1.2: a last-pos at or past the end is taken as size - 1.
    stop = size if last is None else min(last + 1, size)
    return ByteRange(first, stop)


def coalesce(ranges: list[ByteRange]) -> tuple[ByteRange, ...]:
    """Sort ranges and merge those that overlap or touch (RFC 9110 §14.6 allows it)."""
    merged: list[ByteRange] = []
    for r in sorted(ranges, key=lambda r: r.start):
        if merged and r.start <= merged[-1].stop:
            if r.stop > merged[-1].stop:
                merged[-1] = ByteRange(merged[-1].start, r.stop)
        else:
            merged.append(r)
    return tuple(merged)


def plan_ranges(header: str | None, size: int, *, max_ranges: int) -> RangePlan:
    """Decide how to answer a GET with this Range header for a representation of `size` bytes."""
    if header is None:
        return Ignore()
    specs = parse_range_header(header, max_ranges=max_ranges)
    if specs is None:
        return Ignore()
    satisfiable = [r for r in (_resolve(spec, size) for spec in specs) if r is not None]
    if not satisfiable:
        return Unsatisfiable(size)
    # Ranges adding up to more than the file are an amplification attempt (CVE-2011-3192):
    # answer with the whole file once instead.
    if sum(r.length for r in satisfiable) > size:
        return Ignore()
    return Partial(coalesce(satisfiable))


# The Range a player, a segmented downloader or a resuming client sends: one range-spec, no
# whitespace, the unit spelled "bytes". Each position has at most _MAX_DIGITS digits.
_ONE_RANGE = re.compile(rb"bytes=([0-9]{0,18})-([0-9]{0,18})")


def one_range(header: bytes, size: int) -> ByteRange | None:
    """The one range a simple Range field selects, when `plan_ranges` would answer it with that
    range alone; None for any other field (ask `plan_ranges`). What a request answered many times
    a second carries, decided without splitting, stripping and sorting (tests/unit/test_ranges.py
    holds the two to the same answers)."""
    found = _ONE_RANGE.fullmatch(header)
    if found is None:
        return None
    first_text, last_text = found.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        return ByteRange(max(0, size - suffix), size) if suffix and size else None
    first = int(first_text)
    if first >= size:
        return None
    if not last_text:
        return ByteRange(first, size)
    last = int(last_text)
    return ByteRange(first, min(last + 1, size)) if last >= first else None


def format_content_range(r: ByteRange, size: int) -> str:
    """``bytes first-last/size`` for one served range (RFC 9110 §14.4)."""
    return f"bytes {r.start}-{r.stop - 1}/{size}"


def format_unsatisfied_range(size: int) -> str:
    """``bytes */size`` for a 416 answer (RFC 9110 §14.4)."""
    return f"bytes */{size}"
