"""Connections spread evenly over the workers (FERRY_WORKERS > 1).

The workers share one listening socket. Left to the event loop, whichever worker wakes first
accepts every connection waiting (libuv accepts until the queue is empty), so four downloads
started together often land 3:1 or 4:0 on two workers; for a download that costs CPU per byte (a
folder archive, a bucket's object, an upload's hashing) one core then does the work of two.

Each worker instead accepts through its own `Acceptor`, and steps aside while another live
worker has fewer open connections: that one is woken by the same readiness and takes the
connection (nginx does the same with `ngx_accept_disabled`). The counts live in memory shared by
the workers (`Loads`), one slot per worker, written only by its owner; a slot whose
owner has not shown itself for STALE_SECONDS (a worker that died) counts for nothing. A worker
steps aside for a loop turn at a time, then a millisecond at a time, and never for longer than
MAX_DEFER_SECONDS, so a stuck sibling only delays connections, never refuses them.
"""

from __future__ import annotations

import _socket
import asyncio
import ctypes
import errno
import fcntl
import functools
import logging
import mmap
import os
import socket
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("ferry.balance")

STALE_SECONDS = 3.0  # a slot not refreshed for this long belongs to a worker that is gone
HEARTBEAT_SECONDS = 1.0
# How long a busier worker leaves the socket to the others: a loop turn the first STEP_TURNS times
# (the less busy one, woken by the same readiness, has mostly taken the connection by then), then
# STEP_SECONDS (the event loop's timers go by the millisecond) until MAX_DEFER_SECONDS. Two
# workers can each be the busier one in turn: a 2 ms step each time left new connections waiting
# while both stood aside (with a new connection per request, two workers answered a third of what
# one answered alone).
STEP_TURNS = 8
STEP_SECONDS = 0.001
MAX_DEFER_SECONDS = 0.05  # then it accepts anyway
ACCEPTS_PER_WAKE = 64  # at most, while it stays the least busy


class Loads:
    """Open connections per worker, in memory every worker maps (made before the workers start).
    A worker `claim`s a slot, then `add`s to its count and `beat`s; `busier` compares.

    The memory is a memfd: forked workers inherit its mapping, a worker the supervisor starts
    afresh maps it from the descriptor it inherits (`attach`). Claiming a slot takes a POSIX
    record lock on it, which belongs to a process (not to a descriptor shared since a fork)."""

    def __init__(self, slots: int, fd: int | None = None) -> None:
        size = slots * (ctypes.sizeof(ctypes.c_long) + ctypes.sizeof(ctypes.c_double))
        if fd is None:
            fd = os.memfd_create("ferry-loads", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
        self.fd = fd
        self._memory = mmap.mmap(fd, size)
        self._counts = (ctypes.c_long * slots).from_buffer(self._memory)
        # time.monotonic() of the owner (the same clock in every process of the machine)
        self._seen = (ctypes.c_double * slots).from_buffer(self._memory, slots * ctypes.sizeof(ctypes.c_long))
        self.slot = -1

    @classmethod
    def attach(cls, fd: int) -> Loads:
        """The counts a supervisor made, in a worker it started with `fd` open."""
        slots = os.fstat(fd).st_size // (ctypes.sizeof(ctypes.c_long) + ctypes.sizeof(ctypes.c_double))
        return cls(slots, fd)

    def claim(self, now: float | None = None) -> bool:
        """Take a free slot (never used, or its owner gone) for this process; False if none is."""
        now = time.monotonic() if now is None else now
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            for slot in range(len(self._seen)):
                if now - self._seen[slot] >= STALE_SECONDS:
                    self._counts[slot], self._seen[slot], self.slot = 0, now, slot
                    return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
        return False

    def beat(self, now: float | None = None) -> None:
        """This worker is alive (called every HEARTBEAT_SECONDS)."""
        if self.slot >= 0:
            self._seen[self.slot] = time.monotonic() if now is None else now

    def add(self, change: int) -> None:
        if self.slot >= 0:
            self._counts[self.slot] += change

    @property
    def mine(self) -> int:
        return int(self._counts[self.slot]) if self.slot >= 0 else 0

    def busier(self, now: float | None = None) -> bool:
        """Whether another live worker has fewer open connections than this one: any fewer while
        they are few, a quarter fewer once they are many (a burst of connections is then taken by
        both at once, not one by one in turns)."""
        if self.slot < 0:
            return False
        mine = self._counts[self.slot]
        if not mine:
            return False  # (the common case of a worker with nothing open: no clock, no loop)
        now = time.monotonic() if now is None else now
        seen = self._seen
        for slot, count in enumerate(self._counts):
            if mine > count + count // 4 and slot != self.slot and now - seen[slot] < STALE_SECONDS:
                return True
        return False


class Acceptor:
    """Accepts connections on `sock` for this worker's event loop, as `loop.create_server` would,
    stepping aside while `loads` says another worker is less busy. `close` stops it (uvicorn's
    shutdown calls it as it would close an asyncio Server)."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        loads: Loads,
        ssl: Any = None,
    ) -> None:
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.loads = loads
        self.ssl = ssl
        self.loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._reading = False
        self._deferred_since: float | None = None
        self._steps = 0
        self._timer: asyncio.TimerHandle | None = None
        self._heart: asyncio.TimerHandle | None = None
        self._closed = False
        self._waiters: set[asyncio.Future[Any]] = set()  # connections being set up
        self._family, self._proto = int(sock.family), sock.proto

    def start(self, backlog: int) -> None:
        self.sock.listen(backlog)  # as loop.create_server does (uvicorn binds, it listens)
        self.sock.setblocking(False)
        self._beat()
        self._resume()

    def close(self) -> None:
        self._closed = True
        self._pause()
        for handle in (self._timer, self._heart):
            if handle is not None:
                handle.cancel()

    async def wait_closed(self) -> None:
        """As asyncio.Server's: connections still being set up are let finish (uvicorn awaits it)."""
        if self._waiters:
            await asyncio.wait(list(self._waiters))

    def _beat(self) -> None:
        self.loads.beat()
        self._heart = self.loop.call_later(HEARTBEAT_SECONDS, self._beat)

    def _resume(self) -> None:
        self._timer = None
        if not self._closed and not self._reading:
            self.loop.add_reader(self._fd, self._ready)
            self._reading = True

    def _pause(self, seconds: float | None = None) -> None:
        if self._reading:
            self.loop.remove_reader(self._fd)
            self._reading = False
        if seconds is not None and not self._closed:
            self._timer = self.loop.call_later(seconds, self._resume)

    def _ready(self) -> None:
        if self.loads.busier():
            now = time.monotonic()
            if self._deferred_since is None:
                self._deferred_since, self._steps = now, 0
            if now - self._deferred_since < MAX_DEFER_SECONDS:
                self._steps += 1  # a less busy worker is woken too: it takes this one
                self._pause(0.0 if self._steps <= STEP_TURNS else STEP_SECONDS)
                return
        self._deferred_since = None
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                # What sock.accept() does, less its enum conversions (_socket.socket._accept, C).
                fd, _ = self.sock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPERM, errno.EPROTO):
                    continue  # that one went away before it was taken
                # Out of descriptors or memory (or worse): the connections wait in the queue.
                logger.warning("cannot accept a connection now: %s", exc)
                self._pause(0.1)
                return
            self._connect(_Accepted(self._family, socket.SOCK_STREAM, self._proto, fd))
            if self.loads.busier():
                return  # the rest, if any, to a less busy worker

    def _connect(self, conn: socket.socket) -> None:
        """Set up the connection's transport and protocol now, as `loop.connect_accepted_socket`
        does (driven here without a task of its own: it only waits for `connection_made`). A
        protocol with an `accepted` method is handed the socket first (the front sends on it)."""
        conn.setblocking(False)
        self.loads.add(1)  # counted now, so the next look at the loads sees it
        try:
            protocol = self.protocol_factory()
            accepted = getattr(protocol, "accepted", None)
            if accepted is not None:
                accepted(conn)
            setting_up = self.loop.connect_accepted_socket(lambda: protocol, conn, ssl=self.ssl)
            waiter = setting_up.send(None)  # the transport is made; connection_made is scheduled
        except StopIteration:
            return
        except Exception as exc:
            self._not_connected(conn, exc)
            return
        self._waiters.add(waiter)
        waiter.add_done_callback(functools.partial(self._connected, conn, setting_up))

    def _connected(self, conn: socket.socket, setting_up: Any, waiter: asyncio.Future[Any]) -> None:
        self._waiters.discard(waiter)
        try:
            setting_up.send(None)  # returns (StopIteration), or raises what the set-up met
        except StopIteration:
            pass
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # (a CancelledError too: the loop is closing)
            self._not_connected(conn, exc)

    def _not_connected(self, conn: socket.socket, exc: BaseException) -> None:
        self.loads.add(-1)  # never became a connection: its protocol will not count it out
        conn.close()
        if not isinstance(exc, asyncio.CancelledError):
            logger.warning("an accepted connection could not be set up: %s", exc)


class _Accepted(socket.socket):
    """An accepted connection's socket whose `family` and `type` are plain numbers: socket.socket
    makes an enum of them at each read (a microsecond or so), and the event loop reads them three
    times as it sets the connection up."""

    __slots__ = ()
    family = _socket.socket.family  # type: ignore[assignment]
    type = _socket.socket.type  # type: ignore[assignment]
