"""Several workers (FERRY_WORKERS > 1) forked from a parent that has loaded Ferry, which then
becomes a small supervisor of the standard library only (app/overseer.py).

uvicorn's supervisor spawns each worker as a fresh interpreter (plus multiprocessing's resource
tracker, a fourth process): every worker imports FastAPI, pydantic and Ferry on its own, ~41 MiB of
private memory each. Forked from a parent that imported them once, the workers share those pages
with each other (copy-on-write; `gc.freeze()` keeps the collector from writing to them), and a
worker's own memory is what it builds after the fork. The parent then `exec`s the overseer: kept
loaded, it would hold its own copy of every page the workers write to (~20 MiB).

What is loaded before the fork is modules only: no event loop, thread, SQLite connection or open
file besides the listening socket and the balancing counts exists in the parent (the app itself,
its index and its watcher are made in each worker by `create_app`). A worker accepts connections
through app/balance.py's `Acceptor`, which leaves a connection to a less busy sibling (their counts
in shared memory, `Loads`), and answers the overseer's pings from a thread (stopping, as at
SIGTERM, once the overseer is gone). A worker the overseer starts later (after a crash, at SIGHUP
or SIGTTIN, or all of them when forking is not safe) runs the server's command afresh with its
descriptors named in `overseer.WORKER_ENV` (`run_inherited`). Where the overseer cannot run (not
Linux), uvicorn's supervisor spawns the workers.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import traceback
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess

from app import overseer
from app.balance import Acceptor, Loads

logger = logging.getLogger("ferry.supervisor")

# What every worker imports before it serves: the app and what it names. Modules a request only
# sometimes needs (a bucket's client, archive writers) are left to the worker that needs them.
PRELOAD = ("app.main", "uvloop", "httptools")


def can_fork() -> bool:
    """True while forking is safe and shares what it should: only this thread runs (a bucket's
    start-up probe may leave a client's runtime threads behind), and prometheus-client is not yet
    imported (it chooses its multiprocess mode from the environment once, when imported). Asked
    before `serve` sets that environment; otherwise the overseer starts every worker afresh."""
    if not os.path.isdir("/proc/self/task"):  # not Linux: uvicorn's spawned workers
        return False
    return len(os.listdir("/proc/self/task")) == 1 and "prometheus_client" not in sys.modules


def preload(modules: tuple[str, ...] = PRELOAD) -> None:
    """Import what every worker needs, then freeze what is alive so forks share it untouched."""
    for name in modules:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()  # the collector never walks (and so never writes to) objects made before the fork


class BalancedServer(uvicorn.Server):
    """uvicorn's server in a worker: its listening sockets served by `Acceptor`s (the
    connection counts shared with its siblings in `config.loads`) instead of `loop.create_server`."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loads: Loads | None = getattr(self.config, "loads", None)
        if not sockets or loads is None or not loads.claim():
            await super().startup(sockets=sockets)  # as uvicorn would (no slot: no balancing)
            return
        await super().startup(sockets=[])  # the lifespan; no server of its own
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            # app_state: what a lifespan yields for requests' scopes; Ferry's yields nothing.
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state={}
            )
            return protocol

        acceptors = [Acceptor(sock, create_protocol, loads, ssl=config.ssl) for sock in sockets]
        for acceptor in acceptors:
            acceptor.start(config.backlog)
        self.servers: list[Any] = acceptors  # uvicorn's shutdown closes and awaits them


def supervise(config: uvicorn.Config, sock: socket.socket, *, fork: bool, metrics: str) -> None:
    """Start the workers, forked from this process once it has loaded the app (`fork`, see
    `can_fork`), then become the overseer (app/overseer.py), which starts any more afresh. Returns only
    where the overseer cannot run (not Linux): uvicorn's supervisor of spawned workers, until stopped."""
    if not overseer_runs_here():
        multiprocess.Multiprocess(config, sockets=[sock]).run()
        return
    # Blocked from here on, so a signal before the overseer waits for it is kept for the overseer
    # (the mask and pending signals survive the exec); each forked worker unblocks them.
    signal.pthread_sigmask(signal.SIG_BLOCK, overseer.HANDLED)
    # Two slots per worker: one started after a crash (or beside the old one at SIGHUP) finds a free one.
    loads = Loads(2 * config.workers)
    workers: list[tuple[int, socket.socket]] = []
    if fork:
        preload()
        for _ in range(config.workers):
            workers.append(_forked(config, sock, loads, [ours for _, ours in workers]))
    plan = {
        "command": [sys.executable, *sys.orig_argv[1:]],  # how a worker is started afresh
        "listen": sock.fileno(),
        "loads": loads.fd,
        "workers": [[pid, ours.fileno()] for pid, ours in workers],
        "wanted": config.workers,
        "metrics": metrics,
        "healthcheck": config.timeout_worker_healthcheck,
        "startup": STARTUP_SECONDS,
    }
    for fd in (sock.fileno(), loads.fd, *(ours.fileno() for _, ours in workers)):
        os.set_inheritable(fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[overseer.PLAN_ENV] = json.dumps(plan)
    os.execv(sys.executable, [sys.executable, "-I", "-S", overseer.__file__])


def overseer_runs_here() -> bool:
    return all(hasattr(module, name) for module, name in _OVERSEER_NEEDS)


_OVERSEER_NEEDS = ((os, "memfd_create"), (os, "posix_spawn"), (signal, "sigtimedwait"))
STARTUP_SECONDS = 120.0  # how long a worker started afresh may take to serve (imports, index)


def _forked(
    config: uvicorn.Config, sock: socket.socket, loads: Loads, siblings: list[socket.socket]
) -> tuple[int, socket.socket]:
    """A worker forked from this process: (its pid, the overseer's end of its ping socket)."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid:
        theirs.close()
        return pid, ours
    status = 1
    try:
        for other in (ours, *siblings):
            other.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        status = run_worker(config, sock, loads, theirs)
    except SystemExit as exc:  # uvicorn's start-up failure (3), or a clean exit
        status = exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:  # SIGINT (a terminal's Ctrl-C reaches every process): stopped
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def run_inherited(config: uvicorn.Config, fds: str) -> int:
    """A worker the overseer started afresh: "listen,loads,ping" descriptors it inherited."""
    listen, counts, ping = (int(fd) for fd in fds.split(","))
    return run_worker(config, socket.socket(fileno=listen), Loads.attach(counts), socket.socket(fileno=ping))


def run_worker(config: uvicorn.Config, sock: socket.socket, loads: Loads, ping: socket.socket) -> int:
    """Serve `sock` until stopped, answering the overseer's pings (whether the server has started)."""
    config.loads = loads  # type: ignore[attr-defined]  # read by BalancedServer
    server = BalancedServer(config)
    threading.Thread(target=_answer_pings, args=(ping, server), name="ferry-ping", daemon=True).start()
    server.run(sockets=[sock])
    return 0


def _answer_pings(ping: socket.socket, server: uvicorn.Server) -> None:
    """Answer the overseer's pings; once it is gone (killed: SIGKILL, the OOM killer — its end of
    the socket closed), stop this worker as SIGTERM would: the answers in progress finish, and no
    worker outlives its supervisor holding the port a restarted Ferry would bind."""
    ping.setblocking(True)
    while True:
        try:
            if not ping.recv(64):
                break
            ping.sendall(b"1" if server.started else b"0")
        except OSError:  # (ECONNRESET: it died with answers unread)
            break
    logger.warning("the supervisor is gone: this worker stops")
    server.should_exit = True  # read by uvicorn's main loop on its next tick
