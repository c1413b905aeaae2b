"""The hashing of a resumable upload to a bucket (app/storage/bucket_resumable.py), without a
bucket: the running SHA-256 saved and continued elsewhere (running_sha256.py), and an append's
hashes moved on as parts are sent and tails recorded, never hashing a byte twice or skipping one,
whatever the chunking and wherever the upload is continued by another process. The upload itself,
against the real engine: tests/clients/test_bucket_resumable.py.
"""

from __future__ import annotations

import base64
import hashlib
import zlib

from hypothesis import given
from hypothesis import strategies as st

from app.storage.bucket_resumable import ObjectAppend, UploadState, _saved
from app.storage.running_sha256 import RunningSha256
from app.storage.s3_multipart import Part
from app.storage.upload_store import Resumable

PART = 7  # a part size small enough for hypothesis to cross it often


def _upload() -> Resumable:
    return Resumable("id", "a/b.bin", "s/id/state.json", None, 0, None, 0, 1, 2, "owner", {"tus": "x"})


def test_a_saved_sha256_continues_to_the_same_digest() -> None:
    data = bytes(range(256)) * 1000
    first = RunningSha256()
    first.update(data[:12345])
    continued = RunningSha256(first.saved())
    continued.update(bytearray(data[12345:200000]))
    continued.update(memoryview(data)[200000:])
    assert continued.digest() == hashlib.sha256(data).digest()
    assert first.digest() == hashlib.sha256(data[:12345]).digest()  # digest() does not end it


def test_the_state_survives_its_json() -> None:
    state = UploadState(_upload(), "mp", [Part(1, '"e1"', 5)], 3, "s/id/tail-9", "c2hh", 77, "l", 5.0)
    again = UploadState.load(state.dump())
    assert again == state


def _resumed(state: UploadState, tail: bytes) -> ObjectAppend:
    """An append continued from a recorded state, as another process begins it."""
    offset = state.upload.offset
    sha = RunningSha256(base64.b64decode(state.sha256 or ""))
    return ObjectAppend(state, "", bytearray(tail), state.parts_size, offset, sha, state.crc32, offset)


@given(
    chunks=st.lists(st.binary(min_size=0, max_size=20), max_size=30),
    records=st.lists(st.booleans(), max_size=30),
)
def test_any_chunking_and_any_resume_points_hash_every_byte_once(
    chunks: list[bytes], records: list[bool]
) -> None:
    state = UploadState(_upload(), sha256=_saved(RunningSha256()))
    append = _resumed(state, b"")
    for n, chunk in enumerate(chunks):
        append.buffer += chunk
        while len(append.buffer) >= PART:  # a part sent
            append.hash_to(append.parts_size + PART)
            append.kept.parts.append(Part(len(append.kept.parts) + 1, "e", PART))
            del append.buffer[:PART]
            append.parts_size += PART
        if n < len(records) and records[n]:  # recorded, then continued by another process
            append.hash_to(append.size)
            state.sha256, state.crc32 = _saved(append.sha256), append.crc32  # type: ignore[arg-type]
            state.upload.offset = append.size
            append = _resumed(state, bytes(append.buffer))
    append.hash_to(append.size)
    data = b"".join(chunks)
    assert append.sha256 is not None and append.sha256.digest() == hashlib.sha256(data).digest()
    assert append.crc32 == zlib.crc32(data)
