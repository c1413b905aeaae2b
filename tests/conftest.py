"""Shared fixtures: a clean environment, an awkward storage tree, and a real `ferry serve`.

The helpers themselves live in tests/support/; the names below stay importable from here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.inprocess import make_settings
from tests.support.servers import (
    CANARY,
    PATIENCE,
    FerryServer,
    ServerFactory,
    ServerPool,
    build_storage_tree,
    free_port,
    quickest,
    start_server,
    wait_for,
)

# The `seaweed` fixture (a real S3-compatible engine) and the report section showing its log.
pytest_plugins = ["tests.support.seaweed"]

__all__ = [
    "CANARY",
    "PATIENCE",
    "FerryServer",
    "ServerFactory",
    "ServerPool",
    "build_storage_tree",
    "free_port",
    "make_settings",
    "quickest",
    "start_server",
    "wait_for",
]

# Property tests hash, touch files and sockets, and run on loaded machines: a per-example deadline
# measures the machine, not Ferry, and so does the health check on slow data generation. Examples
# stay random (a failure prints the seed and a blob to reproduce it); a test names its own
# max_examples. `pytest --hypothesis-profile=default` brings hypothesis's own defaults back.
settings.register_profile(
    "ferry",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ferry")


@pytest.fixture(autouse=True)
def _clean_ferry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's FERRY_* variables must not change test results."""
    for name in list(os.environ):
        if name.startswith("FERRY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def loopback_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(Ferry's end, non-blocking as a transport's; the client's end) of a TCP connection on
    loopback, for unit tests that write to a real socket."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        ferry, _ = listener.accept()
    ferry.setblocking(False)
    with ferry, client:
        yield ferry, client


@pytest.fixture
def storage_tree(tmp_path: Path) -> Path:
    return build_storage_tree(tmp_path)


@pytest.fixture
def zero_copy() -> str:
    """The transfer path (FERRY_ZERO_COPY) a test's servers run on: the production default, unless
    the test sends file bytes and so runs on both (tests/support/servers.py BOTH_TRANSFER_PATHS)."""
    return "auto"


@pytest.fixture
def ferry(tmp_path: Path, zero_copy: str) -> Iterator[ServerFactory]:
    """Start `ferry serve` on a free loopback port: ferry(root, "--flag", "value", ...).

    Every server runs on the `zero_copy` fixture's transfer path unless the flags name one.
    """
    servers: list[FerryServer] = []
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)

    def start(root: Path, *flags: str, env: dict[str, str] | None = None) -> FerryServer:
        if "--zero-copy" not in flags:
            flags = (*flags, "--zero-copy", zero_copy)
        server = start_server(root, workdir, *flags, env=env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
