"""A large answer streamed by the connection's front (app/transfer/spans.py `SpanStream`) over a real
loopback socket: head and span arrive whole and in order, a slow reader is waited for, pages not
in the page cache are sent from a thread, a client that leaves or a file that shrinks ends the
stream cut short, and the file and the stream's socket descriptor are always closed."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest

from app.transfer.page_cache import pages_cached
from app.transfer.spans import FileSpan, SpanStream
from tests.support.transports import Pair, fd_closed

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


def _data(size: int) -> bytes:
    return bytes(range(256)) * (size // 256)


class Run:
    """One stream: what its bookkeeping and its end were told."""

    def __init__(self, server: socket.socket, path: Path, offset: int, count: int) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.span = FileSpan(self.fd, offset, count)
        self.counted: list[tuple[int, bool]] = []
        self.span.on_end = lambda sent, cut: self.counted.append((sent, cut))
        self.ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.stream = SpanStream(asyncio.get_running_loop(), server, HEAD, self.span, self.ended.set_result)
        self.started = False

    def start(self) -> None:
        self.started = True
        self.stream.pump()

    async def result(self) -> bool:
        """Started (if it was not), until it ends: whether it was complete."""
        if not self.started:
            self.stream.pump()
        return await asyncio.wait_for(self.ended, 60)


def _reader(client: socket.socket, wanted: int, pace: float = 0.0) -> tuple[threading.Thread, bytearray]:
    got = bytearray()

    def read() -> None:
        client.settimeout(60)
        try:
            while len(got) < wanted and (chunk := client.recv(256 * 1024)):
                got.extend(chunk)
                if pace:
                    threading.Event().wait(pace)
        except ConnectionResetError:
            pass  # a stream cut short may end in a reset: what arrived is what counts

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, got


def _small_buffers(server: socket.socket, client: socket.socket) -> None:
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)


async def test_a_span_arrives_whole_after_its_head(tmp_path: Path, loopback_pair: Pair) -> None:
    server, client = loopback_pair
    data = _data(24 * MiB)
    (tmp_path / "f").write_bytes(data)
    run = Run(server, tmp_path / "f", 1000, len(data) - 2000)
    thread, got = _reader(client, len(HEAD) + len(data) - 2000)
    assert await run.result()
    thread.join(60)
    assert bytes(got) == HEAD + data[1000:-1000]
    assert run.counted == [(len(data) - 2000, False)]
    assert fd_closed(run.fd) and fd_closed(run.stream.fd)


async def test_a_slow_reader_is_waited_for(tmp_path: Path, loopback_pair: Pair) -> None:
    server, client = loopback_pair
    _small_buffers(server, client)  # the socket fills: the stream waits for room, often
    data = _data(6 * MiB)
    (tmp_path / "f").write_bytes(data)
    run = Run(server, tmp_path / "f", 0, len(data))
    thread, got = _reader(client, len(HEAD) + len(data), pace=0.002)
    assert await run.result()
    thread.join(60)
    assert bytes(got) == HEAD + data
    assert run.counted == [(len(data), False)]


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise to drop the pages")
async def test_pages_not_in_the_page_cache_are_sent_from_a_thread(
    tmp_path: Path, loopback_pair: Pair
) -> None:
    server, client = loopback_pair
    data = _data(8 * MiB)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
    dropped = not pages_cached(fd, 0, 1)
    os.close(fd)
    if not dropped:
        pytest.skip("this filesystem keeps every page in memory (tmpfs): nothing is ever cold")
    run = Run(server, tmp_path / "f", 0, len(data))
    threads: list[int] = []
    original = os.sendfile

    def watched(*args: int) -> int:
        threads.append(threading.get_ident())
        return original(*args)

    reader, got = _reader(client, len(HEAD) + len(data))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "sendfile", watched)
        assert await run.result()
    reader.join(60)
    assert bytes(got) == HEAD + data
    assert any(ident != threading.get_ident() for ident in threads), "no sendfile ran in a thread"


async def test_a_client_that_leaves_cuts_the_stream_short(tmp_path: Path, loopback_pair: Pair) -> None:
    server, client = loopback_pair
    data = _data(64 * MiB)
    (tmp_path / "f").write_bytes(data)
    run = Run(server, tmp_path / "f", 0, len(data))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close with a reset
    run.start()  # the head and the first bytes, until the socket is full or a turn's worth is out
    assert client.recv(1000)
    client.close()
    assert not await run.result()
    ((sent, cut),) = run.counted
    assert cut and sent < len(data)
    assert fd_closed(run.fd) and fd_closed(run.stream.fd)


async def test_a_file_that_shrinks_cuts_the_stream_short(tmp_path: Path, loopback_pair: Pair) -> None:
    server, client = loopback_pair
    data = _data(32 * MiB)
    (tmp_path / "f").write_bytes(data)
    run = Run(server, tmp_path / "f", 0, len(data))
    os.truncate(tmp_path / "f", 2 * MiB)  # before a byte is sent: the stream finds the file short
    thread, got = _reader(client, len(HEAD) + len(data))
    assert not await run.result()
    client.shutdown(socket.SHUT_RDWR)
    thread.join(60)
    ((sent, cut),) = run.counted
    assert cut and sent <= 2 * MiB
    assert len(got) < len(HEAD) + len(data)


async def test_a_connection_the_loop_has_closed_ends_the_stream_cut_short(
    tmp_path: Path, loopback_pair: Pair
) -> None:
    """The stream sends from the loop on the connection's own socket: once the event loop has
    closed the connection (and detached that socket), a turn that comes after sends nothing on a
    descriptor reused since and ends the stream cut short."""
    server, client = loopback_pair
    data = _data(8 * MiB)
    (tmp_path / "f").write_bytes(data)
    run = Run(server, tmp_path / "f", 0, len(data))
    os.close(server.detach())  # as uvloop's transport does with the socket it was given, then closes it
    assert not await run.result()
    assert run.counted == [(0, True)]
    assert fd_closed(run.fd) and run.stream.fd == -1  # no descriptor of its own was needed


async def test_a_slow_reader_costs_one_writer_and_no_refused_calls(
    tmp_path: Path, loopback_pair: Pair
) -> None:
    """Waiting for room many times registers the writer once, for the whole stream, and a
    sendfile call that sent less than it was given is not followed by one the full socket
    refuses (EAGAIN): the stream waits at once (a refusal is left only where the loop said
    "writable" with too little room; before, every wait began with one). Every byte still
    arrives, in order."""
    server, client = loopback_pair
    _small_buffers(server, client)  # the socket fills: the stream waits for room, often
    data = _data(4 * MiB)
    (tmp_path / "f").write_bytes(data)
    run = Run(server, tmp_path / "f", 0, len(data))
    loop = asyncio.get_running_loop()
    writers: list[int] = []
    refused: list[int] = []
    calls: list[int] = []
    original_add, original_sendfile = loop.add_writer, os.sendfile

    def add_writer(fd: int, callback: object, *args: object) -> None:
        writers.append(fd)
        original_add(fd, callback, *args)  # type: ignore[arg-type]

    def sendfile(*args: int) -> int:
        calls.append(args[3])
        try:
            return original_sendfile(*args)
        except BlockingIOError:
            refused.append(args[3])
            raise

    thread, got = _reader(client, len(HEAD) + len(data), pace=0.001)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "add_writer", add_writer)
        patch.setattr(os, "sendfile", sendfile)
        assert await run.result()
    thread.join(60)
    assert bytes(got) == HEAD + data
    assert len(calls) > 10, "the socket never filled: nothing was waited for"
    assert writers == [run.stream.fd]
    assert len(refused) * 10 < len(calls), (len(refused), len(calls))


async def test_a_file_changed_in_place_cuts_a_slow_stream_short(tmp_path: Path, loopback_pair: Pair) -> None:
    """The file is checked for changes every SENDFILE_SPAN bytes of the stream, however many
    waits for room those take: a file rewritten in place (same size, a new modification time)
    under a slow reader ends the stream cut short, never a complete-looking mix of versions."""
    server, client = loopback_pair
    _small_buffers(server, client)  # the socket fills: the stream waits for room, often
    data = _data(16 * MiB)
    path = tmp_path / "f"
    path.write_bytes(data)
    run = Run(server, path, 0, len(data))
    run.start()
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rewrite of the same size
    thread, got = _reader(client, len(HEAD) + len(data), pace=0.001)
    assert not await run.result()
    client.shutdown(socket.SHUT_RDWR)
    thread.join(60)
    ((sent, cut),) = run.counted
    assert cut and sent < len(data)
    assert fd_closed(run.fd) and fd_closed(run.stream.fd)
