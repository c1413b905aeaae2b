"""The application factory: `create_app(settings)` builds one Ferry app; no import-time state."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import Depends, FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__, metrics
from app.access import Lines, Observed, answered_now
from app.cors import Cors
from app.errors import FerryError, error_response, handle_ferry_error
from app.memory import FreedMemory
from app.request import READ_METHODS, WRITE_METHODS, FileRequest, is_file_request
from app.routes import api, links, ops, selections, static, tus
from app.routes.api import api_reader
from app.routes.fast_files import FastFiles
from app.routes.files import Downloads
from app.routes.writes import Writes
from app.services import Services
from app.settings import Settings
from app.storage.errors import StorageError
from app.transfer.spans import Body, FileSpan


class Reads(Protocol):
    async def __call__(self, request: FileRequest) -> ASGIApp: ...


class Stores(Protocol):
    async def __call__(self, request: FileRequest, receive: Receive) -> ASGIApp | None: ...


class FerryApp(FastAPI):
    """FastAPI for the API and operations routes; requests under /files/ go straight to
    `Downloads` and `Writes`."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(lifespan=_lifespan, **kwargs)
        self.services = Services.build(settings)
        local = Downloads(self.services)
        self.downloads: Reads = local
        self.writes: Stores = Writes(self.services)
        if self.services.bucket is not None:  # FERRY_STORAGE=s3://…
            from app.routes.bucket_files import BucketDownloads
            from app.routes.bucket_writes import BucketWrites

            self.downloads = BucketDownloads(self.services, self.services.bucket)
            self.writes = BucketWrites(self.services, self.services.bucket)
        self.log_format = settings.log_format
        self.access_lines: Lines | None = None  # `ferry serve` batches them (app/server.py)
        self.cors = (
            Cors(settings.cors_origins, writes=settings.write_token is not None)
            if settings.cors_origins
            else None
        )
        self.fast = (
            FastFiles(local, cors=self.cors is not None)
            if settings.fast_path == "on" and self.services.bucket is None
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # lifespan
            return
        observed = Observed(scope, send, receive)
        send_out = observed if self.cors is None else self.cors.wrap(scope, observed)
        receive = observed.receive
        try:
            preflight = None if self.cors is None else self.cors.preflight(scope)
            if preflight is not None:
                await preflight(scope, receive, observed)
            elif is_file_request(scope):
                await self.files(scope, receive, send_out)
            else:
                await super().__call__(scope, receive, send_out)
        finally:
            observed.finish(self.log_format, self.access_lines)

    def answer_now(
        self, scope: Scope, *, spans: bool = False
    ) -> tuple[int, list[tuple[bytes, bytes]], Body] | None:
        """The fast path (app/routes/fast_files.py): a small file's whole answer, logged and
        counted as the app's own answers are, for the protocol to write (`spans`: it can send a
        `FileSpan`, and close it); None: run the app."""
        if self.fast is None:
            return None
        started = time.perf_counter()
        found = self.fast.answer(scope, spans=spans)
        if found is None:
            return None
        status, headers, body = found
        if isinstance(body, FileSpan) and body.on_end is not None:
            body.on_end = self._streamed(scope, status, headers, started, body.count, body.on_end)
        else:
            answered_now(scope, status, headers, len(body), started, self.log_format, self.access_lines)
        # (after the line is noted: the turn's metrics then move once, after its lines are settled)
        metrics.TALLY.inc(metrics.FAST_ANSWERS)
        return status, headers, body

    def _streamed(
        self,
        scope: Scope,
        status: int,
        headers: list[tuple[bytes, bytes]],
        started: float,
        length: int,
        held: Callable[[int, bool], None],
    ) -> Callable[[int, bool], None]:
        """A streamed answer's end (`FileSpan.on_end`): what it held let go, then logged and counted."""
        metrics.TALLY.inc(metrics.IN_FLIGHT)  # (at the turn's end: after its first bytes are sent)
        first_byte = time.perf_counter() - started

        def ended(sent: int, cut: bool) -> None:
            held(sent, cut)
            metrics.TALLY.inc(metrics.IN_FLIGHT, -1.0)  # (with the inc, should it end in the same turn)
            lines, owed = self.access_lines, length - sent if cut else None
            answered_now(
                scope,
                status,
                headers,
                sent,
                started,
                self.log_format,
                lines,
                first_byte=first_byte,
                owed=owed,
            )

        return ended

    async def files(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Downloads, listings and writes under /files/: the request parsed once, and Ferry's errors
        answered here (each route raises them before its answer has sent anything)."""
        request = FileRequest.parse(scope, self.services.settings.public_url)
        try:
            if request.method in READ_METHODS:
                answer: ASGIApp | None = await self.downloads(request)
            else:
                answer = await self.writes(request, receive)
            if answer is not None:
                await answer(scope, receive, send)
        except (FerryError, StorageError) as exc:
            await error_response(exc, close=request.method in WRITE_METHODS)(scope, receive, send)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    assert isinstance(app, FerryApp)
    services = app.services
    await services.keeper.start()
    freed = FreedMemory()  # what the worker freed, back to the kernel every few seconds
    freed.start()
    try:
        yield
    finally:
        freed.stop()
        services.on_demand.close()
        if app.fast is not None:
            app.fast.kept.close()
        if app.access_lines is not None:
            app.access_lines.flush()
        await services.keeper.stop()
        # Cleanup queued by requests that shutdown cancelled (an upload's end) still runs.
        await asyncio.to_thread(services.async_index.close)
        if services.bucket is not None:
            await services.bucket.aclose()  # before the interpreter finalises (app/storage/s3.py)
        metrics.process_exited(os.getpid())


def create_app(settings: Settings | None = None) -> FerryApp:
    app = FerryApp(
        settings or Settings(),
        title="Ferry",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        # Starlette's slash redirects build an absolute URL from the Host header; Ferry makes its own.
        redirect_slashes=False,
    )
    app.add_exception_handler(FerryError, handle_ferry_error)
    app.add_exception_handler(StorageError, handle_ferry_error)
    app.include_router(ops.router)
    # FERRY_DOWNLOAD_AUTH=token or signed: the JSON API and search need a read token.
    app.include_router(
        api.router,
        dependencies=[Depends(api_reader)],
        responses={401: {"description": "a read token is required (FERRY_DOWNLOAD_AUTH)"}},
    )
    app.include_router(links.router)
    app.include_router(selections.router)  # who may read decides, per folder: no router-wide gate
    app.include_router(tus.build_router(app.services))  # resumable uploads (tus, the IETF draft)
    app.include_router(static.router)
    return app
