"""`ferry serve` for the load run: conftest's start_server command, in its own process group so
that stopping it takes every worker with it."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def get_status(port: int, target: str, timeout: float = 2.0) -> int | None:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


@dataclass
class Ferry:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    access_log: Path

    @property
    def index(self) -> Path:
        """Where Ferry keeps its index when started in `cwd` without FERRY_INDEX_PATH."""
        return self.log.parent.resolve() / "var" / "index.sqlite3"

    @property
    def pid(self) -> int:
        return self.process.pid

    def healthy(self) -> bool:
        return get_status(self.port, "/healthz") == 200

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever is left of its group
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait(timeout=STOP_TIMEOUT)


def start_ferry(root: Path, workdir: Path, *flags: str) -> Ferry:
    """The command of tests/conftest.py's start_server; cwd `workdir` (no config/ferry.env there,
    and the index goes to workdir/var)."""
    port = free_port()
    command = [sys.executable, "-m", "app", "serve", "--root", str(root), "--host", HOST, "--port", str(port)]
    env = {key: value for key, value in os.environ.items() if not key.startswith("FERRY_")}
    env["PYTHONPATH"] = str(REPO)
    log, access = workdir / f"ferry-{port}.log", workdir / f"ferry-{port}.access.log"
    with log.open("wb") as err, access.open("wb") as out:
        process = subprocess.Popen(
            [*command, *flags], cwd=workdir, env=env, stdout=out, stderr=err, start_new_session=True
        )
    ferry = Ferry(process, port, log, access)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            ferry.stop()
            raise RuntimeError(f"ferry serve exited with {process.returncode}:\n{ferry.log_text()[-2000:]}")
        if ferry.healthy():
            return ferry
        time.sleep(0.1)
    ferry.stop()
    raise RuntimeError(f"ferry serve did not answer /healthz within {READY_TIMEOUT:.0f} s")
