"""The application factory: `create_app(settings)` builds one Ferry app; no import-time state."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from starlette.types import Receive, Scope, Send

from app import __version__, metrics
from app.access import Observed
from app.auth import Gate, api_reader
from app.cors import Cors
from app.errors import FerryError, handle_ferry_error
from app.routes import api, links, ops, static
from app.routes.files import Downloads, is_download
from app.routes.writes import Writes, is_write
from app.settings import Settings
from app.storage.async_index import AsyncIndex
from app.storage.errors import StorageError
from app.storage.index import Index
from app.storage.integrity import DigestWorker
from app.storage.on_demand import OnDemandHasher
from app.storage.paths import PathPolicy
from app.storage.watch import IndexKeeper
from app.transfer.activity import Activity


class FerryApp(FastAPI):
    """FastAPI for the API and operations routes; downloads go straight to `Downloads`."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(lifespan=_lifespan, **kwargs)
        self.state.settings = settings
        self.state.policy = PathPolicy(
            root=settings.root, show_hidden=settings.show_hidden, follow_symlinks=settings.follow_symlinks
        )
        self.state.index = Index(settings.index_file, self.state.policy)
        self.state.async_index = AsyncIndex(self.state.index)  # what code on the event loop uses
        # Every process marks its transfers on the index's activity file; the hasher yields to them.
        self.state.activity = Activity(Path(str(settings.index_file) + ".busy"))
        hasher = None
        if settings.checksums:
            hasher = DigestWorker(self.state.index, self.state.activity, rate=settings.hash_rate)
        self.state.keeper = IndexKeeper(
            self.state.index, watch=settings.watch, rescan_interval=settings.rescan_interval, hasher=hasher
        )
        self.state.gate = Gate(settings)
        self.state.on_demand = OnDemandHasher(self.state.index, max_backlog=settings.hash_on_demand_max)
        self.downloads = Downloads(self.state)
        self.writes = Writes(self.state)
        self.log_format = settings.log_format
        self.cors = (
            Cors(settings.cors_origins, writes=settings.write_token is not None)
            if settings.cors_origins
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
            elif is_download(scope):
                await self.downloads(scope, receive, send_out)
            elif is_write(scope):
                await self.writes(scope, receive, send_out)
            else:
                await super().__call__(scope, receive, send_out)
        finally:
            observed.finish(self.log_format)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    keeper: IndexKeeper = app.state.keeper
    await keeper.start()
    try:
        yield
    finally:
        app.state.on_demand.close()
        await keeper.stop()
        # Cleanup queued by requests that shutdown cancelled (an upload's end) still runs.
        await asyncio.to_thread(app.state.async_index.close)
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
    app.include_router(static.router)
    return app
