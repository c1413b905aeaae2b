"""What is measured: the nine figures of issue 3, and the steps that take them from one server.

A step runs against one server and returns samples keyed by measure ("1".."9", "8a".."8d");
measure (8), the servers' peak RSS per worker, and (8c)-(8d), their whole process tree's, are
sampled during step (3), the concurrent downloads; (8a)-(8b) once, just after the servers started
(`idle_memory`).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.bench.clients import RssSampler, TreeMemory, WrkScripts, curl, wrk
from tests.bench.servers import Server
from tests.bench.system import Tools, evict, resident_bytes, write_random_file

GB = 1e9
MIB = 1024**2
FILES = {"stream": "stream.bin", "aggregate": "aggregate.bin", "small": "small.bin", "medium": "medium.bin"}


# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    stream: int  # one big stream, its ranges, the cold-cache stream (1 GiB)
    aggregate: int  # each of the concurrent downloads (100 MiB)
    small: int  # whole small file (64 KiB)
    medium: int  # whole medium file, time to first byte (1 MiB)

    def of(self, name: str) -> int:
        size: int = getattr(self, name)
        return size


@dataclass(frozen=True)
class DataSet:
    root: Path
    sizes: Sizes

    def path(self, name: str) -> Path:
        return self.root / FILES[name]


def create_data(root: Path, sizes: Sizes) -> DataSet:
    root.mkdir(parents=True, exist_ok=True)
    data = DataSet(root, sizes)
    for name in FILES:
        write_random_file(data.path(name), sizes.of(name))
    return data


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", MIB), ("KiB", 1024)):
        if size >= factor:
            amount = size / factor
            return f"{amount:.0f} {unit}" if amount == int(amount) else f"{amount:.1f} {unit}"
    return f"{size} B"


# --- measures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Issue 3's target: a least Ferry/nginx ratio, a most for Ferry's own figure, or none."""

    text: str
    min_ratio: float | None = None
    max_ferry: float | None = None

    def verdict(self, ferry: float, ratio: float) -> str:
        if self.min_ratio is not None:
            return "met" if ratio >= self.min_ratio else "MISSED"
        if self.max_ferry is not None:
            return "met" if ferry <= self.max_ferry else "MISSED"
        return ""


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: Target
    summary: str = "median"  # over runs; "max" for peaks

    @property
    def title(self) -> str:
        return f"{self.label} ({self.unit})"


def catalog(sizes: Sizes, *, connections: int, small_connections: int, ttfb_requests: int) -> list[Measure]:
    stream, each = format_size(sizes.stream), format_size(sizes.aggregate)
    small, medium = format_size(sizes.small), format_size(sizes.medium)
    ratio_90, ratio_55 = Target("≥ 0.90", min_ratio=0.90), Target("≥ 0.55", min_ratio=0.55)
    ratio_95 = Target("≥ 0.95", min_ratio=0.95)  # (3): issue 18 keeps it at nginx's pace
    conns = f"-c{small_connections}"
    return [
        Measure("1", f"(1) one {stream} stream, whole file", "GB/s", True, ratio_90),
        Measure("2", f"(2) one {stream} stream, Range bytes=1-", "GB/s", True, ratio_90),
        Measure("3", f"(3) {connections} concurrent {each} downloads, aggregate", "GB/s", True, ratio_95),
        Measure("4", f"(4) random 64 KiB ranges of the {stream} file, {conns}", "req/s", True, ratio_55),
        Measure("5", f"(5) whole {small} file, {conns}", "req/s", True, ratio_55),
        Measure("5c", "(5c) server CPU per request during (5), all processes", "µs", False,
                Target("≤ 80 µs", max_ferry=80.0)),
        Measure("5n", f"(5n) whole {small} file, a new connection each (Connection: close), {conns}", "req/s",
                True, Target("—")),
        Measure("6", f"(6) whole {medium} file, {conns}", "req/s", True, Target("—")),
        Measure("7", f"(7) time to first byte, {stream} file, median of {ttfb_requests}", "ms", False,
                Target("≤ 1 ms", max_ferry=1.0)),
        Measure("8", "(8) server peak RSS per worker during (3), highest of runs", "MiB", False,
                Target("≤ 80 MiB per worker", max_ferry=80.0), summary="max"),
        Measure("8a", "(8a) RSS of all server processes, idle after start", "MiB", False,
                Target("≤ 90 MiB", max_ferry=90.0), summary="max"),
        Measure("8b", "(8b) PSS of all server processes, idle after start", "MiB", False,
                Target("≤ 80 MiB", max_ferry=80.0), summary="max"),
        Measure("8c", "(8c) RSS of all server processes, peak during (3)", "MiB", False,
                Target("≤ 120 MiB", max_ferry=120.0), summary="max"),
        Measure("8d", "(8d) PSS of all server processes, peak during (3)", "MiB", False,
                Target("≤ 80 MiB", max_ferry=80.0), summary="max"),
        Measure("9", f"(9) cold-cache {stream} stream (evicted before each)", "GB/s", True, Target("—")),
    ]  # fmt: skip


# --- steps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    value: float
    detail: str = ""


@dataclass(frozen=True)
class Bench:
    """Everything a step needs besides the server."""

    tools: Tools
    data: DataSet
    scripts: WrkScripts
    duration: int
    connections: int
    small_connections: int
    ttfb_requests: int
    stream_timeout: float


Step = Callable[[Bench, Server], dict[str, Sample]]


def _url(server: Server, name: str) -> str:
    return server.url(f"/files/{FILES[name]}")


def _stream(bench: Bench, server: Server, *, ranged: bool) -> float:
    size = bench.data.sizes.stream
    headers = ("Range: bytes=1-",) if ranged else ()
    expect = (206, size - 1) if ranged else (200, size)
    transfer = curl(
        bench.tools.curl, _url(server, "stream"), timeout=bench.stream_timeout, expect=expect, headers=headers
    )
    return transfer.speed / GB


def stream_whole(bench: Bench, server: Server) -> dict[str, Sample]:
    return {"1": Sample(_stream(bench, server, ranged=False))}


def stream_ranged(bench: Bench, server: Server) -> dict[str, Sample]:
    return {"2": Sample(_stream(bench, server, ranged=True))}


def idle_memory(server: Server) -> dict[str, Sample]:
    """The whole process tree's memory before any request (a fresh start)."""
    tree = TreeMemory(server.process.pid).sample()
    return {
        "8a": Sample(tree.peak_rss_kib / 1024, tree.describe()),
        "8b": Sample(tree.peak_pss_kib / 1024, tree.describe()),
    }


def concurrent_downloads(bench: Bench, server: Server) -> dict[str, Sample]:
    with RssSampler(server.worker_pids()) as rss, TreeMemory(server.process.pid) as tree:
        result = wrk(
            bench.tools.wrk,
            _url(server, "aggregate"),
            script=bench.scripts.plain,
            connections=bench.connections,
            duration=bench.duration,
        )
    # wrk stops mid-download: completed responses and bytes read, not bytes per response.
    return {
        "3": Sample(result.throughput / GB, result.describe(per_response=False)),
        "8": Sample(rss.peak_mib(), rss.describe()),
        "8c": Sample(tree.peak_rss_kib / 1024, tree.describe()),
        "8d": Sample(tree.peak_pss_kib / 1024, tree.describe()),
    }


def _request_rate(bench: Bench, server: Server, name: str, script: Path) -> Sample:
    result = wrk(
        bench.tools.wrk,
        _url(server, name),
        script=script,
        connections=bench.small_connections,
        duration=bench.duration,
    )
    return Sample(result.rate, result.describe())


def random_ranges(bench: Bench, server: Server) -> dict[str, Sample]:
    return {"4": _request_rate(bench, server, "stream", bench.scripts.ranges)}


def small_file(bench: Bench, server: Server) -> dict[str, Sample]:
    """The rate, and the server's CPU time per request (every process of it: /proc utime+stime)."""
    pids = [server.process.pid, *server.worker_pids()]
    before = cpu_seconds(pids)
    sample = _request_rate(bench, server, "small", bench.scripts.plain)
    used = cpu_seconds(pids) - before
    requests = sample.value * bench.duration
    per_request = used / requests * 1e6 if requests else 0.0
    return {"5": sample, "5c": Sample(per_request, f"{used:.2f} s of CPU over ~{requests:,.0f} requests")}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (a process gone counts nothing)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in set(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def small_file_new_connections(bench: Bench, server: Server) -> dict[str, Sample]:
    """(5) with a new connection per request: what accepting and setting up a connection costs."""
    return {"5n": _request_rate(bench, server, "small", bench.scripts.closing)}


def medium_file(bench: Bench, server: Server) -> dict[str, Sample]:
    return {"6": _request_rate(bench, server, "medium", bench.scripts.plain)}


def first_byte(bench: Bench, server: Server) -> dict[str, Sample]:
    """A fresh curl (new connection) per request, as a client starting a download sees it."""
    expect = (200, bench.data.sizes.stream)
    url = _url(server, "stream")
    times = [
        curl(bench.tools.curl, url, timeout=30, expect=expect).ttfb * 1000 for _ in range(bench.ttfb_requests)
    ]
    detail = f"min {min(times):.2f}, max {max(times):.2f} ms"
    return {"7": Sample(statistics.median(times), detail)}


def cold_stream(bench: Bench, server: Server) -> dict[str, Sample]:
    path = bench.data.path("stream")
    evict(path)
    left = resident_bytes(path)
    detail = f"{left / MIB:.1f} MiB still cached after eviction" if left is not None else ""
    return {"9": Sample(_stream(bench, server, ranged=False), detail)}


ALL_STEPS: tuple[Step, ...] = (
    stream_whole,
    stream_ranged,
    concurrent_downloads,
    random_ranges,
    small_file,
    small_file_new_connections,
    medium_file,
    first_byte,
    cold_stream,
)
# --requests-only: what a request's own cost decides (the small-request rows).
REQUEST_STEPS: tuple[Step, ...] = (
    random_ranges,
    small_file,
    small_file_new_connections,
    medium_file,
    first_byte,
)
REQUEST_MEASURES = ("4", "5", "5c", "5n", "6", "7")
# --chunk-sizes: the measures a chunk size can change (the chunked-read path moves every byte).
CHUNK_STEPS: tuple[Step, ...] = (stream_whole, stream_ranged, concurrent_downloads, cold_stream)
CHUNK_MEASURES = ("1", "2", "3", "8", "8c", "8d", "9")
