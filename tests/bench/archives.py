"""Folder archives (issue 16): a folder as zip and tar against the same bytes as one file.

One Ferry server (the run's options, default hash rate) serves a root holding the run's stream
file (a hard link: "the same bytes as one file"), a folder of the same total size cut from it (a
few big files and many 64 KiB ones: `split_sizes`), and a folder of N small files (10,000) for the
time to the first byte. The ZIPs are measured once the background hasher has stored every CRC-32
(`Accept-Ranges: bytes`); before that a ZIP is sent whole and computes them while sending.

(24) one whole download with curl, the file and each archive in turn (order rotated per run);
(25) four concurrent downloads of each, aggregate, with (26) the workers' peak RSS above their
idle RSS before it (what the four downloads cost; the archives should cost about what the file
does: a chunk and a write buffer each, plus the manifest); (27) the time to the first byte of
the N-file archive: a fresh curl per request asking `Range: bytes=0-0` (so each request builds the
whole manifest and layout, as a full download does, without sending N files), the one file's for
reference. The report gives medians over runs and each archive's ratio to the file.
"""

from __future__ import annotations

import http.client
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests.bench.clients import RssSampler, curl
from tests.bench.measures import GB, DataSet, Measure, Sample, Target, format_size
from tests.bench.report import Results, Section, format_value
from tests.bench.servers import FerryOptions, Server, start_ferry
from tests.bench.system import HOST, BenchError, Tools, log, rss_kib, warm

FILE, ZIP, TAR = "Ferry, one file", "Ferry, zip", "Ferry, tar"
KINDS = {ZIP: "zip", TAR: "tar"}
FOLDER, MANY, ONE = "folder", "many", "one.bin"
SMALL = 64 * 1024  # the small files of the folder
BIG_FILES = 4
CONCURRENT = 4
SETTLE_SECONDS = 0.3
CRC_TIMEOUT = 600.0  # the hasher reaching every file (default rate 256 MiB/s: seconds per GiB)

# After the downloads' 1–9, the uploads' 10–12, the hashing's 13–17 and the S3 section's 18–23.
STREAM, AGGREGATE, RSS, TTFB = "24", "25", "26", "27"


@dataclass(frozen=True)
class ArchivePlan:
    size: int  # the folder and the one file
    files: int  # in the folder of (27)
    runs: int
    ttfb_requests: int


def catalog(plan: ArchivePlan) -> list[Measure]:
    size, ratio_90 = format_size(plan.size), Target("≥ 0.90", min_ratio=0.90)
    return [
        Measure(STREAM, f"({STREAM}) one {size} download, curl", "GB/s", True, ratio_90),
        Measure(AGGREGATE, f"({AGGREGATE}) {CONCURRENT} concurrent {size} downloads, aggregate", "GB/s",
                True, ratio_90),
        Measure(RSS, f"({RSS}) peak RSS growth per worker during ({AGGREGATE}), highest of runs", "MiB",
                False, Target("—"), summary="max"),
        Measure(TTFB, f"({TTFB}) time to first byte, {plan.files:,}-file archive, median of "
                f"{plan.ttfb_requests}", "ms", False, Target("< 100 ms", max_ferry=100.0)),
    ]  # fmt: skip


# --- data --------------------------------------------------------------------------------------


def split_sizes(total: int) -> list[int]:
    """The folder's file sizes: BIG_FILES big ones holding 15/16 of `total`, the rest in SMALL
    files (the last one shorter if need be)."""
    small_part = total // 16
    big = (total - small_part) // BIG_FILES
    sizes = [big] * BIG_FILES
    rest = total - big * BIG_FILES
    sizes += [SMALL] * (rest // SMALL) + ([rest % SMALL] if rest % SMALL else [])
    return sizes


def build_root(data: DataSet, root: Path, files: int) -> int:
    """ROOT/one.bin (a hard link to the stream file), ROOT/folder (its bytes cut into files) and
    ROOT/many (`files` files of 1 KiB in folders of 1,000); the folder's file count."""
    stream = data.path("stream")
    root.mkdir()
    os.link(stream, root / ONE)
    folder = root / FOLDER
    folder.mkdir()
    (folder / "small").mkdir()
    offset = 0
    sizes = split_sizes(stream.stat().st_size)
    with stream.open("rb") as source:
        for i, size in enumerate(sizes):
            name = f"big-{i}.bin" if i < BIG_FILES else f"small/{i - BIG_FILES:05d}.bin"
            with (folder / name).open("wb") as out:
                done = 0
                while done < size:
                    done += os.copy_file_range(source.fileno(), out.fileno(), size - done, offset + done)
            offset += size
    many = root / MANY
    for i in range(files):
        directory = many / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            directory.mkdir(parents=True)
        (directory / f"photo {i:05d}.jpg").write_bytes(os.urandom(1024))
    return len(sizes)


# --- requests ------------------------------------------------------------------------------------


def _head(server: Server, path: str) -> dict[str, str]:
    connection = http.client.HTTPConnection(HOST, server.port, timeout=120)
    try:
        connection.request("HEAD", path)
        response = connection.getresponse()
        response.read()
    except OSError as exc:
        raise BenchError(f"HEAD {path}: {exc}") from exc
    finally:
        connection.close()
    if response.status != 200:
        raise BenchError(f"HEAD {path}: {response.status}")
    return {key.lower(): value for key, value in response.getheaders()}


def _path(target: str, folder: str = FOLDER) -> str:
    return f"/files/{ONE}" if target == FILE else f"/files/{folder}/?archive={KINDS[target]}"


def wait_for_crcs(server: Server) -> float:
    """Seconds until both ZIPs take ranges: the hasher has stored every CRC-32."""
    began = time.monotonic()
    for folder in (FOLDER, MANY):
        while _head(server, _path(ZIP, folder)).get("accept-ranges") != "bytes":
            if time.monotonic() - began > CRC_TIMEOUT:
                raise BenchError(f"the ZIP of {folder} still had no CRC-32s after {CRC_TIMEOUT:.0f} s")
            time.sleep(0.5)
    return time.monotonic() - began


@dataclass(frozen=True)
class Download:
    name: str
    path: str
    length: int


def _stream(tools: Tools, server: Server, target: Download) -> float:
    timeout = max(120.0, target.length / 20e6)
    return curl(tools.curl, server.url(target.path), timeout=timeout, expect=(200, target.length)).speed / GB


def _concurrent(tools: Tools, server: Server, target: Download) -> dict[str, Sample]:
    pids = server.worker_pids()
    idle = {pid: rss_kib(pid) or 0 for pid in pids}
    with RssSampler(pids, interval=0.05) as rss, ThreadPoolExecutor(CONCURRENT) as pool:
        began = time.monotonic()
        list(pool.map(lambda _: _stream(tools, server, target), range(CONCURRENT)))
        elapsed = time.monotonic() - began
    growth = {pid: (rss.peaks_kib.get(pid, 0) - idle[pid]) / 1024 for pid in pids}
    detail = "per worker: " + ", ".join(
        f"{idle[pid] / 1024:.1f} → {rss.peaks_kib.get(pid, 0) / 1024:.1f}" for pid in pids
    )
    return {
        AGGREGATE: Sample(CONCURRENT * target.length / elapsed / GB),
        RSS: Sample(max(growth.values()), f"{detail} MiB"),
    }


def _first_byte(tools: Tools, server: Server, path: str, requests: int) -> Sample:
    times = [
        curl(tools.curl, server.url(path), timeout=60, expect=(206, 1), headers=("Range: bytes=0-0",)).ttfb
        * 1000
        for _ in range(requests)
    ]
    return Sample(statistics.median(times), f"min {min(times):.1f}, max {max(times):.1f} ms")


# --- the section -----------------------------------------------------------------------------------


def measure(plan: ArchivePlan, tools: Tools, server: Server, data: DataSet, results: Results) -> None:
    targets = [
        Download(name, _path(name), int(_head(server, _path(name))["content-length"]))
        for name in (FILE, ZIP, TAR)
    ]
    for run in range(plan.runs):
        warm(data.path("stream"))  # the folder's files are warm from being written and hashed
        order = targets[run % 3 :] + targets[: run % 3]
        for step in ("stream", "concurrent", "ttfb"):
            for target in order:
                if step == "stream":
                    samples = {STREAM: Sample(_stream(tools, server, target))}
                elif step == "concurrent":
                    samples = _concurrent(tools, server, target)
                else:
                    path = f"/files/{ONE}" if target.name == FILE else _path(target.name, MANY)
                    samples = {TTFB: _first_byte(tools, server, path, plan.ttfb_requests)}
                results.add(target.name, samples)
                shown = ", ".join(f"({key}) {sample.value:.2f}" for key, sample in samples.items())
                log(f"run {run + 1}/{plan.runs} archives {step:<10} {target.name:<16} {shown}")
                time.sleep(SETTLE_SECONDS)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(results: Results, measures: list[Measure]) -> str:
    lines = [_row(["measure", FILE, ZIP, "zip/file", TAR, "tar/file", "target"]), _row(["---"] * 7)]
    for m in measures:
        file = results.figure(FILE, m)
        cells = [m.title, "—" if file is None else format_value(file, m.unit)]
        verdicts = []
        for name in (ZIP, TAR):
            value = results.figure(name, m)
            cells.append("n/a" if value is None else format_value(value, m.unit))
            if m.key == RSS:  # growths of a few MiB or none: their ratio says nothing
                cells.append("—")
                continue
            if value is None or not file:
                cells.append("n/a")
                continue
            ratio = value / file
            cells.append(f"{ratio:.2f}" if m.higher_is_better else f"{ratio:.2f}×")
            if verdict := m.target.verdict(value, ratio):
                verdicts.append(f"{KINDS[name]} {verdict}")
        cells.append(f"{m.target.text} — {', '.join(verdicts)}" if verdicts else m.target.text)
        lines.append(_row(cells))
    return "\n".join(lines)


def measure_archives(
    plan: ArchivePlan, ferry: FerryOptions, tools: Tools, data: DataSet, workdir: Path, results: Results
) -> tuple[Section, list[Measure]]:
    """Build the root, start Ferry on it, wait for the CRC-32s, measure, stop it."""
    measures = catalog(plan)
    root = workdir / "archives"
    log(f"writing the archive folders to {root}")
    count = build_root(data, root, plan.files)
    with ExitStack() as stack:
        server = start_ferry("Ferry archives", ferry, root, workdir)
        stack.callback(server.stop)
        waited = wait_for_crcs(server)
        log(f"the hasher had every CRC-32 after {waited:.1f} s")
        measure(plan, tools, server, data, results)
    size = format_size(plan.size)
    big = split_sizes(plan.size)[0]
    context = (
        f"Ferry: FERRY_WORKERS={ferry.workers}, zero-copy {ferry.zero_copy}, chunk size "
        f"{ferry.chunk_size or 'default'}, default FERRY_HASH_RATE; the ZIPs measured once every "
        f"CRC-32 was stored ({waited:.0f} s after start-up)",
        f"data: one {size} file of random bytes, and a folder of the same bytes cut into {count:,} files "
        f"({BIG_FILES} of {format_size(big)}, the rest of {format_size(SMALL)} or less); a folder of "
        f"{plan.files:,} files of 1 KiB in folders of 1,000 for ({TTFB}); page cache warm",
        f"method: {plan.runs} run(s), each measure on the file, the zip and the tar in turn (order "
        f"rotated per run), medians; curl -o /dev/null; ({AGGREGATE}) {CONCURRENT} curls at once, "
        f"({RSS}) sampled every 50 ms against each worker's RSS just before; ({TTFB}) a fresh curl "
        "per request with Range: bytes=0-0 (the whole manifest and layout are built, one byte sent)",
    )
    title = f"Folder archives: a {size} folder as zip and tar against the same bytes as one file"
    return Section(title, table(results, measures), context), measures
