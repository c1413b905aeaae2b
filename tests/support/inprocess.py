"""The in-process tier: `create_app` driven through `httpx.ASGITransport`, no socket, no subprocess.

`in_process(app)` runs the app's lifespan (the start-up scan, the watcher if the settings ask for
it) and yields an `httpx.AsyncClient` on it. `AppPool` is the in-process twin of
`tests.support.servers.ServerPool` for synchronous tests: one tree, one app per set of `ferry serve`
flags, each on a host name of its own, all reached through one `httpx.Client`.

The transport hands the whole response body over at once: what depends on how bytes cross a socket
(streaming, back-pressure, disconnects, zero-copy) belongs in the real-server tier.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from app.cli import build_parser
from app.main import FerryApp, create_app
from app.settings import Settings
from tests.support.servers import PATIENCE, build_storage_tree

BASE_URL = "http://ferry"
T = TypeVar("T")


def make_settings(root: Path, **overrides: object) -> Settings:
    # Overrides are raw values ("64KiB" for a size) that Settings validates, as it does flags.
    return Settings(_env_file=None, root=root, **overrides)  # type: ignore[arg-type]


def settings_from_flags(root: Path, *flags: str, **overrides: object) -> Settings:
    """The Settings `ferry serve --root ROOT *flags` would run with (no environment, no env file)."""
    given = vars(build_parser().parse_args(["serve", "--root", str(root), *flags]))
    given.pop("command")
    given.pop("root")
    return make_settings(root, **{**given, **overrides})


async def until_ready(app: FerryApp) -> None:
    """Wait until the start-up scan has finished, as `ferry serve` does before its first request."""
    await asyncio.wait_for(app.services.keeper.ready.wait(), timeout=2 * PATIENCE)


@asynccontextmanager
async def in_process(
    app: FerryApp,
    *,
    lifespan: bool = True,
    raise_app_exceptions: bool = True,
    base_url: str = BASE_URL,
    timeout: float = 5.0,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client on `app`; with `lifespan`, the app is started (and stopped) as the server does it.

    Without it the app is used cold (a test that scans by hand); its index writer thread is ended
    and its index closed at the end, as the lifespan would. `base_url` is where the client believes
    the server is (the scope's server address and Host come from it).
    """
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    if not lifespan:
        try:
            async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=timeout) as http:
                yield http
        finally:
            await asyncio.to_thread(app.services.async_index.close)
            app.services.index.close()
        return
    async with app.router.lifespan_context(app):
        await until_ready(app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=timeout) as http:
            yield http


# --------------------------------------------------------------------------- synchronous tests


class _Loop:
    """An event loop on a thread of its own, for synchronous tests to run coroutines on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="in-process-app", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=4 * PATIENCE)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=PATIENCE)
        self.loop.close()


class _Started:
    """An app whose lifespan runs in one task on the loop, from start() until stop()."""

    def __init__(self, app: FerryApp, loop: _Loop) -> None:
        self.app = app
        self.loop = loop
        self.transport = httpx.ASGITransport(app=app)
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Future[None] | None = None

    def start(self) -> None:
        started: asyncio.Future[None] = self.loop.loop.create_future()

        async def live() -> None:
            self._stop = asyncio.Event()
            async with self.app.router.lifespan_context(self.app):
                await until_ready(self.app)
                started.set_result(None)
                await self._stop.wait()

        async def launch() -> None:
            self._task = asyncio.ensure_future(live())
            await asyncio.wait([self._task, started], return_when=asyncio.FIRST_COMPLETED)
            if self._task.done():
                self._task.result()  # it failed to start: raise why

        self.loop.run(launch())

    def stop(self) -> None:
        async def end() -> None:
            if self._stop is not None and self._task is not None:
                self._stop.set()
                await self._task

        self.loop.run(end())


class _Routed(httpx.BaseTransport):
    """A synchronous transport handing each request to the app named by its host."""

    def __init__(self, loop: _Loop) -> None:
        self.loop = loop
        self.apps: dict[str, _Started] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = self.apps[request.url.host]
        body = request.read()  # the body as bytes, whatever the caller gave (ASGITransport is async)
        forwarded = httpx.Request(request.method, request.url, headers=request.headers, content=body)

        async def send() -> tuple[int, list[tuple[bytes, bytes]], bytes, dict[str, Any]]:
            response = await started.transport.handle_async_request(forwarded)
            content = await response.aread()
            return response.status_code, response.headers.raw, content, dict(response.extensions)

        status, headers, content, extensions = self.loop.run(send())
        # A stream, not `content=`: httpx would add a Content-Length the app never sent.
        return httpx.Response(
            status, headers=headers, stream=httpx.ByteStream(content), extensions=extensions
        )


class InProcessServer:
    """What a test needs of a server, in-process: where it is (`url`), what it serves (`root`) and
    a client that reaches it (the pool's)."""

    def __init__(self, url: str, root: Path, app: FerryApp, client: httpx.Client) -> None:
        self.url = url
        self.root = root
        self.app = app
        self.client = client


class AppPool:
    """One tree (`tree(base)` makes it; by default tests/support/servers.py's awkward one) and one
    started app per set of flags."""

    def __init__(self, base: Path, tree: Callable[[Path], Path] = build_storage_tree) -> None:
        self.base = base
        self.cwd = base / "cwd"
        self.cwd.mkdir()
        self.root = tree(base)
        self._loop = _Loop()
        self._transport = _Routed(self._loop)
        self.client = httpx.Client(transport=self._transport, follow_redirects=False, timeout=PATIENCE)
        self.servers: dict[tuple[str, ...], InProcessServer] = {}

    def get(self, *flags: str) -> InProcessServer:
        server = self.servers.get(flags)
        if server is None:
            host = f"ferry-{len(self.servers)}.test"
            # Each app keeps its own index, as each pooled server does.
            index = self.cwd / f"index-{len(self.servers)}.sqlite3"
            app = self.create(self.settings(flags, index))
            started = _Started(app, self._loop)
            started.start()
            self._transport.apps[host] = started
            server = InProcessServer(f"http://{host}", self.root, app, self.client)
            self.servers[flags] = server
        return server

    def settings(self, flags: tuple[str, ...], index: Path) -> Settings:
        """The settings of the app started for `flags` (tests/support/buckets.py: from a bucket)."""
        return settings_from_flags(self.root, *flags, index_path=index)

    def create(self, settings: Settings) -> FerryApp:
        return create_app(settings)

    def mtime(self, name: str) -> int:
        """The Last-Modified (whole seconds) a download of `name` says."""
        return int((self.root / name).stat().st_mtime)

    def client_for(self, url: str) -> httpx.Client:
        """A client of its own whose relative URLs go to `url` (one of this pool's servers)."""
        return httpx.Client(transport=self._transport, base_url=url, follow_redirects=False, timeout=PATIENCE)

    def stop(self) -> None:
        self.client.close()
        for started in self._transport.apps.values():
            started.stop()
        self._loop.close()


def module_app_pool(
    name: str,
    prepare: Callable[[AppPool], None] | None = None,
    tree: Callable[[Path], Path] = build_storage_tree,
) -> Any:
    """A module-scoped fixture: an `AppPool` over a tree of its own, `prepare`d before any app
    starts. Use as `pool = module_app_pool("name")`."""

    @pytest.fixture(scope="module")
    def shared_apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppPool]:
        shared = AppPool(tmp_path_factory.mktemp(name), tree)
        if prepare is not None:
            prepare(shared)
        yield shared
        shared.stop()

    return shared_apps
