"""Several workers (FERRY_WORKERS > 1) forked from a parent that has loaded Ferry, not spawned.

uvicorn's supervisor spawns each worker as a fresh interpreter (plus multiprocessing's resource
tracker, a fourth process): every worker imports FastAPI, pydantic and Ferry on its own, ~41 MiB of
private memory each. Forked from a parent that imported them once, the workers share those pages
with the parent and each other (copy-on-write; `gc.freeze()` keeps the collector from writing to
them), and a worker's own memory is what it builds after the fork.

What is loaded before the fork is modules only: no event loop, thread, SQLite connection or open
file besides the listening socket exists in the parent (the app itself, its index and its watcher
are made in each worker by `create_app`, as before). uvicorn's supervisor is kept as it is
(restarts after a crash, SIGHUP, SIGTERM, SIGTTIN/SIGTTOU): only the way it starts a worker changes,
and how a forked worker accepts connections: through app/balance.py's `Acceptor`, which leaves a
connection to a less busy sibling (their counts in memory shared from before the fork).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from multiprocessing.context import ForkProcess
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess

from app.balance import Acceptor, Loads

# What every worker imports before it serves: the app and what it names. Modules a request only
# sometimes needs (a bucket's client, archive writers) are left to the worker that needs them.
PRELOAD = ("app.main", "uvloop", "httptools")

_FORK = multiprocessing.get_context("fork")


def can_fork() -> bool:
    """True while forking is safe and shares what it should: only this thread runs (a bucket's
    start-up probe may leave a client's runtime threads behind), and prometheus-client is not yet
    imported (it chooses its multiprocess mode from the environment once, when imported). Asked
    before `serve` sets that environment; otherwise the workers are spawned, as uvicorn does."""
    if not os.path.isdir("/proc/self/task"):  # not Linux: keep uvicorn's spawned workers
        return False
    return len(os.listdir("/proc/self/task")) == 1 and "prometheus_client" not in sys.modules


def preload(modules: tuple[str, ...] = PRELOAD) -> None:
    """Import what every worker needs, then freeze what is alive so forks share it untouched."""
    for name in modules:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()  # the collector never walks (and so never writes to) objects made before the fork


def forked_worker(
    config: uvicorn.Config, target: Callable[..., None], sockets: list[socket.socket]
) -> ForkProcess:
    """A worker process forked from this one, in place of uvicorn's spawned one (same arguments as
    uvicorn's `get_subprocess`)."""
    return _FORK.Process(
        target=_worker_started, kwargs={"config": config, "target": target, "sockets": sockets}
    )


def _worker_started(
    config: uvicorn.Config, target: Callable[..., None], sockets: list[socket.socket]
) -> None:
    """The forked worker's first act: the supervisor's signal handlers (which only queue a signal
    for the supervisor's loop) give way to the defaults a fresh process has, until uvicorn installs
    its own; then logging and the server, as uvicorn's spawned worker does."""
    for number in multiprocess.SIGNALS:
        signal.signal(number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL)
    config.configure_logging()
    try:
        target(sockets=sockets)
    except KeyboardInterrupt:  # the supervisor is ending too; nothing to report
        pass


class BalancedServer(uvicorn.Server):
    """uvicorn's server in a forked worker: its listening sockets served by `Acceptor`s (the
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


def supervise(config: uvicorn.Config, sock: socket.socket, *, fork: bool) -> None:
    """Run uvicorn's supervisor until it is stopped, over workers forked from this process once it
    has loaded the app (`fork`, see `can_fork`) or else spawned."""
    if fork:
        preload()
        multiprocess.get_subprocess = forked_worker  # type: ignore[attr-defined,assignment]  # how it starts a worker
        # Two slots per worker: one restarted after a crash finds a free one at once.
        config.loads = Loads(2 * config.workers)  # type: ignore[attr-defined]  # read by BalancedServer
        multiprocess.Server = BalancedServer  # type: ignore[attr-defined]  # what each worker runs
    multiprocess.Multiprocess(config, sockets=[sock]).run()
