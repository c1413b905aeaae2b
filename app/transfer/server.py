"""Ferry's uvicorn set-up: the HTTP protocol (httptools) with Ferry's per-connection limits.

The protocol subclass is written against uvicorn's `HttpToolsProtocol` in the version range
pinned in pyproject.toml; tests/clients exercise it through a real `ferry serve`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings


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
            **kwargs,
        )

    def load_app(self) -> Any:
        from app.main import create_app

        return functools.partial(create_app, self.settings)


class FerryProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        config = self.config
        assert isinstance(config, FerryConfig)
        # WRITE_BUFFER: past this many queued bytes, send() waits for the client to read.
        transport.set_write_buffer_limits(high=config.settings.write_buffer)


def serve(settings: Settings) -> int:
    """Run Ferry until it is stopped; returns the process exit status."""
    config = FerryConfig(settings)
    server = uvicorn.Server(config)
    if config.workers > 1:
        from uvicorn.supervisors import Multiprocess

        sock = config.bind_socket()
        Multiprocess(config, sockets=[sock]).run()
        return 0
    server.run()
    return 0 if server.started else 1
