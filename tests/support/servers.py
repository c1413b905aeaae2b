"""Real `ferry serve` subprocesses and the trees they serve: one launcher, one pool, one tree.

A test module shares one `ServerPool` (one tree, one server per set of flags, started on first use)
through `module_pool`; a test that needs a server of its own uses the `ferry` fixture
(tests/conftest.py) or `launcher`.
"""

from __future__ import annotations

import math
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import pytest

CANARY = b"FERRY-CANARY-outside-root-never-served\n"
T = TypeVar("T")

# How long a test waits for something that happens beside it (a scan, the watcher, a clean-up, a
# log line). CI machines are shared: a process may get no CPU for seconds, so waits are generous;
# each ends as soon as its condition holds, so a fast machine pays nothing for the margin.
PATIENCE = 30.0


def build_storage_tree(base: Path) -> Path:
    """ROOT (base/data) with awkward names (as dufs tests do), hidden files, and symlinks in and out.

    A canary file sits beside ROOT (and in a sibling directory whose name shares ROOT's prefix);
    no response may ever contain its bytes.
    """
    root = base / "data"
    root.mkdir()
    (base / "secret.txt").write_bytes(CANARY)
    sibling = base / "data_secret"
    sibling.mkdir()
    (sibling / "x.txt").write_bytes(CANARY)
    (root / "hello.txt").write_bytes(b"hello, ferry\n")
    (root / "empty.bin").write_bytes(b"")
    (root / "digits.txt").write_bytes(bytes(range(256)) * 4)  # 1024 bytes
    (root / "résumé 数据.bin").write_bytes(b"unicode name\n")
    (root / 'we"ird;name\\.txt').write_bytes(b"quotes\n")
    (root / "100% #1?.txt").write_bytes(b"percent\n")
    (root / "line\nbreak.txt").write_bytes(b"newline\n")
    (root / ".hidden").write_bytes(b"hidden\n")
    sub = root / "sub"
    sub.mkdir()
    (sub / "inner.txt").write_bytes(b"inner\n")
    (sub / ".env").write_bytes(b"SECRET=1\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(b"[core]\n")
    (root / "link-inside.txt").symlink_to(root / "hello.txt")
    (root / "link-outside.txt").symlink_to(base / "secret.txt")
    (root / "dir-outside").symlink_to(sibling)
    (root / "link-to-hidden").symlink_to(root / ".hidden")
    return root


def wait_for(condition: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    """Poll `condition` every 50 ms until it holds or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def quickest(attempt: Callable[[], T], tries: int = 3) -> tuple[list[T], float]:
    """Every result of `tries` runs of `attempt`, and the wall-clock seconds of the fastest run.

    A loaded machine stalls some runs, not all of them; a slow code path is slow in every run. A
    bound on the fastest run catches the slow path and ignores the stall.
    """
    results: list[T] = []
    fastest = math.inf
    for _ in range(tries):
        started = time.monotonic()
        results.append(attempt())
        fastest = min(fastest, time.monotonic() - started)
    return results, fastest


def ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port free now, chosen below the kernel's ephemeral range: a port the kernel hands
    out (bind to 0) can be taken meanwhile as the local port of any client connection on the
    machine, and suites running side by side make thousands of those."""
    floor = ephemeral_floor()
    for _ in range(200):
        port = random.randrange(max(1024, floor - 20000), floor)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free loopback port below the ephemeral range")


@dataclass
class FerryServer:
    """A `ferry serve` subprocess listening on a loopback port."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path
    log: Path

    @property
    def access_log(self) -> Path:
        """What the server wrote to stdout: one access line per request."""
        return self.log.with_suffix(".access.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    root: Path, cwd: Path, *flags: str, env: dict[str, str] | None = None, daemon: bool = False
) -> FerryServer:
    """`ferry serve` on a free port; `daemon`: in a session of its own with no controlling terminal,
    as a service manager starts it. A port taken between choosing and binding it (by a suite
    running beside this one) is given up for another."""
    for _ in range(5):
        server = _launch(root, cwd, flags, env, daemon)
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                break
            try:
                answered = httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                answered = False
            if answered and _listening(server.pid, server.port):
                return server
            time.sleep(0.05)
        else:
            server.stop()
            raise AssertionError("ferry serve did not become ready")
        server.process.wait(timeout=PATIENCE)
        if "address already in use" not in server.log.read_text():
            raise AssertionError(f"ferry serve exited: {server.log.read_text()}")
    raise AssertionError("ferry serve found no free port in five tries")


def _launch(
    root: Path, cwd: Path, flags: tuple[str, ...], env: dict[str, str] | None, daemon: bool
) -> FerryServer:
    port = free_port()
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    clean_env.update(env or {})
    log = (cwd / f"ferry-{port}.log").open("wb")
    access = (cwd / f"ferry-{port}.access.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app",
            "serve",
            "--root",
            str(root),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *flags,
        ],
        cwd=cwd,  # no config/ferry.env there
        env=clean_env,
        stdout=access,
        stderr=log,
        start_new_session=daemon,
    )
    log.close()
    access.close()
    return FerryServer(process, port, root, cwd / f"ferry-{port}.log")


def _listening(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on 127.0.0.1:`port` (not another server
    that took the port first: /healthz alone cannot tell them apart)."""
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd_dir / fd) in inodes for fd in os.listdir(fd_dir))
    except OSError:
        return False


ServerFactory = Callable[..., FerryServer]


class Server(Protocol):
    """What a test that only sends requests needs of a server, real or in-process."""

    @property
    def url(self) -> str: ...

    @property
    def root(self) -> Path: ...


# For a test whose bytes cross the socket differently on each transfer path (FERRY_ZERO_COPY): it
# runs on both, where every other test runs once, on the production default.
BOTH_TRANSFER_PATHS = pytest.mark.parametrize("zero_copy", ["off", "on"])


class ServerPool:
    """One tree for a test module and one `ferry serve` per (zero_copy, flags), started on first use."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.cwd = base / "cwd"
        self.cwd.mkdir()
        self.root = build_storage_tree(base)
        self.servers: dict[tuple[str, ...], FerryServer] = {}

    def get(self, zero_copy: str, *flags: str) -> FerryServer:
        key = (zero_copy, *flags)
        server = self.servers.get(key)
        if server is None or server.process.poll() is not None:
            # Each server keeps its own index: one started with other settings must not reset it.
            index = self.cwd / f"index-{len(self.servers)}.sqlite3"
            server = start_server(
                self.root, self.cwd, *flags, "--zero-copy", zero_copy, "--index-path", str(index)
            )
            self.servers[key] = server
        return server

    def mtime(self, name: str) -> int:
        """The Last-Modified (whole seconds) a download of `name` says."""
        return int((self.root / name).stat().st_mtime)

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


def module_pool(name: str, prepare: Callable[[ServerPool], None] | None = None) -> Any:
    """A module-scoped fixture: a `ServerPool` over a tree of its own, `prepare`d (extra files)
    before any server starts, stopped when the module ends. Use as `pool = module_pool("name")`."""

    @pytest.fixture(scope="module")
    def shared_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
        shared = ServerPool(tmp_path_factory.mktemp(name))
        if prepare is not None:
            prepare(shared)
        yield shared
        shared.stop()

    return shared_servers


def launcher(tmp_path: Path, ready: Callable[[FerryServer], object] | None = None) -> Iterator[ServerFactory]:
    """For a fixture: start(root, *flags) runs a server of the test's own in a fresh working
    directory (its own index and logs), returned once `ready(server)` has returned; every server
    is stopped when the test ends."""
    servers: list[FerryServer] = []

    def start(root: Path, *flags: str) -> FerryServer:
        cwd = tmp_path / f"cwd-{len(servers)}"
        cwd.mkdir()
        server = start_server(root, cwd, *flags)
        servers.append(server)
        if ready is not None:
            ready(server)
        return server

    yield start
    for server in servers:
        server.stop()
