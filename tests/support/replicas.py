"""Real `ferry serve` processes on a bucket of the test engine (tests/support/seaweed.py).

Each process gets a root, a working directory and an index of its own (a replica shares nothing
with another but the bucket and the settings); every test plants its objects under a prefix of its
own, since the engine serves the whole session.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import obstore

from tests.support.seaweed import Seaweed
from tests.support.servers import PATIENCE, FerryServer, _launch, _listening, start_server, wait_for

MiB = 1024**2


def fresh_prefix(name: str) -> str:
    """A key prefix no other test uses (the engine is shared by the session)."""
    return f"{name}-{os.urandom(4).hex()}/"


def bucket_env(engine: Seaweed, prefix: str, **settings: str) -> dict[str, str]:
    """The environment of a Ferry serving `prefix` of the engine's bucket, plus FERRY_ settings."""
    env = {**engine.env(), "FERRY_STORAGE": f"s3://{engine.bucket}/{prefix.rstrip('/')}"}
    env.update({f"FERRY_{name.upper()}": value for name, value in settings.items()})
    return env


def plant(engine: Seaweed, prefix: str, files: dict[str, bytes]) -> None:
    """Put objects under `prefix` directly into the engine (not through Ferry)."""
    store = engine.store()
    for rel, data in files.items():
        obstore.put(store, prefix + rel, data)


def random_blob(size: int) -> tuple[bytes, str]:
    data = os.urandom(size)
    return data, hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def workdir(base: Path, name: str) -> tuple[Path, Path]:
    """An empty FERRY_ROOT and a working directory (logs, the default index) for one process."""
    root, cwd = base / f"{name}-root", base / f"{name}-cwd"
    root.mkdir(parents=True)
    cwd.mkdir(parents=True)
    return root, cwd


def serve_bucket(base: Path, name: str, env: dict[str, str]) -> FerryServer:
    """`ferry serve` on the bucket of `env`, returned once /healthz answers 200."""
    root, cwd = workdir(base, name)
    return start_server(root, cwd, env=env)


def launch_bucket(base: Path, name: str, env: dict[str, str]) -> FerryServer:
    """`ferry serve` on the bucket of `env`, returned once it listens, whatever /healthz answers
    (the store may be down): the caller waits on what it expects."""
    root, cwd = workdir(base, name)
    server = _launch(root, cwd, (), env, False)

    def listening() -> bool:
        assert server.process.poll() is None, server.log.read_text(errors="replace")
        try:
            httpx.get(f"{server.url}/healthz", timeout=PATIENCE)
        except httpx.TransportError:
            return False
        return _listening(server.pid, server.port)

    if not wait_for(listening, 4 * PATIENCE):
        server.stop()
        raise AssertionError(f"ferry serve did not listen:\n{server.log.read_text(errors='replace')}")
    return server


def stop_cleanly(server: FerryServer) -> str:
    """SIGTERM, and what went wrong if the process did not then exit 0 on its own within a
    generous deadline (an abort at interpreter exit, a shutdown that hangs); "" if it did."""
    server.process.terminate()
    try:
        code = server.process.wait(timeout=4 * PATIENCE)
    except subprocess.TimeoutExpired:
        server.stop()
        return "ferry serve did not exit after SIGTERM"
    log = server.log.read_text(errors="replace")
    if code != 0:
        return f"ferry serve exited with {code} after SIGTERM:\n{log[-3000:]}"
    return ""


def stopping(servers: list[FerryServer]) -> Iterator[list[FerryServer]]:
    """For a fixture: the list the test appends its servers to, every one stopped at the end."""
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
