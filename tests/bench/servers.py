"""The servers under test: `ferry serve` and nginx, each in its own process group on loopback.

Every server is started with `start_new_session=True`, so `stop()` can clean up its whole process
group (Ferry's workers, nginx's workers) and nothing else. Whichever is still running when the
bench's process exits (an error between a start and the step that would have stopped it) is
stopped then.
"""

from __future__ import annotations

import atexit
import http.client
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.system import HOST, BenchError, child_pids, command_line, free_port, kill_group

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass
class Server:
    """One server process (the parent: Ferry's supervisor or nginx's master)."""

    name: str
    kind: str  # "ferry" or "nginx"
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    started_at: float = field(default_factory=time.monotonic)  # just after the process was spawned

    def __post_init__(self) -> None:
        _RUNNING[self.process.pid] = self

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: children of the parent, or the parent alone."""
        children = [
            pid for pid in child_pids(self.process.pid) if "resource_tracker" not in command_line(pid)
        ]
        return children or [self.process.pid]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.process.pid)
        if self.process.poll() is None:
            self.process.wait(timeout=STOP_TIMEOUT)
        _RUNNING.pop(self.process.pid, None)


_RUNNING: dict[int, Server] = {}  # started and not stopped, by pid


@atexit.register
def _stop_the_rest() -> None:
    for server in list(_RUNNING.values()):
        server.stop()


def _healthy(port: int) -> bool:
    connection = http.client.HTTPConnection(HOST, port, timeout=1)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def wait_ready(server: Server) -> Server:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            server.stop()  # whatever it forked goes too
            tail = server.log.read_text(errors="replace")[-2000:]
            raise BenchError(f"{server.name} exited with {server.process.returncode}:\n{tail}")
        if _healthy(server.port):
            return server
        time.sleep(0.1)
    server.stop()
    raise BenchError(f"{server.name} did not answer /healthz within {READY_TIMEOUT:.0f} s")


def _spawn(command: list[str], *, log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


# --- Ferry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FerryOptions:
    workers: int
    zero_copy: str
    chunk_size: str | None  # None: Ferry's default
    fast_path: str = "on"

    def flags(self) -> list[str]:
        flags = ["--workers", str(self.workers), "--zero-copy", self.zero_copy, "--fast-path", self.fast_path]
        return flags + (["--chunk-size", self.chunk_size] if self.chunk_size else [])


def start_ferry(
    name: str,
    options: FerryOptions,
    root: Path,
    workdir: Path,
    *,
    index_path: Path | None = None,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Server:
    """`ferry serve` with its access log (on by default) going to a file in `workdir`, and its own
    index (default: a fresh file in `workdir`, so no two servers of a run share one). `env`: more
    variables (FERRY_STORAGE and the bucket's credentials, say); no other FERRY_* reaches it."""
    port = free_port()
    index = index_path or workdir / f"ferry-{port}-index.sqlite3"
    command = [sys.executable, "-m", "app", "serve", "--root", str(root), "--host", HOST]
    command += ["--port", str(port), "--index-path", str(index), *options.flags(), *extra]
    variables = {key: value for key, value in os.environ.items() if not key.startswith("FERRY_")}
    variables |= {"PYTHONPATH": str(REPO), **(env or {})}
    log = workdir / f"ferry-{port}.log"
    # cwd is the temp dir: no config/ferry.env there, so only the flags above apply.
    process = _spawn(command, log=log, cwd=workdir, env=variables)
    return wait_ready(Server(name, "ferry", process, port, log))


# --- nginx -------------------------------------------------------------------------------------


def _temp_path_directives(nginx: str, prefix: Path) -> str:
    """Temp paths inside `prefix`, for the modules this nginx has (a non-root nginx needs them)."""
    build = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10, check=False).stderr
    lines = [f"client_body_temp_path {prefix}/client_body;"]
    for module in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in build:
            lines.append(f"{module}_temp_path {prefix}/{module};")
    return "\n    ".join(lines)


def has_dav(nginx: str) -> bool:
    """Whether this nginx was built with ngx_http_dav_module (PUT)."""
    build = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10, check=False).stderr
    return "http_dav_module" in build


# WebDAV PUT into the served directory: bodies of any size, written to a temp file in the prefix
# (client_body_temp_path, the same filesystem) and renamed into place — nginx does not fsync them.
_DAV_PUT = """
            dav_methods PUT;
            dav_access user:rw group:r all:r;
            create_full_put_path on;
            client_max_body_size 0;"""


def nginx_config(
    *, nginx: str, port: int, root: Path, prefix: Path, nopush: bool, workers: int, dav: bool = False
) -> str:
    """sendfile on, tcp_nopush on or off, logs and pid in `prefix`; /files/NAME serves root/NAME
    (and, with `dav`, PUT /files/NAME writes it)."""
    # As root, nginx's workers would drop to `nobody`, who may not read the temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log {prefix}/access.log;
    sendfile on;
    tcp_nopush {"on" if nopush else "off"};
    keepalive_requests 1000000;
    default_type application/octet-stream;
    {_temp_path_directives(nginx, prefix)}
    server {{
        listen {HOST}:{port};
        location = /healthz {{
            return 200 "ok\\n";
        }}
        location /files/ {{
            alias {root}/;{_DAV_PUT if dav else ""}
        }}
    }}
}}
"""


def start_nginx(
    name: str, *, nginx: str, nopush: bool, workers: int, root: Path, workdir: Path, dav: bool = False
) -> Server:
    port = free_port()
    # Its own directory even when the port is one an nginx stopped earlier in the run had.
    prefix = Path(tempfile.mkdtemp(prefix=f"nginx-{port}-", dir=workdir))
    config = prefix / "nginx.conf"
    config.write_text(
        nginx_config(
            nginx=nginx, port=port, root=root, prefix=prefix, nopush=nopush, workers=workers, dav=dav
        )
    )
    # -e: errors before the config is read go to the prefix, not /var/log/nginx.
    command = [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)]
    log = prefix / "stderr.log"
    process = _spawn(command, log=log, cwd=prefix, env=dict(os.environ))
    return wait_ready(Server(name, "nginx", process, port, log))
