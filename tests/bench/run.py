"""`make bench`: Ferry against nginx on loopback — the same files, the same run, interleaved.

Starts Ferry (FERRY_WORKERS=2 by default) and two nginx instances (sendfile on; tcp_nopush on and
off) on free 127.0.0.1 ports, serves random-byte files from a temp dir (1 GiB, 100 MiB, 64 KiB,
1 MiB), and measures issue 3's figures with curl and wrk: each run goes measure by measure, every
server in turn (the order rotated each run); the report gives medians over the runs, nginx's better
variant per measure, and the Ferry/nginx ratio against issue 3's targets. Then the uploads (issue
5: a 1 GiB PUT with curl -T into Ferry, fsync on and off, and into nginx's WebDAV PUT; uploads.py)
the index at scale (issue 4: a tree of a million empty files, Ferry's scan, index size, memory,
listing and search latency; index_scale.py) and background hashing (issue 8: its rate, and serving
with the hasher busy against serving without it and nginx; integrity.py), each in a table of its
own; Ferry over S3 (issue 15: a `weed mini` started for the run, Ferry serving its bucket
against the same clients reading it directly; s3.py); and folder archives (issue 16: a folder of
the stream file's bytes as zip and tar against the file itself, and the first byte of a
10,000-file archive; archives.py). The markdown goes to stdout and to
bench-results/latest.md; progress goes to stderr.

    .venv/bin/python -m tests.bench.run                  # the full run (~10 minutes on 2 cores)
    .venv/bin/python -m tests.bench.run --quick          # tiny sizes, one run: a smoke test
    .venv/bin/python -m tests.bench.run --chunk-sizes 256KiB,1MiB,4MiB   # Ferry's chunked path
    .venv/bin/python -m tests.bench.run --index-files 0 --upload-size 0 --s3-size 0  # downloads only
    .venv/bin/python -m tests.bench.run --s3-only        # Ferry over S3 against SeaweedFS directly
    .venv/bin/python -m tests.bench.run --archives-only  # folder archives against one file
    .venv/bin/python -m tests.bench.run --requests-only  # the small-request rows (4, 5, 5c, 5n, 6, 7)

Every server is stopped at the end, on Ctrl-C, on SIGTERM and when the run passes --time-limit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings, parse_size
from tests.bench import archives, index_scale, s3
from tests.bench import integrity as hashing
from tests.bench import measures as m
from tests.bench import uploads as up
from tests.bench.clients import curl, write_scripts, wrk
from tests.bench.report import (
    Results,
    Section,
    chunk_table,
    comparison_table,
    details,
    document,
    figure_table,
    format_value,
)
from tests.bench.servers import REPO, FerryOptions, Server, start_ferry, start_nginx
from tests.bench.system import (
    BenchError,
    Tools,
    ensure_tools,
    filesystem_of,
    load_average,
    log,
    machine_info,
    warm,
    write_random_file,
)
from tests.bounds import TimeLimitReached, bounded

RESULTS_DIR = REPO / "bench-results"
SETTLE_SECONDS = 0.3  # between measurements: let closed connections drain


@dataclass(frozen=True)
class Defaults:
    stream: str
    aggregate: str
    runs: int
    duration: int
    connections: int
    ttfb: int
    time_limit: int
    upload: str
    index_files: int
    index_requests: int
    s3: str
    archive_files: int


FULL = Defaults(
    "1GiB", "100MiB", runs=3, duration=8, connections=64, ttfb=50, time_limit=1800,
    upload="1GiB", index_files=1_000_000, index_requests=50, s3="1GiB", archive_files=10_000,
)  # fmt: skip
QUICK = Defaults(
    "8MiB", "4MiB", runs=1, duration=1, connections=8, ttfb=10, time_limit=200,
    upload="32MiB", index_files=2_000, index_requests=10, s3="8MiB", archive_files=200,
)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """The resolved options of one run."""

    sizes: m.Sizes
    runs: int
    duration: int
    connections: int
    small_connections: int
    ttfb_requests: int
    ferry: FerryOptions
    nginx_workers: int
    chunk_sizes: list[str]
    output: Path
    data_dir: Path | None
    time_limit: int
    quick: bool
    upload_size: int  # 0: no uploads
    index_files: int  # 0: no index at scale
    index_requests: int
    hashing: bool  # the background hashing section
    s3_size: int  # the object of the S3 section; 0: no S3 section
    s3_only: bool  # the S3 section alone
    archive_files: int  # the folder of the archives' first-byte measure; 0: no archive section
    archives_only: bool  # the archive section alone
    requests_only: bool  # the small-request rows against nginx alone
    uploads_only: bool  # the upload section (PUT, PATCHes, nginx WebDAV) alone


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="tiny files, 1 run, 1 s wrk runs, 8 connections for (3)")
    add("--runs", type=int, help="runs to take medians over (default 3)")
    add("--duration", type=int, help="seconds per wrk measurement (default 8)")
    add("--workers", type=int, default=2, help="FERRY_WORKERS for Ferry (default 2)")
    add("--nginx-workers", type=int, default=2, help="nginx worker_processes (default 2)")
    add("--zero-copy", choices=["auto", "on", "off"], default="auto", help="Ferry's --zero-copy")
    add(
        "--fast-path",
        choices=["on", "off"],
        default="on",
        help="Ferry's --fast-path (off: every request through ASGI)",
    )
    add("--chunk-size", help="Ferry's --chunk-size (default: Ferry's own default)")
    add(
        "--chunk-sizes",
        help="e.g. 256KiB,1MiB,4MiB: Ferry's streaming measures per chunk size, zero-copy off",
    )
    add("--connections", type=int, help="concurrent downloads for (3) (default 64)")
    add("--small-connections", type=int, default=32, help="connections for (4)–(6) (default 32)")
    add("--ttfb-requests", type=int, help="requests for the time to first byte (default 50)")
    add("--stream-size", help="the big file (default 1GiB)")
    add("--aggregate-size", help="each concurrent download (default 100MiB)")
    add("--small-size", default="64KiB", help="the small file (default 64KiB)")
    add("--medium-size", default="1MiB", help="the medium file (default 1MiB)")
    add("--upload-size", help="the PUT (default 1GiB; quick 32MiB; 0 skips the uploads)")
    add("--no-hashing", action="store_true", help="skip the background hashing section (issue 8)")
    add("--s3-size", help="the S3 section's object (default 1GiB; quick 8MiB; 0 skips the section)")
    add("--s3-only", action="store_true", help="the S3 section (Ferry over SeaweedFS) alone")
    add("--archive-files", type=int, help="files in the archives' first-byte folder (default 10000; 0 skips)")
    add("--archives-only", action="store_true", help="the folder archive section alone (issue 16)")
    add("--requests-only", action="store_true", help="the small-request rows alone: 4, 5, 5c, 5n, 6, 7")
    add("--uploads-only", action="store_true", help="the upload section alone: PUT, PATCHes, nginx")
    add("--index-files", type=int, help="files in the index tree (default 1000000; quick 2000; 0 skips)")
    add(
        "--data-dir",
        type=Path,
        help="where the temp dir and the kept index tree go (default: the system temp dir)",
    )
    add("--output", type=Path, help="the markdown file (default bench-results/latest.md)")
    add("--time-limit", type=int, help="seconds before the run is abandoned (default 1800; quick 100)")
    return parser.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    base = QUICK if args.quick else FULL
    chunk_sizes = [size.strip() for size in (args.chunk_sizes or "").split(",") if size.strip()]
    for size in [*chunk_sizes, *([args.chunk_size] if args.chunk_size else [])]:
        parse_size(size)  # a bad size stops here, not after the data is written
    default_output = "chunk-sizes.md" if chunk_sizes else "latest.md"
    index_files = base.index_files if args.index_files is None else args.index_files
    if not 0 <= index_files <= index_scale.MAX_FILES:
        raise SystemExit(f"--index-files {index_files}: from 0 (none) to {index_scale.MAX_FILES:,}")
    return Plan(
        sizes=m.Sizes(
            stream=parse_size(args.stream_size or base.stream),
            aggregate=parse_size(args.aggregate_size or base.aggregate),
            small=parse_size(args.small_size),
            medium=parse_size(args.medium_size),
        ),
        runs=args.runs or base.runs,
        duration=args.duration or base.duration,
        connections=args.connections or base.connections,
        small_connections=args.small_connections,
        ttfb_requests=args.ttfb_requests or base.ttfb,
        ferry=FerryOptions(args.workers, args.zero_copy, args.chunk_size, args.fast_path),
        nginx_workers=args.nginx_workers,
        chunk_sizes=chunk_sizes,
        output=args.output or RESULTS_DIR / default_output,
        data_dir=args.data_dir,
        time_limit=args.time_limit or base.time_limit,
        quick=args.quick,
        upload_size=parse_size(args.upload_size or base.upload),
        index_files=index_files,
        index_requests=base.index_requests,
        hashing=not args.no_hashing,
        s3_size=parse_size(args.s3_size or base.s3),
        s3_only=args.s3_only,
        archive_files=base.archive_files if args.archive_files is None else args.archive_files,
        archives_only=args.archives_only,
        requests_only=args.requests_only,
        uploads_only=args.uploads_only,
    )


# --- bounds ------------------------------------------------------------------------------------


# --- servers -----------------------------------------------------------------------------------


def ferry_variants(plan: Plan) -> dict[str, FerryOptions]:
    """The Ferry servers of this run, by report name."""
    if not plan.chunk_sizes:
        return {"Ferry": plan.ferry}
    variants = {f"Ferry {size}": FerryOptions(plan.ferry.workers, "off", size) for size in plan.chunk_sizes}
    if plan.ferry.zero_copy != "off":  # the sendfile path, for reference in the same run
        variants[f"Ferry zero-copy {plan.ferry.zero_copy}"] = plan.ferry
    return variants


def start_servers(plan: Plan, tools: Tools, data: m.DataSet, workdir: Path, stack: ExitStack) -> list[Server]:
    servers: list[Server] = []
    for name, options in ferry_variants(plan).items():
        servers.append(start_ferry(name, options, data.root, workdir))
        stack.callback(servers[-1].stop)
    for nopush in (True, False):
        name = f"nginx tcp_nopush {'on' if nopush else 'off'}"
        nginx = start_nginx(
            name,
            nginx=tools.nginx,
            nopush=nopush,
            workers=plan.nginx_workers,
            root=data.root,
            workdir=workdir,
        )
        servers.append(nginx)
        stack.callback(nginx.stop)
    for server in servers:
        log(f"{server.name} on port {server.port}, workers {server.worker_pids()}")
    return servers


def warm_up(bench: m.Bench, servers: list[Server], quick: bool) -> None:
    """First requests pay for imports and caches; none of them is measured."""
    for server in servers:
        for name in ("small", "medium"):
            for _ in range(3):
                url = server.url(f"/files/{m.FILES[name]}")
                curl(bench.tools.curl, url, timeout=30, expect=(200, bench.data.sizes.of(name)))
        if not quick:
            wrk(
                bench.tools.wrk,
                server.url("/files/small.bin"),
                script=bench.scripts.plain,
                connections=8,
                duration=1,
            )


# --- measuring ---------------------------------------------------------------------------------


def measure_all(
    plan: Plan,
    bench: m.Bench,
    servers: list[Server],
    steps: tuple[m.Step, ...],
    catalog: dict[str, m.Measure],
) -> Results:
    results = Results()
    for run in range(plan.runs):
        for name in m.FILES:
            warm(bench.data.path(name))
        order = servers[run % len(servers) :] + servers[: run % len(servers)]
        for step in steps:
            for server in order:
                samples = step(bench, server)
                results.add(server.name, samples)
                shown = ", ".join(
                    f"({key}) {format_value(s.value, catalog[key].unit)} {catalog[key].unit}"
                    for key, s in samples.items()
                )
                log(f"run {run + 1}/{plan.runs} {step.__name__:<20} {server.name:<22} {shown}")
                time.sleep(SETTLE_SECONDS)
    return results


def context_lines(plan: Plan, info: dict[str, str], data: m.DataSet, load_before: str) -> list[str]:
    default_chunk = m.format_size(int(Settings.model_fields["chunk_size"].default))
    chunk = plan.ferry.chunk_size or f"{default_chunk} (default)"
    if plan.chunk_sizes:
        ferry = f"Ferry: one server per chunk size ({', '.join(plan.chunk_sizes)}) with zero-copy off"
        if plan.ferry.zero_copy != "off":
            ferry += f", and one with zero-copy {plan.ferry.zero_copy} for reference"
    else:
        ferry = (
            f"Ferry: zero-copy {plan.ferry.zero_copy}, fast path {plan.ferry.fast_path}, chunk size {chunk}"
        )
    return [
        f"date: {info['date']}",
        f"machine: nproc {info['nproc']}, {info['CPU']}, kernel {info['kernel']}, Python {info['Python']}",
        f"tools: {info['nginx']}; {info['wrk']}; {info['curl']}",
        f"{ferry}, FERRY_WORKERS={plan.ferry.workers}, access log on (to a file)",
        f"nginx: worker_processes {plan.nginx_workers}, sendfile on, two instances with tcp_nopush on "
        "and off (the better one per measure is shown and named), access_log on (to a file)",
        f"method: {plan.runs} run(s), each measure taken on every server in turn (order rotated per run); "
        f"medians over runs; curl for one stream and TTFB; wrk -t2 -d{plan.duration}s "
        f"(-c{plan.connections} for (3), -c{plan.small_connections} for (4)–(6)); "
        "client and servers share the CPUs over loopback",
        f"data: random bytes on {filesystem_of(data.root)}, warm page cache except (9)",
        f"load average (1/5/15 min) before: {load_before}, after: {load_average()}",
    ]


# --- uploads and the index at scale ------------------------------------------------------------


@dataclass(frozen=True)
class Extra:
    """A table after the downloads' one, and what its measures add to the details."""

    section: Section
    measures: list[m.Measure]
    servers: list[str]


def measure_uploads(plan: Plan, tools: Tools, workdir: Path, results: Results) -> Extra:
    catalog = up.catalog(plan.upload_size)
    with ExitStack() as stack:
        targets, missing = up.start_upload_servers(plan.ferry, plan.nginx_workers, tools, workdir, stack)
        source = up.write_source(workdir, plan.upload_size)
        timeout = max(120.0, plan.upload_size / 20e6)  # 20 MB/s would be a broken server
        up.measure_uploads(tools, targets, source, runs=plan.runs, timeout=timeout, results=results)
    absent = f"— (nginx: {missing})" if missing else "n/a"
    table = comparison_table(results, catalog, "Ferry", [up.NGINX_NAME], absent=absent)
    size = m.format_size(plan.upload_size)
    nginx = (
        f"nginx: {missing}"
        if missing
        else f"nginx: worker_processes {plan.nginx_workers}, dav_methods PUT, client_max_body_size 0; the "
        "body goes to a temp file in its prefix (the same filesystem) and is renamed into place, no fsync"
    )
    context = (
        f"Ferry: FERRY_WORKERS={plan.ferry.workers}, --write-token, one server with fsync on (its "
        "default) and one with --no-fsync; each writes a temp file in the target's directory and "
        "renames it into place",
        nginx,
        f"method: curl -T (Expect: 100-continue) of a {size} random-byte file from the page cache, "
        f"speed_upload; {plan.runs} run(s), the servers in turn (order rotated per run), medians; each "
        "upload makes a new file, removed and written back (os.sync) before the next, untimed",
        f"data: on {filesystem_of(workdir)}; peak RSS sampled every 50 ms",
    )
    notes: tuple[str, ...] = (
        () if missing else ("nginx has no fsync to turn off: its one figure stands in both (10) and (11)",)
    )
    put, patched = results.samples("Ferry", "10"), results.samples("Ferry", up.PATCHED)
    if put and patched:  # the same server, one after the other in each run
        ratios = [p.value / q.value for p, q in zip(patched, put, strict=True)]
        each = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        median = statistics.median(ratios)
        notes += (f"(28) ÷ (10), the PATCHes against the PUT: median {median:.2f} (runs: {each})",)
    section = Section(f"Uploads: one {size} PUT", table, context, notes)
    return Extra(section, catalog, ["Ferry", *([] if missing else [up.NGINX_NAME])])


def measure_hashing(plan: Plan, bench: m.Bench, workdir: Path, results: Results) -> Extra:
    timeout = max(120.0, (plan.sizes.stream + plan.sizes.aggregate) / 50e6)  # 50 MB/s: broken
    default_rate = str(int(Settings.model_fields["hash_rate"].default))
    for run in range(plan.runs):
        for rate, key in (("0", "13"), (default_rate, "14")):
            sample = hashing.hashing_rate(
                plan.ferry, bench.data, workdir, rate=rate, run=run, timeout=timeout
            )
            results.add("Ferry", {key: sample})
            log(f"run {run + 1}/{plan.runs} hashing rate {rate:<12} ({key}) {sample.value:.2f} GB/s")
    with ExitStack() as stack:
        servers = hashing.serving_servers(
            plan.ferry, bench.tools, bench.data, workdir, plan.nginx_workers, stack
        )
        hashing.measure_serving(bench, servers, runs=plan.runs, results=results)
    rows = hashing.rows(plan.sizes, plan.connections, plan.small_connections)
    section = hashing.section(results, rows, runs=plan.runs, ferry=plan.ferry)
    measures = [m.Measure(row.key, row.label, row.unit, True, m.Target("—")) for row in rows]
    return Extra(section, measures, [hashing.BUSY, hashing.OFF, hashing.NGINX])


def measure_index(plan: Plan, workdir: Path) -> Extra:
    base = plan.data_dir or Path(tempfile.gettempdir())
    tree = index_scale.tree_for(base, plan.index_files)
    outcome = index_scale.measure_index(plan.ferry, tree, workdir, requests=plan.index_requests)
    context = (*outcome.context, f"data: on {filesystem_of(tree.root)}; nginx has no index: no ratios")
    section = Section(f"Index at {plan.index_files:,} files", figure_table(outcome.figures), context)
    return Extra(section, [], [])


def measure_s3(plan: Plan, tools: Tools, workdir: Path, results: Results) -> Extra:
    s3_plan = s3.S3Plan(
        size=plan.s3_size, runs=plan.runs, duration=plan.duration, connections=plan.small_connections
    )
    section, measures = s3.measure_s3(s3_plan, plan.ferry, tools, workdir, results)
    return Extra(section, measures, [s3.FERRY, s3.DIRECT])


def measure_archives(plan: Plan, bench: m.Bench, workdir: Path, results: Results) -> Extra:
    archive_plan = archives.ArchivePlan(
        size=plan.sizes.stream, files=plan.archive_files, runs=plan.runs, ttfb_requests=plan.ttfb_requests
    )
    section, measures = archives.measure_archives(
        archive_plan, plan.ferry, bench.tools, bench.data, workdir, results
    )
    return Extra(section, measures, [archives.FILE, archives.ZIP, archives.TAR])


def archives_alone(plan: Plan, tools: Tools, info: dict[str, str], load_before: str) -> str:
    """`--archives-only`: the archive section and its runs, no nginx."""
    results = Results()
    with tempfile.TemporaryDirectory(prefix="ferry-bench-", dir=plan.data_dir) as temp:
        workdir = Path(temp)
        data = m.DataSet(workdir / "data", plan.sizes)
        data.root.mkdir()
        log(f"writing data to {workdir}")
        write_random_file(data.path("stream"), plan.sizes.stream)
        extra = measure_archives(plan, _bench(plan, tools, data, workdir), workdir, results)
    title = "Folder archives — `make bench` (archive section only)"
    return alone_document(title, info, load_before, extra, results)


def uploads_alone(plan: Plan, tools: Tools, info: dict[str, str], load_before: str) -> str:
    """`--uploads-only`: the upload section and its runs (Ferry's PUT and PATCHes, nginx's PUT)."""
    results = Results()
    with tempfile.TemporaryDirectory(prefix="ferry-bench-", dir=plan.data_dir) as temp:
        workdir = Path(temp)
        workdir.chmod(0o755)  # nginx's worker writes beneath it
        extra = measure_uploads(plan, tools, workdir, results)
    return alone_document("Uploads — `make bench` (upload section only)", info, load_before, extra, results)


def alone_document(title: str, info: dict[str, str], load_before: str, extra: Extra, results: Results) -> str:
    context = [
        f"date: {info['date']}",
        f"machine: nproc {info['nproc']}, {info['CPU']}, kernel {info['kernel']}, Python {info['Python']}",
        f"tools: {info['curl']}",
        f"load average (1/5/15 min) before: {load_before}, after: {load_average()}",
    ]
    parts = [f"# {title}", "", *(f"- {line}" for line in context), "", *extra.section.markdown()]
    parts += ["## Every run", "", details(results, extra.measures, extra.servers), ""]
    return "\n".join(parts)


def _bench(plan: Plan, tools: Tools, data: m.DataSet, workdir: Path) -> m.Bench:
    return m.Bench(
        tools=tools,
        data=data,
        scripts=write_scripts(workdir, plan.sizes.stream),
        duration=plan.duration,
        connections=plan.connections,
        small_connections=plan.small_connections,
        ttfb_requests=plan.ttfb_requests,
        stream_timeout=120.0,
    )


def s3_alone(plan: Plan, tools: Tools, info: dict[str, str], load_before: str) -> str:
    """`--s3-only`: the S3 section and its runs, no nginx."""
    results = Results()
    with tempfile.TemporaryDirectory(prefix="ferry-bench-", dir=plan.data_dir) as temp:
        extra = measure_s3(plan, tools, Path(temp), results)
    context = [
        f"date: {info['date']}",
        f"machine: nproc {info['nproc']}, {info['CPU']}, kernel {info['kernel']}, Python {info['Python']}",
        f"tools: {info['wrk']}; {info['curl']}",
        f"load average (1/5/15 min) before: {load_before}, after: {load_average()}",
    ]
    parts = ["# Ferry over S3 — `make bench` (S3 section only)", "", *(f"- {line}" for line in context), ""]
    parts += extra.section.markdown()
    parts += ["## Every run", "", details(results, extra.measures, extra.servers), ""]
    return "\n".join(parts)


def render(
    plan: Plan,
    results: Results,
    catalog: list[m.Measure],
    servers: list[Server],
    context: list[str],
    extras: list[Extra],
) -> str:
    names = [server.name for server in servers]
    nginx = [name for name in names if name.startswith("nginx")]
    ferries = [name for name in names if name not in nginx]
    if plan.chunk_sizes:
        shown = [measure for measure in catalog if measure.key in m.CHUNK_MEASURES]
        table = chunk_table(results, shown, ferries, nginx)
        title, notes = (
            "Ferry chunk sizes (zero-copy off) against nginx",
            ["cells: figure (ratio to nginx's best)"],
        )
    else:
        shown, table = catalog, comparison_table(results, catalog, ferries[0], nginx)
        title, notes = "Ferry against nginx — `make bench`", []
    for extra in extras:
        shown = shown + extra.measures
        names += [name for name in extra.servers if name not in names]
    sections = [extra.section for extra in extras]
    return document(title, context, table, notes, details(results, shown, names), sections)


def run(plan: Plan, tools: Tools) -> str:
    load_before = load_average()
    info = machine_info(tools)
    if plan.s3_only:
        return s3_alone(plan, tools, info, load_before)
    if plan.archives_only:
        return archives_alone(plan, tools, info, load_before)
    if plan.uploads_only:
        return uploads_alone(plan, tools, info, load_before)
    catalog = m.catalog(
        plan.sizes,
        connections=plan.connections,
        small_connections=plan.small_connections,
        ttfb_requests=plan.ttfb_requests,
    )
    steps = m.CHUNK_STEPS if plan.chunk_sizes else m.ALL_STEPS
    if plan.requests_only:
        steps = m.REQUEST_STEPS
        catalog = [measure for measure in catalog if measure.key in m.REQUEST_MEASURES]
    with ExitStack() as stack:
        workdir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="ferry-bench-", dir=plan.data_dir))
        )
        workdir.chmod(0o755)  # a non-root nginx worker, or a root one as `nobody`, must read the files
        log(f"writing data to {workdir}")
        data = m.create_data(workdir / "data", plan.sizes)
        bench = _bench(plan, tools, data, workdir)
        with ExitStack() as downloads:  # stopped before the uploads and the index start
            servers = start_servers(plan, tools, data, workdir, downloads)
            idle = {server.name: m.idle_memory(server) for server in servers}
            warm_up(bench, servers, plan.quick)
            results = measure_all(plan, bench, servers, steps, {measure.key: measure for measure in catalog})
            for name, samples in idle.items():
                results.add(name, samples)
        extras: list[Extra] = []
        if plan.requests_only:
            return render(
                plan, results, catalog, servers, context_lines(plan, info, data, load_before), extras
            )
        if not plan.chunk_sizes and plan.hashing:
            extras.append(measure_hashing(plan, bench, workdir, results))
        if not plan.chunk_sizes and plan.upload_size:
            extras.append(measure_uploads(plan, tools, workdir, results))
        if not plan.chunk_sizes and plan.s3_size:
            extras.append(measure_s3(plan, tools, workdir, results))
        if not plan.chunk_sizes and plan.archive_files:
            extras.append(measure_archives(plan, bench, workdir, results))
        if not plan.chunk_sizes and plan.index_files:
            extras.append(measure_index(plan, workdir))
        context = context_lines(plan, info, data, load_before)
        return render(plan, results, catalog, servers, context, extras)


def main(argv: list[str] | None = None) -> int:
    plan = plan_from(parse_args(argv))
    try:
        tools = ensure_tools()
        with bounded(plan.time_limit):
            markdown = run(plan, tools)
    except (BenchError, TimeLimitReached) as exc:
        log(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130
    except SystemExit:
        log("terminated by a signal; servers stopped")
        raise
    plan.output.parent.mkdir(parents=True, exist_ok=True)
    plan.output.write_text(markdown)
    print(markdown)
    log(f"written to {plan.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
