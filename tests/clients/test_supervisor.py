"""A real `ferry serve --workers 2` under the supervisor its parent becomes once the workers are
forked (app/overseer.py): a small process of the standard library only, which starts a worker that
dies afresh, replaces the workers at SIGHUP without cutting a download, and stops the server at
SIGTERM. The overseer's own rules, over stand-in workers: tests/unit/test_overseer.py."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import httpx
import pytest

from app import overseer
from tests.conftest import FerryServer, ServerFactory, wait_for

pytestmark = pytest.mark.clients

MIB = 1024**2


def _children(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _started(server: FerryServer, count: int) -> bool:
    return server.log.read_text(errors="replace").count("Application startup complete") >= count


def _serving(root: Path, ferry: ServerFactory, env: dict[str, str] | None = None) -> FerryServer:
    server = ferry(root, "--workers", "2", env=env)
    assert wait_for(lambda: _started(server, 2)), server.log.read_text(errors="replace")[-2000:]
    return server


def _root(tmp_path: Path, size: int = 6) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(os.urandom(size))
    return root


def test_the_supervisor_holds_none_of_the_workers_libraries(ferry: ServerFactory, tmp_path: Path) -> None:
    server = _serving(_root(tmp_path), ferry)
    command = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode().split("\0")
    assert command[1:4] == ["-I", "-S", overseer.__file__], command
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    assert "pydantic_core" not in maps and "uvloop" not in maps and "httptools" not in maps
    for worker in _children(server.pid):  # forked before the exec: the command the server ran
        assert "serve" in Path(f"/proc/{worker}/cmdline").read_bytes().decode().split("\0")
        assert "pydantic_core" in Path(f"/proc/{worker}/maps").read_text()
    assert server.rss_bytes() < 24 * MIB  # Python without site-packages: ~11 MiB measured


def test_workers_that_die_are_started_again_and_serve(ferry: ServerFactory, tmp_path: Path) -> None:
    server = _serving(_root(tmp_path), ferry)
    first = _children(server.pid)
    for pid in first:
        os.kill(pid, signal.SIGKILL)
    replaced = lambda: len(_children(server.pid)) == 2 and not _children(server.pid) & first  # noqa: E731
    assert wait_for(replaced), server.log.read_text(errors="replace")[-2000:]
    assert wait_for(lambda: _started(server, 4)), server.log.read_text(errors="replace")[-2000:]
    log = server.log.read_text(errors="replace")
    assert all(f"Child process [{pid}] died" in log for pid in first), log[-2000:]
    for _ in range(4):  # only the new workers are left to answer
        response = httpx.get(f"{server.url}/files/hello.txt", timeout=30)
        assert response.status_code == 200 and response.content == b"hello\n"
    metrics = httpx.get(f"{server.url}/metrics", timeout=30)
    assert metrics.status_code == 200 and "ferry_" in metrics.text  # the shared directory is kept


def test_sighup_replaces_the_workers_without_cutting_a_download(ferry: ServerFactory, tmp_path: Path) -> None:
    root = _root(tmp_path, 64 * MIB)
    expected = hashlib.sha256((root / "big.bin").read_bytes()).hexdigest()
    server = _serving(root, ferry)
    old = _children(server.pid)
    received = hashlib.sha256()
    with httpx.stream("GET", f"{server.url}/files/big.bin", timeout=60) as response:
        pieces = response.iter_raw(MIB)
        received.update(next(pieces))  # the download is under way on one of the old workers
        server.process.send_signal(signal.SIGHUP)
        new = lambda: len(_children(server.pid) - old) == 2  # noqa: E731
        assert wait_for(new), server.log.read_text(errors="replace")[-2000:]
        assert wait_for(lambda: _started(server, 4)), server.log.read_text(errors="replace")[-2000:]
        answer = httpx.get(f"{server.url}/files/hello.txt", timeout=30)  # the new ones serve
        assert answer.status_code == 200 and answer.content == b"hello\n"
        for piece in pieces:
            received.update(piece)
    assert received.hexdigest() == expected
    # The old workers finish (the one that sent the download once it is done) and are gone.
    assert wait_for(lambda: not _children(server.pid) & old), _children(server.pid)
    assert len(_children(server.pid)) == 2


def _metrics_dir(server: FerryServer) -> Path:
    """The metrics directory of a server's workers (in the overseer's environment)."""
    environ = Path(f"/proc/{server.pid}/environ").read_bytes().decode(errors="replace").split("\0")
    (metrics,) = [item.split("=", 1)[1] for item in environ if item.startswith("PROMETHEUS_MULTIPROC_DIR=")]
    return Path(metrics)


def test_sigterm_stops_every_worker_and_removes_the_metrics(ferry: ServerFactory, tmp_path: Path) -> None:
    server = _serving(_root(tmp_path), ferry)
    workers = _children(server.pid)
    metrics = _metrics_dir(server)
    assert metrics.is_dir()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert not metrics.exists()


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_workers_stop_when_the_supervisor_is_killed(ferry: ServerFactory, tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) gives the overseer no chance to stop its workers: each sees its
    ping socket closed and stops as at SIGTERM, so none is left holding the port. The metrics
    directory it could not remove goes when the next server starts."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = _serving(_root(tmp_path), ferry, env={"TMPDIR": str(temp)})
    metrics = _metrics_dir(server)
    assert metrics.parent == temp and metrics.name.startswith(f"ferry-metrics-{server.pid}-")
    workers = _children(server.pid)
    assert len(workers) == 2
    assert httpx.get(f"{server.url}/files/hello.txt", timeout=30).content == b"hello\n"
    server.process.kill()
    server.process.wait(timeout=60)
    stopped = lambda: all(_gone(pid) for pid in workers)  # noqa: E731
    assert wait_for(stopped), server.log.read_text(errors="replace")[-2000:]
    log = server.log.read_text(errors="replace")
    assert log.count("the supervisor is gone: this worker stops") == 2, log[-2000:]
    with pytest.raises(httpx.ConnectError):  # the port is closed: nothing listens any more
        httpx.get(f"{server.url}/files/hello.txt", timeout=30)
    assert metrics.is_dir()  # nobody was left to remove it
    following = ferry(tmp_path / "root", "--workers", "2", env={"TMPDIR": str(temp)})
    assert wait_for(lambda: _started(following, 2)), following.log.read_text(errors="replace")[-2000:]
    assert not metrics.exists()
    assert [path.name for path in temp.iterdir()] == [_metrics_dir(following).name]
