"""Several workers (FERRY_WORKERS > 1) forked from a parent that has loaded Ferry, not spawned.

uvicorn's supervisor spawns each worker as a fresh interpreter (plus multiprocessing's resource
tracker, a fourth process): every worker imports FastAPI, pydantic and Ferry on its own, ~41 MiB of
private memory each. Forked from a parent that imported them once, the workers share those pages
with the parent and each other (copy-on-write; `gc.freeze()` keeps the collector from writing to
them), and a worker's own memory is what it builds after the fork.

What is loaded before the fork is modules only: no event loop, thread, SQLite connection or open
file besides the listening socket exists in the parent (the app itself, its index and its watcher
are made in each worker by `create_app`, as before). uvicorn's supervisor is kept as it is
(restarts after a crash, SIGHUP, SIGTERM, SIGTTIN/SIGTTOU): only the way it starts a worker changes.
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from multiprocessing.context import ForkProcess

import uvicorn
from uvicorn.supervisors import multiprocess

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


def supervise(config: uvicorn.Config, sock: socket.socket, *, fork: bool) -> None:
    """Run uvicorn's supervisor until it is stopped, over workers forked from this process once it
    has loaded the app (`fork`, see `can_fork`) or else spawned."""
    if fork:
        preload()
        multiprocess.get_subprocess = forked_worker  # type: ignore[attr-defined,assignment]  # how it starts a worker
    multiprocess.Multiprocess(config, sockets=[sock]).run()
