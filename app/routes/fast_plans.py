"""What the fast path (fast_files.py) keeps between requests: a plan with its header fields
encoded for the wire (`Planned`), and what answering a method, path and query found (`Known`)."""

from __future__ import annotations

import os

from app.http.byteranges import Segment
from app.http.plan import FileFacts, ResponsePlan
from app.http.ranges import ByteRange, Ignore, Partial, RangePlan, one_range, plan_ranges
from app.storage.paths import SafePath
from app.transfer.uvicorn_adapter import Framed, sendable


class Known:
    """What answering a method, path and query found, for the next such request: the path to
    open (through `open_beneath` again, every time), the file version found (reused only while
    the file opened is that version), its facts and its plain answer. Kept only when the access
    came from no credential and no link (a link's validity depends on the time), and once the
    file's digest is known (the fields sent without it change when it is)."""

    __slots__ = ("safe", "raw", "version", "facts", "whole")

    def __init__(self, safe: SafePath, version: tuple[int, int, int, int], facts: FileFacts, whole: Planned):
        self.safe, self.version, self.facts, self.whole = safe, version, facts, whole
        self.raw = os.fsencode(safe)  # (what its file is kept open under: app/storage/kept.py)


class Planned:
    """A plan with its header fields encoded and framed for the wire."""

    __slots__ = ("status", "fields", "body", "length", "_partial")

    def __init__(self, status: int, fields: Framed, body: list[Segment], length: int) -> None:
        self.status, self.fields, self.body, self.length = status, fields, body, length
        self._partial: Framed | None = None  # a 200's fields but its Content-Length (`one`)

    @classmethod
    def of(cls, plan: ResponsePlan) -> Planned | None:
        """None for a field value uvicorn would refuse to send (the app then answers, as it does)."""
        fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in plan.headers]
        if not all(sendable(value) for _, value in fields):
            return None
        return cls(plan.status, Framed(fields), plan.body, plan.content_length)

    def ranged(self, wanted: RangePlan) -> Planned | None:
        """This plain 200's answer to a GET whose only planned field is a Range that selects one
        range (None otherwise): `plan_download` answers it with the 200's fields, its
        Content-Length last, that one replaced by Content-Range and Content-Length
        (tests/unit/test_fast_ranges.py holds the two to the same answer)."""
        if not isinstance(wanted, Partial) or len(wanted.ranges) != 1:
            return self if isinstance(wanted, Ignore) else None
        return self.one(wanted.ranges[0])

    def for_range(self, field: bytes, max_ranges: int) -> Planned | None:
        """`ranged` for this Range field: a simple one (`one_range`) without the general parser."""
        only = one_range(field, self.length)
        if only is not None:
            return self.one(only)
        return self.ranged(plan_ranges(field.decode("latin-1"), self.length, max_ranges=max_ranges))

    def one(self, only: ByteRange) -> Planned:
        """This plain 200's answer to a GET of the one range `only` (`ranged` of it): the 200's
        fields but the last, framed once per plan, then the range's two."""
        partial = self._partial
        if partial is None:
            partial = self._partial = Framed(self.fields[:-1])
        content_range = b"bytes %d-%d/%d" % (only.start, only.stop - 1, self.length)
        length = b"%d" % only.length
        fields = Framed(
            [*partial, (b"content-range", content_range), (b"content-length", length)],
            partial.framed + b"content-range: %s\r\ncontent-length: %s\r\n" % (content_range, length),
        )
        return Planned(206, fields, [only], only.length)
