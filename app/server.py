"""Ferry's uvicorn set-up: the config that carries Settings to every worker, logging, and `serve`."""

from __future__ import annotations

import copy
import math
import os
import resource
import signal
import sys
import tempfile
from typing import Any

import uvicorn
import uvicorn.config

from app.settings import Settings
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
            http=FerryProtocol,  # app/transfer/protocol.py
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


def serve(settings: Settings) -> int:
    """Run Ferry until it is stopped; returns the process exit status."""
    _raise_open_file_limit()
    if settings.zero_copy == "on" and not zero_copy_available():
        raise SystemExit(
            "ferry: invalid setting FERRY_ZERO_COPY: 'on' needs os.sendfile, which this platform lacks"
        )
    config = FerryConfig(settings)
    server = uvicorn.Server(config)
    if config.workers > 1:
        from app.supervisor import can_fork, supervise

        fork = can_fork()  # before the metrics' environment is set (app/supervisor.py)
        # Workers share their metrics through files here (prometheus-client's multiprocess mode).
        with tempfile.TemporaryDirectory(prefix="ferry-metrics-") as shared:
            os.environ[MULTIPROC_ENV] = shared
            sock = config.bind_socket()
            supervise(config, sock, fork=fork)
        return 0
    # uvicorn re-raises SIGTERM after its graceful shutdown; a handler of ours turns that into the
    # clean exit (status 0) a supervisor or `docker stop` expects.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()
    return 0 if server.started else 1


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
