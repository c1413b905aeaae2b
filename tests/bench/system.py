"""The machine side of the benchmark: tools, processes, memory, data files and the page cache."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
# The command each tool needs, and the Debian package it comes from.
TOOL_PACKAGES = {"nginx": "nginx-light", "wrk": "wrk", "curl": "curl"}
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_COPY_BLOCK = 8 * 1024**2


class BenchError(Exception):
    """A measurement or a server did not behave; the run stops with this message."""


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the report."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- tools -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    nginx: str
    wrk: str
    curl: str


def find_tool(name: str) -> str | None:
    """The tool's path; nginx lives in /usr/sbin, which a non-root PATH often lacks."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def install_packages(packages: list[str]) -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    apt = [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    log(f"installing {' '.join(packages)} with apt-get")
    subprocess.run([*apt, "update", "-qq"], check=True, timeout=600)
    subprocess.run([*apt, "install", "-y", "-qq", *packages], check=True, timeout=900)


def ensure_tools() -> Tools:
    """nginx, wrk and curl, installed from the distribution when any is missing."""
    missing = [name for name in TOOL_PACKAGES if find_tool(name) is None]
    if missing:
        install_packages([TOOL_PACKAGES[name] for name in missing])
    paths = {name: find_tool(name) for name in TOOL_PACKAGES}
    absent = [name for name, path in paths.items() if path is None]
    if absent:
        raise BenchError(f"still missing after apt-get install: {', '.join(absent)}")
    return Tools(**{name: str(path) for name, path in paths.items()})


def tool_version(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


# --- machine -----------------------------------------------------------------------------------


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding `path` (cold-cache figures mean little on tmpfs)."""
    best, fstype = "", "unknown"
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, fields[2]
    return fstype


def machine_info(tools: Tools) -> dict[str, str]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "CPU": cpu_model(),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "nginx": tool_version([tools.nginx, "-v"]).removeprefix("nginx version: "),
        "wrk": " ".join(tool_version([tools.wrk, "-v"]).split()[:2]),
        "curl": " ".join(tool_version([tools.curl, "--version"]).split()[:2]),
    }


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def child_pids(parent: int) -> list[int]:
    return sorted(pid for pid in _all_pids() if (fields := _stat_fields(pid)) and int(fields[1]) == parent)


def group_pids(pgid: int) -> list[int]:
    return sorted(pid for pid in _all_pids() if (fields := _stat_fields(pid)) and int(fields[2]) == pgid)


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def rss_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) of a process in KiB, from /proc/PID/smaps_rollup: PSS shares each page among
    the processes mapping it, so a tree's PSS adds up to what it really holds and its RSS does not."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields = dict(line.split()[:2] for line in rollup.splitlines()[1:] if line.count(":") == 1)
    if "Rss:" not in fields or "Pss:" not in fields:
        return None
    return int(fields["Rss:"]), int(fields["Pss:"])


def tree_pids(parent: int) -> list[int]:
    """The parent and every process below it (a supervisor, its workers, helpers they started)."""
    found, todo = [parent], [parent]
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        if (fields := _stat_fields(pid)) is not None:
            children.setdefault(int(fields[1]), []).append(pid)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time the process has used so far."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def wait_idle(pid: int, *, window: float = 0.5, busy: float = 0.1, timeout: float = 120.0) -> bool:
    """Wait until the process uses less than `busy` of a CPU over `window` seconds; False if it
    never did within `timeout` (or is gone)."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while before is not None and time.monotonic() < deadline:
        time.sleep(window)
        after = cpu_seconds(pid)
        if after is not None and after - before < busy * window:
            return True
        before = after
    return False


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of a process group this harness started."""
    if group_pids(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextlib.contextmanager
def stopped(pgids: list[int]) -> Iterator[None]:
    """SIGSTOP these process groups for a measurement of another server (a Ferry that is not being
    measured may be hashing in the background and would take a core from the one that is)."""
    for pgid in pgids:
        os.killpg(pgid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pgid in pgids:
            os.killpg(pgid, signal.SIGCONT)


# --- data and the page cache -------------------------------------------------------------------


def write_random_file(path: Path, size: int) -> None:
    """`size` random bytes, fsynced so that POSIX_FADV_DONTNEED can evict every page later."""
    with path.open("wb") as out:
        remaining = size
        while remaining:
            block = os.urandom(min(_COPY_BLOCK, remaining))
            out.write(block)
            remaining -= len(block)
        out.flush()
        os.fsync(out.fileno())


def create_empty_files(directory: Path, names: list[str]) -> None:
    """Empty files, one open and close each, relative to one directory descriptor (no path walk)."""
    directory.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            os.close(os.open(name, flags, 0o644, dir_fd=dir_fd))
    finally:
        os.close(dir_fd)


def warm(path: Path) -> None:
    """Read the file once so the next transfer comes from the page cache."""
    buffer = bytearray(_COPY_BLOCK)
    with path.open("rb", buffering=0) as source:
        while source.readinto(buffer):
            pass


def evict(path: Path) -> None:
    """Drop the file's (clean) pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_bytes(path: Path) -> int | None:
    """How much of the file is in the page cache (util-linux fincore), or None if unknown."""
    fincore = find_tool("fincore")
    if fincore is None:
        return None
    command = [fincore, "--bytes", "--noheadings", "--output", "RES", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    text = result.stdout.strip()
    return int(text) if result.returncode == 0 and text.isdigit() else None
