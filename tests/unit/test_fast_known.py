"""The fast path's answers from what an earlier request found (app/routes/fast_files.py `_Known`):
the same bytes and fields as a first answer, a file changed or replaced answered anew, a path
that stopped being safe refused, and nothing personal (a token, a precondition, a signed link)
ever answered from another request's findings."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from app.http.signing import Link, link_target
from app.main import create_app
from app.routes.fast_files import MAX_BODY, FastFiles
from app.storage.values import FileDigest, identity
from app.transfer.page_cache import PAGE
from app.transfer.spans import FileSpan
from tests.support.inprocess import make_settings

pytestmark = pytest.mark.anyio  # on a running loop, as the protocol asks

DATA = bytes(range(256)) * 64  # 16 KiB


def _fast(tmp_path: Path, **settings: Any) -> tuple[FastFiles, Path]:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    app = create_app(make_settings(root, index_path=tmp_path / "index.sqlite3", watch=False, **settings))
    assert app.fast is not None
    return app.fast, root


def _write(fast: FastFiles, path: Path, data: bytes) -> None:
    """The file, with its digest known (as the fast path needs to answer it)."""
    path.write_bytes(data)
    digest = FileDigest(hashlib.sha256(data).digest())
    fast.downloads.integrity.digests.remember(identity(os.stat(path)), digest)


def _scope(target: str, *fields: tuple[bytes, bytes], method: str = "GET") -> dict[str, Any]:
    path, _, query = target.partition("?")
    return {
        "type": "http",
        "method": method,
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 40000),
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1"), *fields],
    }


def _ask(fast: FastFiles, scope: dict[str, Any]) -> tuple[int, dict[bytes, bytes], bytes] | None:
    found = fast.answer(scope)
    if found is None:
        return None
    status, fields, body = found
    assert isinstance(body, bytes | bytearray)
    return status, dict(fields), bytes(body)


async def test_a_repeated_request_is_answered_as_the_first_was(tmp_path: Path) -> None:
    fast, root = _fast(tmp_path)
    _write(fast, root / "f.bin", DATA)
    for scope in (
        _scope("/files/f.bin"),
        _scope("/files/f.bin", method="HEAD"),
        _scope("/files/f.bin?download=1"),
        _scope("/files/f.bin", (b"range", b"bytes=10-19")),
    ):
        first = _ask(fast, scope)
        assert first is not None
        assert (scope["method"], scope["path"], scope["query_string"]) in fast._known
        for _ in range(3):
            assert _ask(fast, scope) == first
    ranged = _ask(fast, _scope("/files/f.bin", (b"range", b"bytes=100-")))
    assert ranged is not None and ranged[0] == 206 and ranged[2] == DATA[100:]
    assert ranged[1][b"content-range"] == b"bytes 100-16383/16384"


async def test_a_changed_or_replaced_file_is_answered_anew(tmp_path: Path) -> None:
    fast, root = _fast(tmp_path)
    _write(fast, root / "f.bin", DATA)
    before = _ask(fast, _scope("/files/f.bin"))
    assert before is not None
    later = time.time() + 5  # a modification time the old version cannot have
    (root / "f.bin").write_bytes(DATA[::-1])
    os.utime(root / "f.bin", (later, later))
    digest = FileDigest(hashlib.sha256(DATA[::-1]).digest())
    fast.downloads.integrity.digests.remember(identity(os.stat(root / "f.bin")), digest)
    after = _ask(fast, _scope("/files/f.bin"))
    assert after is not None and after[2] == DATA[::-1]
    assert after[1][b"etag"] != before[1][b"etag"]
    (root / "f.bin").unlink()
    assert _ask(fast, _scope("/files/f.bin")) is None  # the app answers 404


async def test_a_name_that_became_a_link_outside_the_root_is_refused(tmp_path: Path) -> None:
    fast, root = _fast(tmp_path)
    _write(fast, root / "f.bin", DATA)
    assert _ask(fast, _scope("/files/f.bin")) is not None
    outside = tmp_path / "secret.bin"
    _write(fast, outside, b"secret" * 100)
    (root / "f.bin").unlink()
    (root / "f.bin").symlink_to(outside)
    assert _ask(fast, _scope("/files/f.bin")) is None


async def test_personal_requests_are_never_answered_from_findings(tmp_path: Path) -> None:
    fast, root = _fast(tmp_path)
    _write(fast, root / "f.bin", DATA)
    first = _ask(fast, _scope("/files/f.bin"))
    assert first is not None
    etag = first[1][b"etag"]
    personal = [
        _scope("/files/f.bin", (b"if-none-match", etag)),
        _scope("/files/f.bin", (b"range", b"bytes=0-0"), (b"if-range", b'"old"')),
        _scope("/files/f.bin", (b"authorization", b"Bearer nothing")),
        _scope("/files/f.bin", (b"range", b"bytes=0-0"), (b"range", b"bytes=5-5")),
    ]
    fast._known.clear()
    answers = [_ask(fast, scope) for scope in personal]
    assert fast._known == {}
    assert answers[0] is not None and answers[0][0] == 304
    assert answers[1] is not None and answers[1][0] == 200  # If-Range missed: the whole file
    assert answers[2] is not None and answers[2][0] == 200


async def test_signed_links_are_checked_every_time(tmp_path: Path) -> None:
    key = "k" * 32
    fast, root = _fast(tmp_path, download_auth="signed", signing_keys=[key])
    _write(fast, root / "f.bin", DATA)
    target = link_target(key.encode(), Link(path="/f.bin", expires=int(time.time()) + 2))
    assert _ask(fast, _scope(target)) is not None
    assert _ask(fast, _scope("/files/f.bin")) is None  # no link: the app answers 401
    assert fast._known == {}
    expired = link_target(key.encode(), Link(path="/f.bin", expires=int(time.time()) - 1))
    assert _ask(fast, _scope(expired)) is None  # the app answers 410


async def test_an_answer_sent_before_the_digest_was_known_is_not_kept(tmp_path: Path) -> None:
    fast, root = _fast(tmp_path)
    (root / "f.bin").write_bytes(DATA)
    ident = identity(os.stat(root / "f.bin"))
    digests = fast.downloads.integrity.digests
    assert await digests.get(ident, wait=True) is None  # looked up, not found: answered without
    early = _ask(fast, _scope("/files/f.bin"))
    assert early is not None and b"repr-digest" not in early[1]
    assert fast._known == {}
    digests.remember(ident, FileDigest(hashlib.sha256(DATA).digest()))
    later = _ask(fast, _scope("/files/f.bin"))
    assert later is not None and b"repr-digest" in later[1]
    assert _ask(fast, _scope("/files/f.bin")) == later


@pytest.mark.parametrize("zero_copy", ["auto", "off"])
async def test_a_span_from_a_page_is_handed_over_to_send_with_sendfile(
    tmp_path: Path, zero_copy: str
) -> None:
    """With `spans` (the front on plain TCP), a body of one span starting on a page, or starting
    mid-page and 16 KiB or longer, is a `FileSpan` for the caller to send; a shorter range
    starting mid-page, a multipart body, FERRY_ZERO_COPY=off or a caller without spans get the
    bytes."""
    fast, root = _fast(tmp_path, zero_copy=zero_copy)
    data = bytes(range(256)) * 256  # 64 KiB
    _write(fast, root / "f.bin", data)
    cases = [
        (_scope("/files/f.bin"), 0, 65536),
        (_scope("/files/f.bin", (b"range", b"bytes=8192-")), 8192, 65536 - 8192),
        (_scope("/files/f.bin", (b"range", b"bytes=100-199")), None, 100),
        (_scope("/files/f.bin", (b"range", b"bytes=100-16483")), 100, 16384),
        (_scope("/files/f.bin", (b"range", b"bytes=100-16482")), None, 16383),
        (_scope("/files/f.bin", (b"range", b"bytes=0-9,20-29")), None, None),
    ]
    for scope, offset, count in cases:
        for spans in (True, False):
            found = fast.answer(scope, spans=spans)
            assert found is not None
            body = found[2]
            if spans and zero_copy == "auto" and offset is not None:
                assert isinstance(body, FileSpan) and body.on_end is None  # sent at once, not streamed
                assert (body.offset, body.count) == (offset, count)
                try:
                    assert os.pread(body.fd, body.count, body.offset) == data[offset : offset + body.count]
                finally:
                    if not body.shared:  # (a kept descriptor is its keeper's to close)
                        os.close(body.fd)
            else:
                assert isinstance(body, bytes | bytearray)
                assert count is None or len(body) == count
    found = fast.answer(_scope("/files/f.bin", method="HEAD"), spans=True)
    assert found is not None and found[2] == b""  # no body, no span


async def test_a_file_asked_again_is_sent_from_its_kept_descriptor_while_unchanged(tmp_path: Path) -> None:
    """The second answer from a kept answer keeps its file open (app/storage/kept.py); the next
    ones send from that descriptor, shared (never the caller's to close), until the file changes;
    a stream sends from a dup of its own."""
    fast, root = _fast(tmp_path)
    data = bytes(range(256)) * 256  # 64 KiB
    _write(fast, root / "f.bin", data)
    big = os.urandom(MAX_BODY + PAGE)
    _write(fast, root / "big.bin", big)
    first = fast.answer(_scope("/files/f.bin"), spans=True)
    assert first is not None and isinstance(first[2], FileSpan) and not first[2].shared
    os.close(first[2].fd)
    spans = []
    for _ in range(3):
        found = fast.answer(_scope("/files/f.bin"), spans=True)
        assert found is not None and isinstance(found[2], FileSpan)
        spans.append(found[2])
    assert len(fast.kept) == 1 and all(span.shared for span in spans)
    assert len({span.fd for span in spans}) == 1
    assert os.pread(spans[0].fd, len(data), 0) == data
    ranged = fast.answer(_scope("/files/f.bin", (b"range", b"bytes=4096-8191")), spans=True)
    assert ranged is not None and isinstance(ranged[2], FileSpan) and ranged[2].fd == spans[0].fd

    streams = []
    for _ in range(3):
        found = fast.answer(_scope("/files/big.bin"), spans=True)
        assert found is not None and isinstance(found[2], FileSpan) and found[2].on_end is not None
        streams.append(found[2])
    assert len(fast.kept) == 2 and not any(stream.shared for stream in streams)
    assert len({stream.fd for stream in streams}) == 3  # each its own, none the kept one
    for stream in streams:
        assert os.pread(stream.fd, 16, len(big) - 16) == big[-16:]
        os.close(stream.fd)
        assert stream.on_end is not None
        stream.on_end(stream.count, False)  # (the slot and the activity mark let go)

    (root / "f.bin").write_bytes(data[::-1])  # the same size; a new change time at least
    fast.downloads.integrity.digests.remember(
        identity(os.stat(root / "f.bin")), FileDigest(hashlib.sha256(data[::-1]).digest())
    )
    found = fast.answer(_scope("/files/f.bin"), spans=True)
    assert found is not None and isinstance(found[2], FileSpan)
    assert os.pread(found[2].fd, len(data), 0) == data[::-1]
    if not found[2].shared:
        os.close(found[2].fd)
    fast.kept.close()
    assert len(fast.kept) == 0
