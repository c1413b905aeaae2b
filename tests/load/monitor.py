"""The server's footprint from /proc: resident memory per worker and open descriptors per process."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(parent: int) -> list[int]:
    """Every live process below `parent` (children, their children, ...)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            parents[int(entry)] = int(fields[1])
    found, frontier = [], [parent]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += frontier
    return sorted(found)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def thread_count(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time these processes have used so far."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def fd_kind(target: str, root: Path, index: Path) -> str:
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("anon_inode:"):
        return target.strip("[]").replace("[", "")
    if target.startswith(str(root) + "/"):
        return "served file"
    if target.startswith(str(index)):
        return "index db"  # the database, its -wal and -shm
    return "file"


def fd_kinds(pids: list[int], root: Path, index: Path) -> Counter[str]:
    """Open descriptors of these processes by kind: socket, served file (below ROOT), index db, ..."""
    kinds: Counter[str] = Counter()
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                kinds[fd_kind(os.readlink(f"/proc/{pid}/fd/{name}"), root, index)] += 1
            except OSError:
                continue  # closed while we looked
    return kinds


@dataclass
class ServerProcesses:
    """Ferry's parent process and, with --workers > 1, uvicorn's worker processes below it."""

    parent: int
    root: Path  # the served tree
    index: Path  # the index database

    def all(self) -> list[int]:
        return [self.parent, *descendants(self.parent)]

    def workers(self) -> list[int]:
        children = [pid for pid in descendants(self.parent) if "resource_tracker" not in command_line(pid)]
        return children or [self.parent]

    def fds(self) -> int:
        return sum(fd_count(pid) for pid in self.all())


@dataclass
class Footprint:
    """Peaks seen by the sampler."""

    samples: int = 0
    peak_fds: int = 0
    peak_total_rss: int = 0  # the sum over workers at one moment
    peak_worker_rss: dict[int, int] = field(default_factory=dict)
    last_total_rss: int = 0

    def add(self, rss: dict[int, int], fds: int) -> None:
        self.samples += 1
        self.peak_fds = max(self.peak_fds, fds)
        self.last_total_rss = sum(rss.values())
        self.peak_total_rss = max(self.peak_total_rss, self.last_total_rss)
        for pid, value in rss.items():
            self.peak_worker_rss[pid] = max(self.peak_worker_rss.get(pid, 0), value)


def sample(processes: ServerProcesses, workers: list[int], footprint: Footprint) -> None:
    rss = {pid: value for pid in workers if (value := rss_bytes(pid)) is not None}
    footprint.add(rss, processes.fds())


async def sampler(processes: ServerProcesses, footprint: Footprint, interval: float) -> None:
    """Sample until cancelled (the worker list is re-read now and then: a restart shows up)."""
    workers = processes.workers()
    while True:
        sample(processes, workers, footprint)
        await asyncio.sleep(interval)
        if footprint.samples % 20 == 0:
            workers = processes.workers()


def wait_for_fds(processes: ServerProcesses, baseline: int, timeout: float) -> tuple[int, float]:
    """Poll until the open descriptors are back to `baseline` or `timeout` passes: (count, seconds)."""
    started = time.monotonic()
    while True:
        count = processes.fds()
        waited = time.monotonic() - started
        if count <= baseline or waited >= timeout:
            return count, waited
        time.sleep(0.1)


@dataclass(frozen=True)
class Snapshot:
    """The server at rest: before the load (the baseline) or after it."""

    fds: int
    fd_kinds: Counter[str]
    workers: list[int]
    rss: int  # summed over the workers
    threads: int
    cpu: float  # seconds used by the server's processes so far


def snapshot(processes: ServerProcesses) -> Snapshot:
    workers, pids = processes.workers(), processes.all()
    return Snapshot(
        fds=processes.fds(),
        fd_kinds=fd_kinds(pids, processes.root, processes.index),
        workers=workers,
        rss=sum(rss_bytes(pid) or 0 for pid in workers),
        threads=thread_count(pids),
        cpu=cpu_seconds(pids),
    )
