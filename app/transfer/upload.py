"""Request bodies to disk: streamed in CHUNK_SIZE writes, bounded, aborted cleanly.

`stream_body` feeds a raw body (PUT) into one `AtomicWrite`; `MultipartUpload` runs
python-multipart's streaming parser over a multipart/form-data body (POST) and writes each file
part straight into its own `AtomicWrite` as it arrives. Blocking file work runs in worker threads;
memory stays near one chunk per file being written, whatever the body size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import Message, Receive

from app.errors import BadRequest, PayloadTooLarge
from app.http.digests import ALGORITHMS, WANT_CONTENT_DIGEST, DigestFieldError, parse_digest_field
from app.storage.digests import DigestBuilder
from app.storage.writes import AtomicWrite
from app.transfer.activity import Activity

MAX_PARTS = 1000
MAX_FIELD_BYTES = 64 * 1024  # non-file form fields are read and dropped, but never without bound


class ClientGone(Exception):
    """The client disconnected before the body was complete."""


class EarlyBody:
    """A request body whose first read starts at once, while the request is still being prepared
    (an upload's file opened, say): uvicorn answers `Expect: 100-continue` at the first receive(),
    so the client's bytes are on their way meanwhile instead of after. `receive` hands that first
    message, then reads on; used as a context manager, a first read nobody took is given up on
    leaving (the request ended without reading its body)."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._first: asyncio.Future[Message] | None = asyncio.ensure_future(receive())

    async def receive(self) -> Message:
        if self._first is not None:
            first, self._first = self._first, None
            return await first
        return await self._receive()

    def cancel(self) -> None:
        if self._first is not None:
            self._first.cancel()
            self._first = None

    def __enter__(self) -> EarlyBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


async def body_chunks(
    receive: Receive, limit: int, activity: Activity | None = None
) -> AsyncGenerator[bytes, None]:
    """The request body as it arrives; raises PayloadTooLarge past `limit`, ClientGone if cut.
    `activity` is marked from the first read until the body ends or the reader is closed (close
    it with `contextlib.aclosing` when it may be left unfinished)."""
    total = 0
    with activity.transfer() if activity is not None else contextlib.nullcontext():
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk: bytes = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge()
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


class _Buffered:
    """Collects small pieces into CHUNK_SIZE writes, each done in a worker thread."""

    def __init__(self, write: AtomicWrite, chunk_size: int) -> None:
        self.write = write
        self.chunk_size = chunk_size
        self.buffer = bytearray()

    async def add(self, data: bytes) -> None:
        if not self.buffer and len(data) >= self.chunk_size:
            await self._store(data)  # a whole chunk already (a PUT's messages, protocol.py): no copy
            return
        self.buffer += data
        if len(self.buffer) >= self.chunk_size:
            await self.flush()

    async def flush(self) -> None:
        if self.buffer:
            data, self.buffer = self.buffer, bytearray()
            await self._store(data)

    async def _store(self, data: bytes | bytearray) -> None:
        # Written and hashed at once, on two threads (both release the GIL): an upload's digest
        # costs no extra read and little extra time.
        await asyncio.to_thread(self.write.write_hashed, data)


async def stream_body(chunks: AsyncIterator[bytes], write: AtomicWrite, chunk_size: int) -> None:
    buffered = _Buffered(write, chunk_size)
    async for chunk in chunks:
        await buffered.add(chunk)
    await buffered.flush()


def multipart_boundary(content_type: str | None) -> bytes:
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary or len(boundary) > 200:
        raise BadRequest("expected multipart/form-data with a boundary")
    return boundary


def base_name(raw: bytes) -> str:
    """A multipart filename reduced to a base name: never a path (RFC 7578 §4.2)."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("file names must be UTF-8") from exc
    return name.replace("\\", "/").rsplit("/", 1)[-1].strip()


def expected_digests(fields: Mapping[str, str]) -> dict[str, bytes]:
    """The digests a client sent to have its upload verified, from `Content-Digest` and
    `Repr-Digest` (RFC 9530; the two describe the same bytes for an upload that is not
    content-coded), by algorithm. A malformed field, or one with no algorithm Ferry computes, is
    refused (400) rather than ignored: the client asked for a check Ferry could not make."""
    found: dict[str, bytes] = {}
    for name in ("content-digest", "repr-digest"):
        value = fields.get(name)
        if value is None:
            continue
        try:
            parsed = parse_digest_field(value)
        except DigestFieldError as exc:
            raise BadRequest(f"{name}: {exc}") from exc
        if not parsed:
            raise BadRequest(
                f"{name}: no supported algorithm (sha-256, sha-512)",
                {"want-content-digest": WANT_CONTENT_DIGEST},
            )
        for algorithm, digest in parsed.items():
            if found.setdefault(algorithm, digest) != digest:
                raise BadRequest("Content-Digest and Repr-Digest disagree")
    return found


def extra_algorithms(expected: dict[str, bytes]) -> tuple[str, ...]:
    """The hashlib names to compute beside SHA-256 to check `expected`."""
    return tuple(ALGORITHMS[a] for a in expected if a != "sha-256")


def verify(builder: DigestBuilder, expected: dict[str, bytes], what: str) -> None:
    for algorithm, digest in expected.items():
        if not hmac.compare_digest(builder.digest(ALGORITHMS[algorithm]), digest):
            raise BadRequest(f"{what} does not match its {algorithm} digest; nothing was stored")


async def hashed(chunks: AsyncIterator[bytes], builder: DigestBuilder) -> AsyncIterator[bytes]:
    """The chunks unchanged, each hashed on its way (the raw body of a multipart request)."""
    async for chunk in chunks:
        builder.update(chunk)
        yield chunk


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    filename: str | None = None
    buffered: _Buffered | None = None
    expected: dict[str, bytes] = field(default_factory=dict)


class MultipartUpload:
    """Parses a multipart/form-data body as it streams in; `open_file(name)` starts each file."""

    def __init__(
        self, boundary: bytes, open_file: Callable[[str, tuple[str, ...]], AtomicWrite], chunk_size: int
    ) -> None:
        self.open_file = open_file
        self.chunk_size = chunk_size
        self.files: list[AtomicWrite] = []
        self.expected: list[dict[str, bytes]] = []  # per file: digests its part's headers gave
        self._ops: list[tuple[str, _Part, bytes]] = []
        self._part = _Part()
        self._field: bytes = b""
        self._value: bytes = b""
        self._parts = 0
        self._field_bytes = 0
        callbacks: Any = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }
        self.parser = MultipartParser(boundary, callbacks)

    async def feed(self, chunks: AsyncIterator[bytes]) -> None:
        async for chunk in chunks:
            self.parser.write(chunk)
            await self._run_ops()
        self.parser.finalize()
        await self._run_ops()

    async def _run_ops(self) -> None:
        ops, self._ops = self._ops, []
        for op, part, data in ops:
            if op == "open":
                assert part.filename is not None
                write = await asyncio.to_thread(
                    self.open_file, part.filename, extra_algorithms(part.expected)
                )
                self.files.append(write)
                self.expected.append(part.expected)
                part.buffered = _Buffered(write, self.chunk_size)
            elif op == "data" and part.buffered is not None:
                await part.buffered.add(data)
            elif op == "end" and part.buffered is not None:
                await part.buffered.flush()

    # python-multipart callbacks (synchronous): they only queue work for `_run_ops`.
    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise BadRequest(f"more than {MAX_PARTS} parts")
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._part.headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._part.headers.get(b"content-disposition"))
        if disposition != b"form-data":
            raise BadRequest("each part needs Content-Disposition: form-data")
        raw = params.get(b"filename")
        name = None if raw is None else base_name(raw)
        if name:  # a browser sends filename="" for an empty file input: nothing to store
            self._part.filename = name
            fields = {k.decode("latin-1"): v.decode("latin-1") for k, v in self._part.headers.items()}
            self._part.expected = expected_digests(fields)
            self._ops.append(("open", self._part, b""))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part.filename is not None:
            self._ops.append(("data", self._part, bytes(data[start:end])))
            return
        self._field_bytes += end - start
        if self._field_bytes > MAX_FIELD_BYTES:
            raise BadRequest("form fields are too large")

    def _on_part_end(self) -> None:
        if self._part.filename is not None:
            self._ops.append(("end", self._part, b""))
