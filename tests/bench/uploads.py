"""Uploads beside the downloads (issue 5): one big PUT with curl -T, Ferry against nginx's WebDAV PUT.

Three servers of their own, each writing into its own directory of the run's temp dir: Ferry with
fsync on (its default) and with --no-fsync, and nginx with `dav_methods PUT` when its build has the
dav module (nginx-light may not; then Ferry's figures stand alone). nginx does not fsync a PUT, so
Ferry --no-fsync is the like-for-like comparison. Every upload creates a new file: the previous
one is removed and the page cache's dirty pages written back (os.sync) before the next, untimed.
The servers not being measured are stopped (SIGSTOP) meanwhile: a Ferry hashes the previous
upload's pieces in the background and would take a core from the server measured.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests.bench.clients import RssSampler, upload
from tests.bench.measures import GB, Measure, Sample, Target, format_size
from tests.bench.report import Results, format_value
from tests.bench.servers import FerryOptions, Server, has_dav, start_ferry, start_nginx
from tests.bench.system import BenchError, Tools, log, rss_kib, stopped, warm, write_random_file

TOKEN = "bench-upload-token"
TARGET = "put.bin"
NGINX_NAME = "nginx dav"
NO_DAV = "no dav module in nginx-light"
SETTLE_SECONDS = 0.3
PATCHED = "28"  # the resumable upload's key: Ferry fsync on, in PATCH_SIZE appends
PATCH_SIZE = 16 * 1024**2


@dataclass(frozen=True)
class UploadServer:
    """A server taking PUTs, where its uploads land, and the report column and rows it fills."""

    server: Server
    directory: Path
    token: str | None
    report_as: str  # "Ferry" or NGINX_NAME
    keys: tuple[str, ...]  # the throughput measures its PUT counts for
    label: str  # what the details call this variant

    @property
    def target(self) -> Path:
        return self.directory / TARGET


def catalog(size: int) -> list[Measure]:
    each = format_size(size)
    return [
        Measure("10", f"(10) one {each} upload, PUT, fsync on (Ferry's default)", "GB/s", True,
                Target("— (nginx's PUT does not fsync)")),
        Measure("11", f"(11) one {each} upload, PUT, Ferry --no-fsync", "GB/s", True,
                Target("≥ 0.75", min_ratio=0.75)),
        Measure("12", "(12) server peak RSS per worker during (10) and (11), highest of runs", "MiB", False,
                Target("—"), summary="max"),
        Measure(PATCHED, f"(28) one {each} resumable upload (tus), {format_size(PATCH_SIZE)} PATCHes, "
                "fsync on", "GB/s", True, Target("≥ 0.85 × (10)")),
    ]  # fmt: skip


# Ferry's variants: server name, label in the details, the measures it fills, extra flags.
_FERRY_VARIANTS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Ferry PUT fsync on", "fsync on", ("10", PATCHED), ()),
    ("Ferry PUT --no-fsync", "--no-fsync", ("11",), ("--no-fsync",)),
)


def start_upload_servers(
    ferry: FerryOptions, nginx_workers: int, tools: Tools, workdir: Path, stack: ExitStack
) -> tuple[list[UploadServer], str | None]:
    """Ferry fsync on and off, and nginx with WebDAV PUT if it can; the reason when nginx cannot."""
    servers: list[UploadServer] = []
    for name, label, keys, flags in _FERRY_VARIANTS:
        directory = workdir / f"put-{len(servers)}"
        directory.mkdir()
        server = start_ferry(name, ferry, directory, workdir, extra=("--write-token", TOKEN, *flags))
        stack.callback(server.stop)
        servers.append(UploadServer(server, directory, TOKEN, "Ferry", keys, label))
    if not has_dav(tools.nginx):
        return servers, NO_DAV
    directory = workdir / "put-nginx"
    directory.mkdir()
    nginx = start_nginx(
        NGINX_NAME,
        nginx=tools.nginx,
        nopush=True,
        workers=nginx_workers,
        root=directory,
        workdir=workdir,
        dav=True,
    )
    stack.callback(nginx.stop)
    servers.append(UploadServer(nginx, directory, None, NGINX_NAME, ("10", "11"), "dav"))
    return servers, None


def write_source(workdir: Path, size: int) -> Path:
    source = workdir / "upload-source.bin"
    write_random_file(source, size)
    return source


def put_once(tools: Tools, target: UploadServer, source: Path, timeout: float) -> dict[str, Sample]:
    """One timed PUT, with the workers' RSS sampled throughout; then the file goes, untimed."""
    pids = target.server.worker_pids()
    before = max(rss_kib(pid) or 0 for pid in pids) / 1024
    with RssSampler(pids, interval=0.05) as rss:
        sent = upload(
            tools.curl, target.server.url(f"/files/{TARGET}"), source, token=target.token, timeout=timeout
        )
    if target.target.stat().st_size != source.stat().st_size:
        raise BenchError(f"{target.server.name}: the uploaded file has the wrong size")
    target.target.unlink()
    os.sync()  # the next upload starts with no dirty pages left by this one
    speed = Sample(sent.speed / GB, f"{target.label}: HTTP {sent.status}")
    samples = {key: speed for key in target.keys if key != PATCHED}
    if PATCHED in target.keys:
        samples[PATCHED] = patch_once(tools, target, source, timeout)
    samples["12"] = Sample(rss.peak_mib(), f"{target.label}: {before:.1f} MiB before, {rss.describe()}")
    return samples


def split_source(source: Path) -> list[Path]:
    """The source in PATCH_SIZE parts beside it (once per run: untimed), for curl -T of each."""
    parts: list[Path] = []
    with source.open("rb") as whole:
        while data := whole.read(PATCH_SIZE):
            part = source.with_name(f"{source.name}.part{len(parts):04d}")
            part.write_bytes(data)
            parts.append(part)
    return parts


def patch_once(tools: Tools, target: UploadServer, source: Path, timeout: float) -> Sample:
    """One timed resumable upload: POST /api/uploads/ (tus creation), then one curl process sending
    every PATCH_SIZE part as a PATCH on one kept-alive connection (curl --next), Expect:
    100-continue as the PUT; the clock runs from the POST to the last PATCH's answer."""
    size = source.stat().st_size
    parts = sorted(source.parent.glob(f"{source.name}.part*")) or split_source(source)
    auth = ["-H", f"Authorization: Bearer {target.token}"] if target.token else []
    common = [
        tools.curl,
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        f"{timeout:.0f}",
        *auth,
        "-H",
        "Tus-Resumable: 1.0.0",
    ]
    started = time.perf_counter()
    created = subprocess.run(
        [*common, "-o", "/dev/null", "-D", "-", "-X", "POST", "-H", f"Upload-Length: {size}",
         "-H", "Upload-Metadata: path " + base64.b64encode(TARGET.encode()).decode(),
         target.server.url("/api/uploads/")],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    location = next(
        (
            line.split(":", 1)[1].strip()
            for line in created.stdout.splitlines()
            if line.lower().startswith("location:")
        ),
        None,
    )
    if created.returncode != 0 or location is None:
        raise BenchError(f"tus creation failed: {created.stdout.strip()} {created.stderr.strip()}")
    url = location if location.startswith("http") else target.server.url(location)
    command = [tools.curl, "--noproxy", "*"]
    offset = 0
    for i, part in enumerate(parts):
        if i:
            command.append("--next")
        command += ["-sS", "--max-time", f"{timeout:.0f}", *auth, "-H", "Tus-Resumable: 1.0.0", "-X", "PATCH"]
        command += ["-H", "Content-Type: application/offset+octet-stream", "-H", f"Upload-Offset: {offset}"]
        command += ["-T", str(part), "-o", "/dev/null", "-w", "%{http_code}\n", url]
        offset += part.stat().st_size
    sent = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 15, check=False)
    seconds = time.perf_counter() - started
    codes = sent.stdout.split()
    if sent.returncode != 0 or codes != ["204"] * len(parts):
        raise BenchError(f"tus PATCHes failed: {sent.stderr.strip()} {codes[-3:]}")
    if target.target.stat().st_size != size:
        raise BenchError(f"{target.server.name}: the resumable upload has the wrong size")
    target.target.unlink()
    os.sync()
    return Sample(size / seconds / GB, f"{target.label}: {len(parts)} PATCHes of {format_size(PATCH_SIZE)}")


def measure_uploads(
    tools: Tools, targets: list[UploadServer], source: Path, *, runs: int, timeout: float, results: Results
) -> None:
    """Every server in turn, the order rotated per run, as for the downloads."""
    for run in range(runs):
        warm(source)
        order = targets[run % len(targets) :] + targets[: run % len(targets)]
        for target in order:
            others = [t.server.process.pid for t in targets if t is not target]
            with stopped(others):
                samples = put_once(tools, target, source, timeout)
            results.add(target.report_as, samples)
            speed = format_value(samples[target.keys[0]].value, "GB/s")
            rss = format_value(samples["12"].value, "MiB")
            shown = f"{speed} GB/s, peak RSS {rss} MiB"
            log(f"run {run + 1}/{runs} {'upload':<20} {target.server.name:<22} {shown}")
            time.sleep(SETTLE_SECONDS)
