"""Ferry's uvicorn set-up: the HTTP protocol (httptools) with Ferry's per-connection limits.

The protocol subclass is written against uvicorn's `HttpToolsProtocol` in the version range
pinned in pyproject.toml; tests/clients exercise it through a real `ferry serve`.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import math
import os
import signal
import tempfile
from typing import Any

import uvicorn
import uvicorn.config
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.settings import Settings
from app.transfer.zero_copy import EXTENSION, ZeroCopySender, zero_copy_available

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
            http=FerryProtocol,
            loop="auto",
            server_header=False,
            headers=[("server", "ferry")],
            log_config=_log_config(),
            access_log=False,  # Ferry writes its own (app/access.py)
            timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
            **kwargs,
        )

    def load_app(self) -> Any:
        from app.main import create_app

        return functools.partial(create_app, self.settings)


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


class FerryProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus FERRY_WRITE_BUFFER and the zero-copy extension."""

    zero_copy = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        settings = self._settings()
        # WRITE_BUFFER: past this many queued bytes, send() waits for the client to read.
        transport.set_write_buffer_limits(high=settings.write_buffer)
        # sendfile cannot go through TLS: such connections keep the chunked-read path.
        self.zero_copy = (
            settings.zero_copy != "off"
            and zero_copy_available()
            and transport.get_extra_info("sslcontext") is None
        )

    def _settings(self) -> Settings:
        config = self.config
        assert isinstance(config, FerryConfig)
        return config.settings

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.zero_copy:
            self.scope["extensions"] = {EXTENSION: {}}

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if self.zero_copy:
            app = _with_zero_copy(app, ZeroCopySender(cycle, self.transport, self._settings().chunk_size))
        super()._start_asgi_task(cycle, app)


def _with_zero_copy(app: ASGI3Application, sender: ZeroCopySender) -> ASGI3Application:
    async def app_with_zero_copy(scope: Any, receive: Any, send: Any) -> None:
        zero_copy_send: Any = sender.send
        try:
            await app(scope, receive, zero_copy_send)
        finally:
            sender.close()

    return app_with_zero_copy


def serve(settings: Settings) -> int:
    """Run Ferry until it is stopped; returns the process exit status."""
    if settings.zero_copy == "on" and not zero_copy_available():
        raise SystemExit(
            "ferry: invalid setting FERRY_ZERO_COPY: 'on' needs os.sendfile, which this platform lacks"
        )
    config = FerryConfig(settings)
    server = uvicorn.Server(config)
    if config.workers > 1:
        from uvicorn.supervisors import Multiprocess

        # Workers share their metrics through files here (prometheus-client's multiprocess mode).
        with tempfile.TemporaryDirectory(prefix="ferry-metrics-") as shared:
            os.environ[MULTIPROC_ENV] = shared
            sock = config.bind_socket()
            Multiprocess(config, sockets=[sock]).run()
        return 0
    # uvicorn re-raises SIGTERM after its graceful shutdown; a handler of ours turns that into the
    # clean exit (status 0) a supervisor or `docker stop` expects.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()
    return 0 if server.started else 1


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
