"""app/transfer/front.py: which requests the front answers itself, and that everything else reaches
FerryProtocol from its first byte, in order. A stand-in transport records what is written and which
protocol holds the connection; a stand-in fast path records what it was asked.

Real connections (timeouts, keep-alive, graceful shutdown, byte-identical answers) are shown against
a real `ferry serve` in tests/clients/test_fast_path.py and tests/security/test_limits.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from uvicorn.server import ServerState

from app.server import FerryConfig
from app.settings import Settings
from app.transfer.front import FrontProtocol
from app.transfer.protocol import FerryProtocol
from app.transfer.spans import FileSpan
from tests.support.transports import RecordingTransport

Field = tuple[bytes, bytes]


class Fast:
    """The app's fast path: answers paths under /files/fast/, declines the rest."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.same: list[Field] = [(b"content-length", b"4")]  # /files/fast/same's, one list

    def answer_now(
        self, scope: Any, *, spans: bool = False
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        self.asked.append(scope["path"])
        if not scope["path"].startswith("/files/fast/"):
            return None
        if scope["path"] == "/files/fast/same":  # one file version's answer, the same fields each time
            return 200, self.same, b"" if scope["method"] == "HEAD" else b"same"
        body = scope["path"].encode()
        return 200, [(b"content-length", str(len(body)).encode())], b"" if scope["method"] == "HEAD" else body


@pytest.fixture
def front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FrontProtocol, RecordingTransport, Fast, list[bytes]]]:
    config = FerryConfig(Settings(root=tmp_path, index_path=tmp_path.parent / "front-index", workers=1))
    config.load()
    fast = Fast()
    config.fast_answers = fast
    handed: list[bytes] = []  # what FerryProtocol was given to read
    monkeypatch.setattr(FerryProtocol, "data_received", lambda self, data: handed.append(bytes(data)))
    loop = asyncio.new_event_loop()
    try:
        protocol = FrontProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        transport = RecordingTransport()
        transport.protocol = protocol
        protocol.connection_made(transport)
        received = protocol.data_received

        def received_and_turn_ended(data: bytes) -> None:
            """What the client sent read, and the loop's turn ended: the turn's answers written."""
            received(data)
            end_turn(loop)

        protocol.data_received = received_and_turn_ended  # type: ignore[method-assign]
        yield protocol, transport, fast, handed
        protocol.stop_timer()
    finally:
        loop.close()


def end_turn(loop: asyncio.AbstractEventLoop) -> None:
    """Run what the current loop turn has queued (an `Outbox`'s writes), then stop."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def get(path: str, *fields: str, method: str = "GET", version: str = "1.1") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/{version}", "Host: x", *fields, "", ""]).encode()


def answers(transport: RecordingTransport) -> list[bytes]:
    """The bodies written, in order (each answer's last line)."""
    return [part.split(b"\r\n\r\n", 1)[1] for part in transport.written.split(b"HTTP/1.1 ")[1:]]


def test_pipelined_fast_requests_are_answered_in_order_on_the_connection(front: Any) -> None:
    protocol, transport, fast, handed = front
    protocol.data_received(get("/files/fast/a") + get("/files/fast/b", method="HEAD") + get("/files/fast/c"))
    assert answers(transport) == [b"/files/fast/a", b"", b"/files/fast/c"]
    assert transport.protocol is protocol and handed == [] and not transport.closed
    protocol.data_received(get("/files/fast/d", "Connection: close"))
    assert answers(transport)[-1] == b"/files/fast/d"
    assert transport.closed
    assert b"connection: close\r\n" in transport.written.rsplit(b"HTTP/1.1 ", 1)[1]


def test_a_repeated_answer_keeps_its_head_only_while_date_and_connection_are_the_same(front: Any) -> None:
    protocol, transport, fast, handed = front
    state = protocol.server_state
    state.default_headers = [(b"date", b"Mon, 07 Dec 2026 06:00:00 GMT"), (b"server", b"ferry")]
    protocol.data_received(get("/files/fast/same") + get("/files/fast/same"))
    state.default_headers = [(b"date", b"Mon, 07 Dec 2026 06:00:01 GMT"), (b"server", b"ferry")]
    protocol.data_received(get("/files/fast/same"))
    protocol.data_received(get("/files/fast/same", "Connection: close"))
    heads = [part.split(b"\r\n\r\n")[0] for part in transport.written.split(b"HTTP/1.1 ")[1:]]
    assert len(heads) == 4 and heads[0] == heads[1]
    assert b"06:00:01" in heads[2] and b"06:00:00" not in heads[2]
    assert heads[3] == heads[2] + b"\r\nconnection: close"
    assert answers(transport) == [b"same"] * 4


def test_an_http_1_0_connection_stays_open_only_when_its_request_asks_for_keep_alive(front: Any) -> None:
    protocol, transport, fast, handed = front
    protocol.data_received(get("/files/fast/a", "Connection: keep-alive", version="1.0"))
    protocol.data_received(get("/files/fast/same", "Connection: Keep-Alive", version="1.0", method="HEAD"))
    assert not transport.closed
    protocol.data_received(b"GET /files/fast/b HTTP/1.0\r\n\r\n")  # no Host, no keep-alive
    assert transport.closed and handed == []
    heads = [part.split(b"\r\n\r\n")[0] for part in transport.written.split(b"HTTP/1.1 ")[1:]]
    assert [head.count(b"connection: ") for head in heads] == [1, 1, 1]
    assert heads[0].endswith(b"\r\nconnection: keep-alive") and heads[1].endswith(
        b"\r\nconnection: keep-alive"
    )
    assert heads[2].endswith(b"\r\nconnection: close")
    assert answers(transport) == [b"/files/fast/a", b"", b"/files/fast/b"]


def test_an_http_1_0_request_asking_for_keep_alive_and_close_is_closed(front: Any) -> None:
    protocol, transport, fast, handed = front
    protocol.data_received(get("/files/fast/a", "Connection: keep-alive", "Connection: close", version="1.0"))
    assert transport.closed and answers(transport) == [b"/files/fast/a"]
    assert b"connection: close\r\n" in transport.written and b"keep-alive" not in transport.written


def test_a_declined_request_and_all_after_it_go_to_ferry_protocol_from_its_first_byte(front: Any) -> None:
    protocol, transport, fast, handed = front
    rest = get("/files/big.bin") + get("/files/fast/after")
    protocol.data_received(get("/files/fast/first") + rest)
    assert answers(transport) == [b"/files/fast/first"]
    assert isinstance(transport.protocol, FerryProtocol)
    assert handed == [rest]
    # The fast path was asked once about the declined request: FerryProtocol does not ask again.
    assert fast.asked == ["/files/fast/first", "/files/big.bin"]
    assert transport.protocol.skip_fast


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GET /files/fast/a HTTP/1.1\r\nHost: x\r\nX-Half", id="head-still-arriving"),
        pytest.param(get("/files/fast/a", "Content-Length: 2") + b"hi", id="with-a-body"),
        pytest.param(get("/files/fast/a", "Transfer-Encoding: chunked") + b"0\r\n\r\n", id="chunked-body"),
        pytest.param(get("/files/fast/a", method="PUT"), id="put"),
        pytest.param(get("/files/fast/a", "Host: y", version="1.0"), id="two-hosts-http-1.0"),
        pytest.param(get("/files/fast/a", version="2.0"), id="http-2.0"),
        pytest.param(b"GET /files/fast/a HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(get("/files/fast/a", "Host: y"), id="two-hosts"),
        pytest.param(get("/files/fast/" + "a" * 9000), id="target-too-long"),
        pytest.param(get("/files/fast/a", *[f"X-{i}: {i}" for i in range(120)]), id="too-many-fields"),
        pytest.param(get("/files/fast/a", "X-Big: " + "b" * 70000), id="fields-too-large"),
        pytest.param(get("/files/fast/a", "Connection: Upgrade", "Upgrade: websocket"), id="upgrade"),
        pytest.param(b"GET /files/fast/a HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", id="malformed"),
    ],
)
def test_what_the_front_does_not_answer_reaches_ferry_protocol_whole(front: Any, raw: bytes) -> None:
    protocol, transport, fast, handed = front
    protocol.data_received(raw)
    assert transport.written == b""
    assert isinstance(transport.protocol, FerryProtocol)
    assert b"".join(handed) == raw
    assert fast.asked == []  # none of these was even asked about
    assert not transport.protocol.skip_fast


def test_after_handing_over_the_front_reads_nothing_more(front: Any) -> None:
    protocol, transport, fast, handed = front
    protocol.data_received(b"GET /files/fast/a HTTP/1.1\r\n")
    inner = transport.protocol
    assert isinstance(inner, FerryProtocol)
    inner.data_received(b"Host: x\r\n\r\n")  # the transport now reads into FerryProtocol
    assert handed == [b"GET /files/fast/a HTTP/1.1\r\n", b"Host: x\r\n\r\n"]
    assert fast.asked == []


def test_a_connection_handed_over_comes_back_and_goes_again_to_the_same_protocol(front: Any) -> None:
    protocol, transport, fast, handed = front
    protocol.data_received(get("/files/other", "Content-Length: 3"))  # a body: FerryProtocol's
    inner = transport.protocol
    assert isinstance(inner, FerryProtocol) and inner.hand_back_to == protocol.take_back
    inner.data_received(b"abc")
    protocol.take_back()  # what FerryProtocol calls once it is done with every request
    assert transport.protocol is protocol
    protocol.data_received(get("/files/fast/a"))  # a fresh parser: not the rest of a body
    assert answers(transport) == [b"/files/fast/a"]
    protocol.data_received(get("/files/elsewhere"))
    assert transport.protocol is inner  # the same FerryProtocol, taken again
    assert handed[-1] == get("/files/elsewhere") and inner.skip_fast  # asked once already


def test_a_client_not_reading_its_answers_holds_its_next_requests_until_there_is_room(front: Any) -> None:
    protocol, transport, fast, handed = front
    protocol.data_received(get("/files/fast/a"))
    protocol.pause_writing()  # the transport's buffer passed FERRY_WRITE_BUFFER
    protocol.data_received(get("/files/fast/b") + get("/files/fast/c")[:10])
    protocol.data_received(get("/files/fast/c")[10:])  # (was on its way before reading paused)
    assert answers(transport) == [b"/files/fast/a"] and fast.asked == ["/files/fast/a"]
    assert transport.reading_paused and transport.protocol is protocol and handed == []
    protocol.resume_writing()  # the client took them: the held requests are answered, in order
    assert answers(transport) == [b"/files/fast/a", b"/files/fast/b", b"/files/fast/c"]
    assert not transport.reading_paused and transport.protocol is protocol and handed == []


def test_a_held_request_the_front_declines_reaches_ferry_protocol_once_there_is_room(front: Any) -> None:
    protocol, transport, fast, handed = front
    protocol.data_received(get("/files/fast/a"))
    protocol.pause_writing()
    protocol.data_received(get("/files/other"))
    assert handed == [] and transport.protocol is protocol
    protocol.resume_writing()
    inner = transport.protocol
    assert isinstance(inner, FerryProtocol) and handed == [get("/files/other")]


def test_keep_alive_answers_are_written_together_at_the_end_of_the_turn(front: Any) -> None:
    """A turn's answers wait in the server's outbox and are written at its end, each connection's
    in order; a connection has one waiting at most: its next request sends the turn's first."""
    protocol, transport, fast, handed = front
    other_transport = RecordingTransport()
    other = FrontProtocol(
        config=protocol.config, server_state=protocol.server_state, app_state={}, _loop=protocol.loop
    )
    other_transport.protocol = other
    other.connection_made(other_transport)
    try:
        FrontProtocol.data_received(protocol, get("/files/fast/a"))
        FrontProtocol.data_received(other, get("/files/fast/other"))
        assert transport.written == b"" and other_transport.written == b""
        assert protocol.queued and other.queued
        FrontProtocol.data_received(protocol, get("/files/fast/b") + get("/files/fast/c", method="HEAD"))
        # b, pipelined after a, sent the turn's answers first and went at once; c waits in turn
        assert answers(transport) == [b"/files/fast/a", b"/files/fast/b"] and protocol.queued
        assert answers(other_transport) == [b"/files/fast/other"]  # sent with the turn's first
        FrontProtocol.data_received(other, get("/files/fast/again"))
        assert answers(other_transport) == [b"/files/fast/other"] and other.queued
        end_turn(protocol.loop)
        assert answers(transport) == [b"/files/fast/a", b"/files/fast/b", b""]
        assert answers(other_transport) == [b"/files/fast/other", b"/files/fast/again"]
        assert not protocol.queued and not other.queued
        assert not transport.closed and not other_transport.closed
    finally:
        other.stop_timer()


def test_a_connection_closing_answer_is_written_at_once_after_the_one_waiting(front: Any) -> None:
    protocol, transport, fast, handed = front
    FrontProtocol.data_received(protocol, get("/files/fast/a"))
    FrontProtocol.data_received(protocol, get("/files/fast/b", "Connection: close"))
    assert answers(transport) == [b"/files/fast/a", b"/files/fast/b"] and transport.closed


def test_the_answer_waiting_goes_out_before_the_end_of_input_a_hand_over_or_a_shutdown(front: Any) -> None:
    protocol, transport, fast, handed = front
    FrontProtocol.data_received(protocol, get("/files/fast/a"))
    assert protocol.eof_received() is None  # (the transport closes, after what it was given)
    assert answers(transport) == [b"/files/fast/a"]
    FrontProtocol.data_received(protocol, get("/files/fast/b"))
    protocol.shutdown()
    assert answers(transport) == [b"/files/fast/a", b"/files/fast/b"] and transport.closed


def test_the_answer_waiting_goes_out_before_ferry_protocol_takes_the_connection(
    front: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    protocol, transport, fast, handed = front
    at_hand_over: list[bytes] = []
    monkeypatch.setattr(
        FerryProtocol, "data_received", lambda self, data: at_hand_over.append(transport.written)
    )
    FrontProtocol.data_received(protocol, get("/files/fast/first") + get("/files/big.bin"))
    assert isinstance(transport.protocol, FerryProtocol)
    assert len(at_hand_over) == 1 and answers(transport) == [b"/files/fast/first"]
    assert at_hand_over[0] == transport.written  # written before FerryProtocol read a byte


@pytest.mark.parametrize("shared", [False, True])
def test_an_answer_waiting_for_a_connection_reset_meanwhile_is_dropped_and_its_file_closed(
    front: Any, tmp_path: Path, shared: bool
) -> None:
    """(A shared span's file, a kept descriptor, is left to its keeper.)"""
    protocol, transport, fast, handed = front
    (tmp_path / "small").write_bytes(b"0123456789")
    opened: list[int] = []

    def answer_now(scope: Any, *, spans: bool = False) -> tuple[int, list[Field], FileSpan]:
        opened.append(os.open(tmp_path / "small", os.O_RDONLY))
        span = FileSpan(opened[-1], 0, 10)
        span.shared = shared
        return 200, [(b"content-length", b"10")], span

    fast.answer_now = answer_now
    FrontProtocol.data_received(protocol, get("/files/small"))
    assert protocol.queued and os.fstat(opened[0])
    transport.close()
    protocol.connection_lost(ConnectionResetError())
    end_turn(protocol.loop)
    assert transport.written == b"" and not protocol.queued
    if shared:
        assert os.fstat(opened[0])
        os.close(opened[0])
    else:
        with pytest.raises(OSError):
            os.fstat(opened[0])


def test_a_streamed_answer_starts_at_once_on_the_accepted_socket(
    front: Any, loopback_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    """A large answer's head and first bytes leave within the request's own callback, not a loop
    turn later behind the turn's other callbacks; they go out on the connection's own socket (the
    acceptor's), which the front never closes: the event loop does, with the connection."""
    protocol, transport, fast, handed = front
    ferry_end, client = loopback_pair
    content = os.urandom(3 * 1024 * 1024)
    (tmp_path / "large").write_bytes(content)
    ended: list[tuple[int, bool]] = []

    def answer_now(scope: Any, *, spans: bool = False) -> tuple[int, list[Field], FileSpan]:
        assert spans  # (a TCP connection: answers may be sent with sendfile)
        span = FileSpan(os.open(tmp_path / "large", os.O_RDONLY), 0, len(content))
        span.on_end = lambda sent, cut: ended.append((sent, cut))
        return 200, [(b"content-length", str(len(content)).encode())], span

    fast.answer_now = answer_now
    protocol.accepted(ferry_end)
    FrontProtocol.data_received(protocol, get("/files/large"))  # (the turn not ended)
    assert protocol.sender is ferry_end and transport.written == b""
    client.settimeout(30)
    received = client.recv(65536)  # the event loop has not run since
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")

    async def read_rest() -> bytes:
        got = bytearray(received)
        client.setblocking(False)
        while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < len(content):
            got += await asyncio.wait_for(protocol.loop.sock_recv(client, 1 << 20), 30)
        return bytes(got)

    whole = protocol.loop.run_until_complete(read_rest())
    assert whole.split(b"\r\n\r\n", 1)[1] == content and ended == [(len(content), False)]
    assert protocol.stream is None and not transport.closed
    protocol.close_sender()
    assert ferry_end.fileno() != -1  # not the front's to close


@pytest.mark.parametrize(
    ("sockname", "peername", "addresses", "family"),
    [
        (("10.0.0.1", 8000), ("10.0.0.2", 40000), (("10.0.0.1", 8000), ("10.0.0.2", 40000)), socket.AF_INET),
        (("::1", 8000, 0, 0), ("::1", 40000, 0, 0), (("::1", 8000), ("::1", 40000)), socket.AF_INET6),
        (
            ("::ffff:10.0.0.1", 8000, 0, 0),
            ("::ffff:10.0.0.2", 40000, 0, 0),
            (("::ffff:10.0.0.1", 8000), ("::ffff:10.0.0.2", 40000)),
            socket.AF_INET6,
        ),
        ("/run/ferry.sock", "", (None, None), None),  # a Unix socket: no sendfile spans
    ],
)
def test_a_connection_s_ends_come_from_what_its_transport_noted(
    tmp_path: Path, sockname: Any, peername: Any, addresses: Any, family: int | None
) -> None:
    """The scope's server and client as uvicorn gives them, read from the addresses the transport
    noted when the connection was made (not from a socket object made afresh for each)."""

    class Noted(RecordingTransport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"sockname": sockname, "peername": peername}.get(name, default)

    config = FerryConfig(Settings(root=tmp_path, index_path=tmp_path.parent / "front-ends-index", workers=1))
    config.load()
    config.fast_answers = Fast()
    loop = asyncio.new_event_loop()
    try:
        protocol = FrontProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        protocol.connection_made(Noted())
        assert protocol.addresses == (*addresses, "http")
        assert (protocol.spans, protocol.family) == (family is not None, family)
        protocol.stop_timer()
    finally:
        loop.close()
