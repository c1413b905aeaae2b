"""Ferry's uvicorn set-up: the config that carries Settings to every worker, logging, and `serve`."""

from __future__ import annotations

import copy
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
from typing import Any

import uvicorn
import uvicorn.config

from app.memory import libc_function
from app.overseer import WORKER_ENV
from app.settings import Settings
from app.transfer.front import FrontProtocol
from app.transfer.protocol import FerryProtocol
from app.transfer.zero_copy import zero_copy_available

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by app/metrics.py in each worker


class FerryConfig(uvicorn.Config):
    """uvicorn's Config carrying Ferry's settings, so each worker process builds the same app."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        super().__init__(
            app="app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            # app/transfer/front.py, which hands all but the fast path's requests to protocol.py
            http=FrontProtocol if settings.fast_path == "on" and settings.storage is None else FerryProtocol,
            loop="auto",
            server_header=False,
            headers=[("server", "ferry")],
            log_config=_log_config(),
            access_log=False,  # Ferry writes its own (app/access.py)
            timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
            # Counted from when the last byte is queued, not read: a short one closes connections
            # under clients still reading a response that sat in the socket buffers.
            timeout_keep_alive=math.ceil(settings.keepalive_timeout),
            **kwargs,
        )

    fast_answers: Any = None  # the app, when it answers small downloads in the protocol itself

    def load_app(self) -> Any:
        from app.access import Lines
        from app.main import create_app

        def build() -> Any:
            app = create_app(self.settings)
            app.access_lines = Lines(sys.stdout)  # where _log_config sends `ferry.access`
            self.fast_answers = app if app.fast is not None else None
            return app

        return build


def _log_config() -> dict[str, Any]:
    """uvicorn's logging set-up, plus Ferry's own loggers on the same stderr handler."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["ferry"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config["formatters"]["line"] = {"format": "%(message)s"}
    config["handlers"]["access_line"] = {
        "formatter": "line",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
    }
    config["loggers"]["ferry.access"] = {"handlers": ["access_line"], "level": "INFO", "propagate": False}
    return config


def _raise_open_file_limit() -> None:
    """Each download holds a socket and a file: lift the soft descriptor limit to the hard one
    (as nginx's worker_rlimit_nofile does), so a busy server is not capped at 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


_M_TRIM_THRESHOLD = -1  # mallopt(3) parameters
_M_MMAP_THRESHOLD = -3
_MMAP_MAX = 32 * 1024**2  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit


def malloc_thresholds(chunk_size: int) -> tuple[int, int]:
    """(mmap threshold, trim threshold) for FERRY_CHUNK_SIZE: buffers of a few chunks come from
    the heap, and the heap keeps that many chunks' worth freed for the next request."""
    mmap = min(_MMAP_MAX, max(4 * 1024**2, 4 * chunk_size))
    return mmap, max(32 * 1024**2, 8 * chunk_size)


def _keep_request_memory(chunk_size: int) -> None:
    """glibc's malloc serves a block over 128 KiB (a socket read, a gathered upload chunk) from a
    fresh mmap, and gives the top of its heap back to the kernel as soon as a few MiB of it are
    free: each request of a series faulted its buffers in again. 1 GiB of 16 MiB tus PATCHes took
    104,000 page faults (a tenth of their CPU), one PUT of the same bytes 3,500. Fixed thresholds
    (`malloc_thresholds`) keep the freed buffers for the next request. Set here for this process
    and the workers forked from it, and in the environment for workers spawned afresh; an
    operator's own MALLOC_* variables win."""
    if any(name.startswith(("MALLOC_MMAP_THRESHOLD", "MALLOC_TRIM_THRESHOLD")) for name in os.environ):
        return
    mmap, trim = malloc_thresholds(chunk_size)
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(mmap)
    os.environ["MALLOC_TRIM_THRESHOLD_"] = str(trim)
    mallopt = libc_function("mallopt")  # glibc's (another libc without it: nothing to tune)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, mmap)
        mallopt(_M_TRIM_THRESHOLD, trim)


def serve(settings: Settings) -> int:
    """Run Ferry until it is stopped; returns the process exit status."""
    _raise_open_file_limit()
    _keep_request_memory(settings.chunk_size)
    if settings.zero_copy == "on" and not zero_copy_available():
        raise SystemExit(
            "ferry: invalid setting FERRY_ZERO_COPY: 'on' needs os.sendfile, which this platform lacks"
        )
    config = FerryConfig(settings)
    if (inherited := os.environ.pop(WORKER_ENV, None)) is not None:
        from app.supervisor import run_inherited

        return run_inherited(config, inherited)  # a worker the overseer started (app/overseer.py)
    server = uvicorn.Server(config)
    if config.workers > 1:
        from app.supervisor import can_fork, supervise

        fork = can_fork()  # before the metrics' environment is set (app/supervisor.py)
        # Workers share their metrics through files here (prometheus-client's multiprocess mode),
        # in a directory named after this process (the overseer's, after its exec).
        sweep_metrics_left(tempfile.gettempdir())
        with tempfile.TemporaryDirectory(prefix=f"{METRICS_PREFIX}{os.getpid()}-") as shared:
            os.environ[MULTIPROC_ENV] = shared
            sock = config.bind_socket()
            supervise(config, sock, fork=fork, metrics=shared)  # returns only where it cannot exec
        return 0
    # uvicorn re-raises SIGTERM after its graceful shutdown; a handler of ours turns that into the
    # clean exit (status 0) a supervisor or `docker stop` expects.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()
    return 0 if server.started else 1


METRICS_PREFIX = "ferry-metrics-"


def sweep_metrics_left(directory: str) -> list[str]:
    """Remove the metrics directories that servers killed outright (SIGKILL, the OOM killer, a
    container's stop timeout) left in `directory`: those whose overseer's process is gone, or is
    this one (a container's PID 1 again, starting before it made its own). The removed, sorted."""
    removed = []
    for name in sorted(os.listdir(directory)):
        pid, dash, _ = name.removeprefix(METRICS_PREFIX).partition("-")
        if not name.startswith(METRICS_PREFIX) or not dash or not pid.isdecimal():
            continue  # not a directory of this kind (an older Ferry's had no PID in its name)
        if int(pid) != os.getpid() and _alive(int(pid)):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
