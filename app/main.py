"""The application factory: `create_app(settings)` builds one Ferry app; no import-time state."""

from __future__ import annotations

from fastapi import FastAPI

from app import __version__
from app.errors import FerryError, handle_ferry_error
from app.routes import files, ops
from app.settings import Settings
from app.storage.paths import PathPolicy


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(title="Ferry", version=__version__, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.policy = PathPolicy(
        root=settings.root, show_hidden=settings.show_hidden, follow_symlinks=settings.follow_symlinks
    )
    app.add_exception_handler(FerryError, handle_ferry_error)
    app.include_router(ops.router)
    app.include_router(files.router)
    return app
