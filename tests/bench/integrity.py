"""Background hashing beside the downloads (issue 8): how fast it hashes, and what it costs serving.

(13) the hashing rate with no limit (--hash-rate 0) and (14) at Ferry's default FERRY_HASH_RATE:
a fresh index per run over hard links to the run's 1 GiB and 100 MiB files (warm page cache),
timed from /healthz answering to `ferry_hashed_bytes_total` reaching their size.

(15)–(17) serving with the hasher busy against serving without it: one server with background
hashing on (no rate limit) and a 1 TiB sparse file it cannot finish (so it always has work), one with
--no-checksums, and nginx (tcp_nopush off) on the same files, measured in turn as the downloads
are, the busy server stopped (SIGSTOP) while the others run. The ratio "busy / off" is issue 8's
target (≥ 0.90); the bytes hashed during each measure show the hasher pausing while transfers are
in flight.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings
from tests.bench import measures as m
from tests.bench.clients import fetch_text
from tests.bench.report import Results, Section, format_value
from tests.bench.servers import FerryOptions, Server, start_ferry, start_nginx
from tests.bench.system import BenchError, Tools, log, stopped, warm

BUSY = "Ferry, hasher busy"
OFF = "Ferry --no-checksums"
NGINX = "nginx tcp_nopush off"
SPARSE_SIZE = 1024**4
_HASHED = re.compile(r"^ferry_hashed_bytes_total (\S+)$", re.MULTILINE)
SETTLE_SECONDS = 0.3


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str


def rows(sizes: m.Sizes, connections: int, small_connections: int) -> list[Row]:
    rate = m.format_size(int(Settings.model_fields["hash_rate"].default))
    hashed = m.format_size(sizes.stream + sizes.aggregate)
    return [
        Row("13", f"(13) background hashing rate, --hash-rate 0 (no limit), {hashed}", "GB/s"),
        Row("14", f"(14) background hashing rate at the default FERRY_HASH_RATE ({rate}/s)", "GB/s"),
        Row("15", f"(15) one {m.format_size(sizes.stream)} stream, whole file", "GB/s"),
        Row("16", f"(16) {connections} concurrent {m.format_size(sizes.aggregate)} downloads", "GB/s"),
        Row("17", f"(17) whole {m.format_size(sizes.small)} file, -c{small_connections}", "req/s"),
    ]


def hashed_bytes(server: Server) -> float:
    match = _HASHED.search(fetch_text(server.port, "/metrics"))
    return float(match.group(1)) if match else 0.0


def _link_data(data: m.DataSet, root: Path, names: tuple[str, ...]) -> int:
    root.mkdir()
    total = 0
    for name in names:
        os.link(data.path(name), root / m.FILES[name])
        total += data.sizes.of(name)
    return total


def hashing_rate(
    ferry: FerryOptions, data: m.DataSet, workdir: Path, *, rate: str, run: int, timeout: float
) -> m.Sample:
    """Start Ferry on hard links to the stream and aggregate files; time until all are hashed."""
    root = workdir / f"hash-rate-{rate}-{run}"
    total = _link_data(data, root, ("stream", "aggregate"))
    for name in ("stream", "aggregate"):
        warm(data.path(name))
    with ExitStack() as stack:
        server = start_ferry(f"Ferry --hash-rate {rate}", ferry, root, workdir, extra=("--hash-rate", rate))
        stack.callback(server.stop)
        began = time.monotonic()
        while (done := hashed_bytes(server)) < total:
            if time.monotonic() - began > timeout:
                raise BenchError(f"hashing {total} bytes took over {timeout:.0f} s ({done:.0f} done)")
            time.sleep(0.05)
        elapsed = time.monotonic() - began
    return m.Sample(total / elapsed / m.GB, f"{total / m.MIB:.0f} MiB in {elapsed:.2f} s")


def serving_servers(
    ferry: FerryOptions, tools: Tools, data: m.DataSet, workdir: Path, nginx_workers: int, stack: ExitStack
) -> list[Server]:
    """The busy Ferry, the one without hashing, and nginx; the busy one has hashed the data (so it
    sends Repr-Digest, as a server in service would) and is working on a file it cannot finish."""
    root = workdir / "hash-serving"
    total = _link_data(data, root, tuple(m.FILES))
    # Each registered to stop as it starts: one failing to start stops those before it.
    busy = start_ferry(BUSY, ferry, root, workdir, extra=("--hash-rate", "0"))
    stack.callback(busy.stop)
    off = start_ferry(OFF, ferry, root, workdir, extra=("--no-checksums",))
    stack.callback(off.stop)
    nginx = start_nginx(
        NGINX, nginx=tools.nginx, nopush=False, workers=nginx_workers, root=root, workdir=workdir
    )
    stack.callback(nginx.stop)
    servers = [busy, off, nginx]
    _wait_hashed(servers[0], total)
    with (root / "pending.bin").open("wb") as sparse:
        sparse.truncate(SPARSE_SIZE)  # reads as zeros: the hasher always has work left
    past = time.time() - 3600
    os.utime(root / "pending.bin", (past, past))
    _wait_hashed(servers[0], total + 64 * m.MIB)  # inotify saw it, and the hasher is on it
    return servers


def _wait_hashed(server: Server, total: float, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while hashed_bytes(server) < total:
        if time.monotonic() > deadline:
            raise BenchError(f"{server.name} did not hash {total:.0f} bytes within {timeout:.0f} s")
        time.sleep(0.1)


def measure_serving(bench: m.Bench, servers: list[Server], *, runs: int, results: Results) -> None:
    steps = ((m.stream_whole, "1", "15"), (m.concurrent_downloads, "3", "16"), (m.small_file, "5", "17"))
    busy = servers[0]
    for run in range(runs):
        for name in ("stream", "aggregate", "small"):
            warm(bench.data.path(name))
        order = servers[run % len(servers) :] + servers[: run % len(servers)]
        for step, source, key in steps:
            for server in order:
                before = hashed_bytes(busy)
                with stopped([] if server is busy else [busy.process.pid]):
                    sample = step(bench, server)[source]
                during = hashed_bytes(busy) - before
                detail = sample.detail
                if server is busy:
                    detail = f"{detail}; hashed during it: {during / m.MIB:.1f} MiB".lstrip("; ")
                results.add(server.name, {key: m.Sample(sample.value, detail)})
                shown = f"({key}) {format_value(sample.value, 'req/s' if key == '17' else 'GB/s')}"
                log(f"run {run + 1}/{runs} hashing {step.__name__:<20} {server.name:<22} {shown}")
                time.sleep(SETTLE_SECONDS)


def table(results: Results, measures: list[Row]) -> str:
    lines = [
        f"| measure | {BUSY} | {OFF} | busy/off ratio | target | {NGINX} | busy/nginx ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in measures:
        if row.key in ("13", "14"):
            value = _median(results, "Ferry", row.key)
            lines.append(f"| {row.label} ({row.unit}) | {_cell(value, row.unit)} | — | — | — | — | — |")
            continue
        busy, off, nginx = (_median(results, name, row.key) for name in (BUSY, OFF, NGINX))
        ratio = busy / off if busy is not None and off else None
        versus = busy / nginx if busy is not None and nginx else None
        verdict = "" if ratio is None else ("met" if ratio >= 0.90 else "MISSED")
        lines.append(
            f"| {row.label} ({row.unit}) | {_cell(busy, row.unit)} | {_cell(off, row.unit)} | "
            f"{_ratio(ratio)} | ≥ 0.90 {verdict} | {_cell(nginx, row.unit)} | {_ratio(versus)} |"
        )
    return "\n".join(lines)


def _median(results: Results, server: str, key: str) -> float | None:
    samples = [s.value for s in results.samples(server, key)]
    return statistics.median(samples) if samples else None


def _cell(value: float | None, unit: str) -> str:
    return "n/a" if value is None else format_value(value, unit)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def section(results: Results, measures: list[Row], *, runs: int, ferry: FerryOptions) -> Section:
    context = (
        f"Ferry: FERRY_WORKERS={ferry.workers}, zero-copy {ferry.zero_copy}; hashing reads 1 MiB at a "
        "time and computes the whole-file SHA-256 and the 4 MiB+ piece hashes of the .meta4",
        "(13), (14): a fresh index per run over hard links to the run's files (page cache warm), from "
        "/healthz answering to ferry_hashed_bytes_total reaching their size",
        "(15)–(17): the busy server (--hash-rate 0) has hashed the served files and works on a 1 TiB "
        "sparse file it never finishes; it is stopped (SIGSTOP) while the other two are measured, so "
        "its hasher takes no CPU from them; "
        f"{runs} run(s), servers in turn (order rotated), medians",
    )
    return Section("Integrity: background hashing", table(results, measures), context)
