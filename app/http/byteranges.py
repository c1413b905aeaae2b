"""multipart/byteranges framing (RFC 9110 §14.6). Pure: no I/O, no framework imports.

The body is a sequence of segments: part headers as bytes, then a file range, for each part, and
a closing delimiter. Content-Length is the sum of exactly what will be sent, never a hand count.
"""

from __future__ import annotations

import secrets

from app.http.ranges import ByteRange, format_content_range

Segment = bytes | ByteRange


def new_boundary() -> str:
    # 104 random bits, as browsers use (~96): a file's bytes cannot be crafted to contain it.
    return secrets.token_hex(13)


def multipart_segments(
    ranges: tuple[ByteRange, ...], size: int, content_type: str, boundary: str
) -> list[Segment]:
    """The body of a multipart/byteranges response as bytes and file-range segments."""
    segments: list[Segment] = []
    for i, r in enumerate(ranges):
        head = ("\r\n" if i else "") + (
            f"--{boundary}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Range: {format_content_range(r, size)}\r\n\r\n"
        )
        segments.append(head.encode("latin-1"))
        segments.append(r)
    segments.append(f"\r\n--{boundary}--\r\n".encode("latin-1"))
    return segments


def segments_length(segments: list[Segment]) -> int:
    return sum(s.length if isinstance(s, ByteRange) else len(s) for s in segments)
