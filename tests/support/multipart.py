"""Multipart bodies: form-data built for uploads; planned byteranges bodies turned into bytes and
parsed back.

The parsing is python-multipart's streaming `MultipartParser`, an independent implementation of
RFC 2046 framing, so a body Ferry frames wrongly does not parse back to the requested bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser

from app.http.byteranges import Segment
from app.http.ranges import ByteRange

_BOUNDARY = re.compile(r"multipart/byteranges; boundary=([0-9A-Za-z'()+_,\-./:=?]{1,70})")


def materialise(body: list[Segment], data: bytes) -> bytes:
    """The bytes a body of header bytes and file ranges stands for, for a file holding `data`."""
    return b"".join(data[s.start : s.stop] if isinstance(s, ByteRange) else s for s in body)


@dataclass
class Part:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""


def boundary_of(content_type: str) -> str:
    match = _BOUNDARY.fullmatch(content_type)
    assert match is not None, content_type
    return match.group(1)


def parse_byteranges(body: bytes, boundary: str) -> list[Part]:
    """The parts of a multipart body; fails unless the closing delimiter is reached."""
    parts: list[Part] = []
    field_name = bytearray()
    field_value = bytearray()
    ended: list[bool] = []

    def on_part_begin() -> None:
        parts.append(Part())

    def on_part_data(chunk: bytes, start: int, end: int) -> None:
        parts[-1].data += chunk[start:end]

    def on_header_field(chunk: bytes, start: int, end: int) -> None:
        field_name.extend(chunk[start:end])

    def on_header_value(chunk: bytes, start: int, end: int) -> None:
        field_value.extend(chunk[start:end])

    def on_header_end() -> None:
        name = field_name.decode("latin-1").lower()
        assert name not in parts[-1].headers, f"repeated {name}"
        parts[-1].headers[name] = field_value.decode("latin-1")
        field_name.clear()
        field_value.clear()

    def on_end() -> None:
        ended.append(True)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_end": on_end,
        },
    )
    assert parser.write(body) == len(body)
    parser.finalize()
    assert ended == [True], "no closing delimiter"
    return parts


def multipart_body(boundary: str, parts: list[tuple[str, bytes, bytes]]) -> bytes:
    """A multipart/form-data body of file parts (field name, raw filename bytes, content)."""
    out = b""
    for name, filename, content in parts:
        out += f"--{boundary}\r\n".encode()
        out += f'Content-Disposition: form-data; name="{name}"; filename="'.encode() + filename + b'"\r\n'
        out += b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()
