"""app/balance.py's shared connection counts: which worker steps aside for which, without I/O
(the clock is passed in). The acceptor itself is shown on a real `ferry serve --workers 2`
(tests/clients/test_worker_balance.py)."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest
import uvloop

from app.balance import MAX_DEFER_SECONDS, STALE_SECONDS, STEP_SECONDS, STEP_TURNS, Acceptor, Loads


def _workers(count: int, slots: int = 4, now: float = 100.0) -> list[Loads]:
    """`count` workers sharing one `Loads` (as forks do: one memory, a slot each)."""
    shared = Loads(slots)
    workers = []
    for _ in range(count):
        view = Loads.__new__(Loads)
        view.__dict__.update(shared.__dict__)  # the same shared arrays and lock, its own slot
        view.slot = -1
        assert view.claim(now)
        workers.append(view)
    return workers


def test_each_worker_claims_its_own_slot() -> None:
    a, b, c = _workers(3)
    assert len({a.slot, b.slot, c.slot}) == 3


def test_with_few_connections_any_fewer_elsewhere_makes_a_worker_step_aside() -> None:
    a, b = _workers(2)
    assert not a.busier(100.0) and not b.busier(100.0)  # tied: both accept
    a.add(1)
    assert a.busier(100.0) and not b.busier(100.0)
    b.add(1)
    assert not a.busier(100.0) and not b.busier(100.0)
    a.add(1)
    a.add(-1)
    assert not a.busier(100.0) and a.mine == 1


@pytest.mark.parametrize(
    ("mine", "other", "steps_aside"),
    [
        (2, 1, True),
        (5, 4, False),
        (9, 8, False),
        (10, 8, False),
        (11, 8, True),
        (100, 80, False),
        (101, 80, True),
    ],
)
def test_with_many_a_quarter_more_is_tolerated(mine: int, other: int, steps_aside: bool) -> None:
    a, b = _workers(2)
    a.add(mine)
    b.add(other)
    assert a.busier(100.0) is steps_aside


def test_a_busier_acceptor_looks_again_after_a_loop_turn_then_each_millisecond_then_takes_it() -> None:
    """The less busy worker (live, its loop never taking the connection here) is woken by the same
    readiness and has mostly taken a connection within a turn or two: the busier one looks again
    after a loop turn STEP_TURNS times, then every STEP_SECONDS, and takes the connection itself
    after MAX_DEFER_SECONDS. (Steps of 2 ms each left both workers standing aside in turn: with a
    new connection per request two workers answered a third of what one answered alone.)"""
    a, b = _workers(2)
    a.add(3)
    b.beat()  # live on the real clock (the acceptor reads it)
    listener = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.new_event_loop()
    accepted: list[asyncio.BaseTransport] = []
    steps: list[float | None] = []
    taken_after: list[float] = []

    class Kept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)

    async def connect() -> None:
        acceptor = Acceptor(listener, Kept, a)
        pause = acceptor._pause

        def recorded(seconds: float | None = None) -> None:
            steps.append(seconds)
            pause(seconds)

        acceptor._pause = recorded  # type: ignore[method-assign]
        acceptor.start(8)
        try:
            with socket.create_connection(listener.getsockname()):
                started = loop.time()
                deadline = started + 30
                while not accepted and loop.time() < deadline:
                    b.beat()  # b stays live however slowly this machine runs the test
                    await asyncio.sleep(0.001)
                taken_after.append(loop.time() - started)
        finally:
            acceptor.close()
            await acceptor.wait_closed()
            for transport in accepted:
                transport.close()
            await asyncio.sleep(0)  # (the transports let their sockets go)

    try:
        loop.run_until_complete(connect())
    finally:
        loop.close()
        listener.close()
    assert len(accepted) == 1 and a.mine == 4
    stepped = [seconds for seconds in steps if seconds is not None]  # (close() pauses for good)
    assert stepped[:STEP_TURNS] == [0.0] * STEP_TURNS, steps
    assert len(stepped) > STEP_TURNS and set(stepped[STEP_TURNS:]) == {STEP_SECONDS}, steps
    assert taken_after[0] >= MAX_DEFER_SECONDS * 0.9


def test_a_worker_gone_silent_counts_for_nothing_and_its_slot_is_taken_again() -> None:
    a, b = _workers(2, slots=2)
    a.add(3)
    assert a.busier(100.0)  # b has none
    a.beat(100.0 + STALE_SECONDS)
    assert not a.busier(100.0 + STALE_SECONDS)  # b never beat since: gone
    assert not b.claim(100.0 + 1)  # every slot is live: none to take
    b.slot = -1
    assert b.claim(100.0 + STALE_SECONDS)  # a restarted worker takes the silent one's slot
    assert b.mine == 0 and a.busier(100.0 + STALE_SECONDS)


def test_a_worker_without_a_slot_never_steps_aside() -> None:
    lone = Loads(1)
    assert not lone.busier(100.0)
    lone.add(5)  # no slot: nothing counted
    assert lone.mine == 0


def test_counts_are_shared_with_a_forked_child() -> None:
    (a,) = _workers(1, slots=2)
    pid = os.fork()
    if pid == 0:  # the child: a worker of its own, counting in the same memory
        status = 0
        try:
            a.slot = -1
            assert a.claim(100.0)
            a.add(7)
        except BaseException:
            status = 1
        os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child_slot = 1 - a.slot
    assert a._counts[child_slot] == 7 and not a.busier(100.0)


def _accept_one(loop: asyncio.AbstractEventLoop, loads: Loads, factory: Any) -> list[Any]:
    """Run an acceptor on `loop` until a client here has been taken, shown and let go (its end
    reads the close, the connection is counted out): the client's address, then what
    `factory`'s protocols recorded."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[Any] = []

    async def run() -> None:
        acceptor = Acceptor(listener, lambda: factory(seen), loads)
        acceptor.start(8)
        try:
            with socket.create_connection(listener.getsockname()) as client:
                seen.append(client.getsockname())
                client.setblocking(False)
                assert await asyncio.wait_for(loop.sock_recv(client, 1), 30) == b""
            deadline = loop.time() + 30
            while loads.mine and loop.time() < deadline:  # (connection_lost may come a turn later)
                await asyncio.sleep(0.001)
        finally:
            acceptor.close()
            await acceptor.wait_closed()

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
        listener.close()
    return seen


@pytest.mark.parametrize("make_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uv"])
def test_a_protocol_is_handed_the_connection_socket_before_it_is_made(make_loop: Any) -> None:
    """The acceptor sets a connection up without a task of its own; a protocol with `accepted`
    gets the connection's own socket first (the front sends on it). The event loop closes it with
    the connection, leaving it with no descriptor: it can never reach one reused since."""
    (loads,) = _workers(1)

    class Told(asyncio.Protocol):
        def __init__(self, seen: list[Any]) -> None:
            self.seen = seen
            self.sock: socket.socket | None = None

        def accepted(self, sock: socket.socket) -> None:
            self.sock = sock

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert self.sock is not None, "told before connection_made"
            ends = (self.sock.getpeername(), transport.get_extra_info("peername"), self.sock.family)
            self.seen.append(ends)
            self.seen.append(self)
            transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            loads.add(-1)  # as the front counts a connection out

    seen = _accept_one(make_loop(), loads, Told)
    client, (peer, transport_peer, family), protocol = seen
    assert peer == transport_peer == client and family == socket.AF_INET
    assert protocol.sock.fileno() == -1  # let go as the connection closed
    assert loads.mine == 0


def test_a_connection_whose_protocol_cannot_be_made_is_closed_and_counted_out(caplog: Any) -> None:
    (loads,) = _workers(1)

    def broken(seen: list[Any]) -> asyncio.Protocol:
        seen.append("asked")
        raise RuntimeError("no protocol")

    seen = _accept_one(uvloop.new_event_loop(), loads, broken)
    assert seen[1:] == ["asked"] and loads.mine == 0
    assert "could not be set up: no protocol" in caplog.text
