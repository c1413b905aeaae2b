"""The same test tree served from a bucket (FERRY_STORAGE=s3://…) as from a local ROOT.

`plant_tree` copies a tree's regular files into the session's engine (`weed mini`,
tests/support/seaweed.py) under a fresh key prefix; symlinks are left out (a bucket has none), and
so are names with control characters (obstore cannot name such a key); hidden names are planted,
so that the bucket's name rules are exercised by the same cases. `BucketAppPool` and
`BucketServerPool` are the in-process and real-server pools over such a bucket: same `get`, same
`root` (the local tree the objects were copied from), while the app or server itself is given an
empty FERRY_ROOT, so every byte it sends comes from the bucket.

A test module runs its backend-neutral cases on both with `backend = backend_fixture()`, a pool
fixture from `module_app_pools`/`module_server_pools`, and `pytest_generate_tests =
both_backends`; a case that only makes sense on a disk (symlinks, inodes, sendfile) is decorated
`@disk_only` and runs on the local root alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from app.main import FerryApp, create_app
from app.settings import Settings
from tests.support.inprocess import AppPool, in_process, settings_from_flags
from tests.support.seaweed import Seaweed
from tests.support.servers import PATIENCE, FerryServer, ServerPool, build_storage_tree, start_server

F = TypeVar("F", bound=Callable[..., Any])
BACKENDS = ["local", pytest.param("s3", marks=pytest.mark.engine)]


def disk_only(test: F) -> F:
    """A case about what only a local root has (symlinks, inodes, sendfile): run on it alone."""
    test.disk_only = True  # type: ignore[attr-defined]
    return test


def both_backends(metafunc: pytest.Metafunc) -> None:
    """`pytest_generate_tests` of a module whose cases take `backend`: local and s3, or local
    alone for a `disk_only` case."""
    if "backend" in metafunc.fixturenames:
        local = getattr(metafunc.function, "disk_only", False)
        metafunc.parametrize("backend", ["local"] if local else BACKENDS, indirect=True, scope="module")


def backend_fixture() -> Any:
    """The module-scoped `backend` fixture: "local" or "s3" (its parameter)."""

    @pytest.fixture(scope="module")
    def backend(request: pytest.FixtureRequest) -> str:
        return str(getattr(request, "param", "local"))

    return backend


def new_prefix(name: str) -> str:
    """A key prefix no other test uses (the engine is shared by the session)."""
    return f"{name}-{os.urandom(4).hex()}"


def plant_tree(engine: Seaweed, prefix: str, root: Path) -> list[str]:
    """Every regular file under `root` (symlinks skipped) as an object under `prefix`; the keys."""
    import obstore

    store = engine.store()
    keys = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
        for name in files:
            path = Path(folder) / name
            if path.is_symlink() or not name.isprintable():
                continue  # obstore cannot name a key with a control character
            key = f"{prefix}/{path.relative_to(root).as_posix()}"
            obstore.put(store, key, path.read_bytes())
            keys.append(key)
    return keys


def bucket_env(engine: Seaweed, prefix: str) -> dict[str, str]:
    """The environment of a Ferry serving `prefix` of the engine's bucket."""
    return {**engine.env(), "FERRY_STORAGE": f"s3://{engine.bucket}/{prefix}"}


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ for the block (an in-process app reads AWS_* when it is made)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            patch.setenv(name, value)
        yield


def bucket_settings(engine: Seaweed, prefix: str, root: Path, *flags: str, **overrides: object) -> Settings:
    """The Settings of `ferry serve --root ROOT *flags` serving `prefix` of the engine's bucket."""
    return settings_from_flags(
        root,
        *flags,
        storage=f"s3://{engine.bucket}/{prefix}",
        s3_endpoint=engine.endpoint,
        s3_region=engine.region,
        s3_allow_http=True,
        **overrides,
    )


def bucket_app(engine: Seaweed, settings: Settings) -> FerryApp:
    with environment(engine.env()):
        return create_app(settings)


def object_mtime(engine: Seaweed, key: str) -> int:
    """The object's Last-Modified, in whole seconds (what a download's Last-Modified says)."""
    import obstore

    return int(obstore.head(engine.store(), key)["last_modified"].timestamp())


def wait_until_past(mtime: int) -> None:
    """Until the clock has passed `mtime` by a second: a Last-Modified is strong (If-Range by date,
    RFC 9110 §8.8.2.2) only from then on, and an object planted just now is not yet."""
    while time.time() < mtime + 1.5:
        time.sleep(0.1)


async def plant(engine: Seaweed, prefix: str, objects: dict[str, bytes], *, parallel: int = 16) -> None:
    """`objects` ({key below prefix: bytes}) put in the bucket, `parallel` at a time."""
    import obstore

    store = engine.store()
    gate = asyncio.Semaphore(parallel)

    async def put(key: str, data: bytes) -> None:
        async with gate:
            await obstore.put_async(store, f"{prefix}/{key}", data)

    await asyncio.gather(*(put(key, data) for key, data in objects.items()))


@asynccontextmanager
async def serving(
    engine: Seaweed, tmp_path: Path, prefix: str, *flags: str, **overrides: object
) -> AsyncIterator[httpx.AsyncClient]:
    """An app serving `prefix` of the bucket, started (its first listing round done)."""
    root = tmp_path / "empty-root"
    root.mkdir(exist_ok=True)
    index = tmp_path / f"index-{prefix}.sqlite3"
    app = bucket_app(engine, bucket_settings(engine, prefix, root, *flags, index_path=index, **overrides))
    async with in_process(app, timeout=PATIENCE) as http:
        yield http


class BucketAppPool(AppPool):
    """An `AppPool` whose apps serve the tree from a bucket (planted at the first `get`)."""

    def __init__(
        self, base: Path, engine: Seaweed, tree: Callable[[Path], Path] = build_storage_tree
    ) -> None:
        super().__init__(base, tree)
        self.engine = engine
        self.prefix = new_prefix(base.name)
        self.empty = base / "empty-root"
        self.empty.mkdir()
        self._planted = False

    def settings(self, flags: tuple[str, ...], index: Path) -> Settings:
        if not self._planted:
            plant_tree(self.engine, self.prefix, self.root)
            self._planted = True
        return bucket_settings(self.engine, self.prefix, self.empty, *flags, index_path=index)

    def create(self, settings: Settings) -> FerryApp:
        return bucket_app(self.engine, settings)

    def mtime(self, name: str) -> int:
        return object_mtime(self.engine, f"{self.prefix}/{name}")


class BucketServerPool(ServerPool):
    """A `ServerPool` whose servers serve the tree from a bucket (planted at the first `get`)."""

    def __init__(self, base: Path, engine: Seaweed) -> None:
        super().__init__(base)
        self.engine = engine
        self.prefix = new_prefix(base.name)
        self.empty = base / "empty-root"
        self.empty.mkdir()
        self._planted = False

    def get(self, zero_copy: str, *flags: str) -> FerryServer:
        key = (zero_copy, *flags)
        server = self.servers.get(key)
        if server is None or server.process.poll() is not None:
            if not self._planted:
                plant_tree(self.engine, self.prefix, self.root)
                self._planted = True
            index = self.cwd / f"index-{len(self.servers)}.sqlite3"
            env = bucket_env(self.engine, self.prefix)
            server = start_server(self.empty, self.cwd, *flags, "--index-path", str(index), env=env)
            self.servers[key] = server
        return server

    def mtime(self, name: str) -> int:
        return object_mtime(self.engine, f"{self.prefix}/{name}")


def _pool_fixture(name: str, make: Callable[[str, Path, pytest.FixtureRequest], Any], prepare: Any) -> Any:
    @pytest.fixture(scope="module")
    def shared(backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Any:
        pool = make(backend, tmp_path_factory.mktemp(f"{name}-{backend}"), request)
        if prepare is not None:
            prepare(pool)
        yield pool
        pool.stop()

    return shared


def module_app_pools(
    name: str,
    prepare: Callable[[AppPool], None] | None = None,
    tree: Callable[[Path], Path] = build_storage_tree,
) -> Any:
    """`module_app_pool` on the module's `backend`: an AppPool over a local ROOT, or over the same
    tree planted in the session's bucket."""

    def make(backend: str, base: Path, request: pytest.FixtureRequest) -> AppPool:
        if backend == "s3":
            return BucketAppPool(base, request.getfixturevalue("seaweed"), tree)
        return AppPool(base, tree)

    return _pool_fixture(name, make, prepare)


def module_server_pools(name: str, prepare: Callable[[ServerPool], None] | None = None) -> Any:
    """`module_pool` on the module's `backend`: real servers over a local ROOT or the bucket."""

    def make(backend: str, base: Path, request: pytest.FixtureRequest) -> ServerPool:
        if backend == "s3":
            return BucketServerPool(base, request.getfixturevalue("seaweed"))
        return ServerPool(base)

    return _pool_fixture(name, make, prepare)
