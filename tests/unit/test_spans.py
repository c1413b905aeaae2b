"""A small answer sent from an open file (app/transfer/spans.py) and when the fast path chooses one
(app/routes/fast_files.py): head and span arrive whole and in order over a real loopback socket,
what the socket cannot take waits in the transport, a file that ended early closes the
connection, and the file is always closed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from app.transfer.spans import FileSpan, cached_span, send_span
from tests.support.transports import Pair, RecordingTransport, fd_closed

DATA = bytes(range(256)) * 1024  # 256 KiB
HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 65536\r\n\r\n"


def _receive(client: socket.socket, count: int) -> bytes:
    client.settimeout(30)
    got = bytearray()
    while len(got) < count and (chunk := client.recv(1 << 20)):
        got += chunk
    return bytes(got)


def _span(path: Path, offset: int, count: int) -> FileSpan:
    return FileSpan(os.open(path, os.O_RDONLY), offset, count)


def test_head_and_span_arrive_whole_and_the_file_isfd_closed(tmp_path: Path, loopback_pair: Pair) -> None:
    server, client = loopback_pair
    (tmp_path / "f").write_bytes(DATA)
    span = _span(tmp_path / "f", 4096, 65536)
    transport = RecordingTransport(server)
    assert send_span(server, transport, HEAD, span)
    assert transport.calls == []  # all of it went straight to the socket
    assert _receive(client, len(HEAD) + 65536) == HEAD + DATA[4096 : 4096 + 65536]
    assert fd_closed(span.fd)


def test_a_shared_span_is_sent_and_its_file_left_open(tmp_path: Path, loopback_pair: Pair) -> None:
    """A kept descriptor's span (app/storage/kept.py): sent the same, the file its keeper's."""
    server, client = loopback_pair
    (tmp_path / "f").write_bytes(DATA)
    span = _span(tmp_path / "f", 0, 65536)
    span.shared = True
    try:
        assert send_span(server, RecordingTransport(server), HEAD, span)
        assert _receive(client, len(HEAD) + 65536) == HEAD + DATA[:65536]
        assert not fd_closed(span.fd)
    finally:
        os.close(span.fd)


def _cached(path: Path, offset: int, count: int) -> FileSpan:
    fd = os.open(path, os.O_RDONLY)
    span = cached_span(fd, offset, count)
    assert span is not None and span.fd == fd  # just written: in the page cache
    return span


@pytest.mark.parametrize("offset", [0, 1, 4095, 4096, 4097, 100_000])
def test_a_cached_span_carries_its_first_page_part_and_arrives_whole(
    tmp_path: Path, loopback_pair: Pair, offset: int
) -> None:
    """Starting mid-page, its first page's part is read with the probe and goes out with the
    head; the rest with sendfile from the page boundary."""
    server, client = loopback_pair
    (tmp_path / "f").write_bytes(DATA)
    span = _cached(tmp_path / "f", offset, 65536)
    assert span.lead == DATA[offset : -(-offset // 4096) * 4096]  # empty from a page boundary
    transport = RecordingTransport(server)
    assert send_span(server, transport, HEAD, span)
    assert _receive(client, len(HEAD) + 65536) == HEAD + DATA[offset : offset + 65536]
    assert transport.calls == [] and fd_closed(span.fd)


def test_a_span_shorter_than_its_first_page_part_is_sent_whole_with_sendfile(
    tmp_path: Path, loopback_pair: Pair
) -> None:
    server, client = loopback_pair
    (tmp_path / "f").write_bytes(DATA)
    span = _cached(tmp_path / "f", 100, 50)
    assert span.lead == b""
    assert send_span(server, RecordingTransport(server), HEAD, span)
    assert _receive(client, len(HEAD) + 50) == HEAD + DATA[100:150]


def test_a_file_cut_before_the_spans_first_page_ends_is_no_cached_span(tmp_path: Path) -> None:
    """The answer promised 65536 bytes from 1000 of a file now 2000 long: not sent from the
    cache (the app answers it, from the file as it now is)."""
    (tmp_path / "f").write_bytes(DATA[:2000])
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert cached_span(fd, 1000, 65536) is None
        assert cached_span(fd, 1000, 1000) is not None  # what is there
    finally:
        os.close(fd)


def test_a_mid_page_span_with_bytes_already_queued_keeps_its_place(
    tmp_path: Path, loopback_pair: Pair
) -> None:
    server, _ = loopback_pair
    (tmp_path / "f").write_bytes(DATA)

    class Busy(RecordingTransport):
        def get_write_buffer_size(self) -> int:
            return 10

    transport = Busy(server)
    assert send_span(server, transport, HEAD, _cached(tmp_path / "f", 1000, 8192))
    assert transport.written == HEAD + DATA[1000:9192]


def test_what_a_full_socket_does_not_take_waits_in_the_transport(tmp_path: Path, loopback_pair: Pair) -> None:
    server, client = loopback_pair
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


def test_bytes_already_queued_keep_their_place(tmp_path: Path, loopback_pair: Pair) -> None:
    server, _ = loopback_pair
    (tmp_path / "f").write_bytes(DATA)

    class Busy(RecordingTransport):
        def get_write_buffer_size(self) -> int:
            return 10  # an earlier answer still queued: this one must queue behind it

    transport = Busy(server)
    assert send_span(server, transport, HEAD, _span(tmp_path / "f", 0, 8192))
    assert transport.written == HEAD + DATA[:8192]


def test_a_file_that_ended_early_closes_the_connection(tmp_path: Path, loopback_pair: Pair) -> None:
    server, client = loopback_pair
    (tmp_path / "f").write_bytes(DATA[:1000])  # the answer promised 65536 bytes
    span = _span(tmp_path / "f", 0, 65536)
    assert not send_span(server, RecordingTransport(server), HEAD, span)
    assert _receive(client, len(HEAD) + 1000) == HEAD + DATA[:1000]
    assert fd_closed(span.fd)


def test_a_gone_client_closes_the_connection(tmp_path: Path, loopback_pair: Pair) -> None:
    server, client = loopback_pair
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
    assert fd_closed(span.fd)
