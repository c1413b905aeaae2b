"""A small answer sent from an open file (app/transfer/spans.py) and when the fast path chooses one
(app/routes/fast_files.py): head and span arrive whole and in order over a real loopback socket,
what the socket cannot take waits in the transport, a file that ended early closes the
connection, and the file is always closed."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from app.storage.values import FileDigest, identity
from app.transfer.spans import FileSpan, send_span
from tests.support.inprocess import make_settings
from tests.support.transports import RecordingTransport

DATA = bytes(range(256)) * 1024  # 256 KiB
HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 65536\r\n\r\n"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the server's side, non-blocking as a transport's is; the client's side) over loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    with server, client:
        yield server, client


def _receive(client: socket.socket, count: int) -> bytes:
    client.settimeout(30)
    got = bytearray()
    while len(got) < count and (chunk := client.recv(1 << 20)):
        got += chunk
    return bytes(got)


def _span(path: Path, offset: int, count: int) -> FileSpan:
    return FileSpan(os.open(path, os.O_RDONLY), offset, count)


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_head_and_span_arrive_whole_and_the_file_is_closed(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    (tmp_path / "f").write_bytes(DATA)
    span = _span(tmp_path / "f", 4096, 65536)
    transport = RecordingTransport(server)
    assert send_span(server, transport, HEAD, span)
    assert transport.calls == []  # all of it went straight to the socket
    assert _receive(client, len(HEAD) + 65536) == HEAD + DATA[4096 : 4096 + 65536]
    assert _closed(span.fd)


def test_what_a_full_socket_does_not_take_waits_in_the_transport(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    big = DATA * 64  # 16 MiB: far more than the two buffers hold
    (tmp_path / "f").write_bytes(big)
    transport = RecordingTransport(server)
    assert send_span(server, transport, HEAD, _span(tmp_path / "f", 0, len(big)))
    queued = transport.written
    assert queued  # the rest, queued in order behind what the socket took
    direct = _receive(client, len(HEAD) + len(big) - len(queued))
    assert direct + queued == HEAD + big


def test_bytes_already_queued_keep_their_place(tmp_path: Path, pair: tuple[socket.socket, Any]) -> None:
    server, _ = pair
    (tmp_path / "f").write_bytes(DATA)

    class Busy(RecordingTransport):
        def get_write_buffer_size(self) -> int:
            return 10  # an earlier answer still queued: this one must queue behind it

    transport = Busy(server)
    assert send_span(server, transport, HEAD, _span(tmp_path / "f", 0, 8192))
    assert transport.written == HEAD + DATA[:8192]


def test_a_file_that_ended_early_closes_the_connection(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    (tmp_path / "f").write_bytes(DATA[:1000])  # the answer promised 65536 bytes
    span = _span(tmp_path / "f", 0, 65536)
    assert not send_span(server, RecordingTransport(server), HEAD, span)
    assert _receive(client, len(HEAD) + 1000) == HEAD + DATA[:1000]
    assert _closed(span.fd)


def test_a_gone_client_closes_the_connection(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    server, client = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close with a reset
    client.close()
    (tmp_path / "f").write_bytes(DATA)
    span = _span(tmp_path / "f", 0, 65536)
    transport = RecordingTransport(server)
    for _ in range(100):  # the reset may take a moment to land
        if not send_span(server, transport, HEAD, span):
            break
        span = _span(tmp_path / "f", 0, 65536)
    else:
        pytest.fail("sending to a reset connection kept succeeding")
    assert _closed(span.fd)


# -- which bodies the fast path hands over as a span ---------------------------------------


def _scope(target: str, *fields: tuple[bytes, bytes], method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 40000),
        "root_path": "",
        "path": target,
        "raw_path": target.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), *fields],
    }


@pytest.mark.anyio  # on a running loop, as the front asks
@pytest.mark.parametrize("zero_copy", ["auto", "off"])
async def test_the_fast_path_hands_over_a_span_only_from_a_page_boundary(
    tmp_path: Path, zero_copy: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.bin").write_bytes(DATA[:65536])
    app = create_app(
        make_settings(root, index_path=tmp_path / "index.sqlite3", zero_copy=zero_copy, watch=False)
    )
    fast = app.fast
    assert fast is not None
    st = os.stat(root / "f.bin")
    fast.downloads.integrity.digests.remember(identity(st), FileDigest(hashlib.sha256(DATA[:65536]).digest()))
    cases = [
        (_scope("/files/f.bin"), 0, 65536),
        (_scope("/files/f.bin", (b"range", b"bytes=8192-")), 8192, 65536 - 8192),
        (_scope("/files/f.bin", (b"range", b"bytes=100-199")), None, 100),  # mid-page: copied
        (_scope("/files/f.bin", (b"range", b"bytes=0-9,20-29")), None, None),  # multipart: copied
    ]
    for scope, offset, count in cases:
        for spans in (True, False):
            found = fast.answer(scope, spans=spans)
            assert found is not None
            _, _, body = found
            if spans and zero_copy == "auto" and offset is not None:
                assert isinstance(body, FileSpan)
                assert (body.offset, body.count) == (offset, count)
                try:
                    assert os.pread(body.fd, body.count, body.offset) == DATA[offset : offset + body.count]
                finally:
                    os.close(body.fd)
            else:
                assert isinstance(body, bytes | bytearray)
                if count is not None:
                    assert len(body) == count
    found = fast.answer(_scope("/files/f.bin", method="HEAD"), spans=True)
    assert found is not None and found[2] == b""  # no body, no span
