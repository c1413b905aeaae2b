"""`make load`: N concurrent connections against a real `ferry serve` on loopback, for a bounded time.

Writes a tree to a temp dir (random-byte files from 64 KiB to 64 MiB with known sha256 per file,
per range and per range set; directories with many entries; names to search), starts `ferry serve
--workers W` on 127.0.0.1, and runs the mix over N keep-alive connections: full downloads, single
ranges, multi-range requests, listings, searches, slow readers and aborting clients, each answer
checked. Meanwhile it samples the server's RSS (per worker) and open descriptors; afterwards it
waits (bounded) for the descriptors to return to the baseline taken before the load.

    .venv/bin/python -m tests.load.run                      # 1,000 connections, 60 s
    .venv/bin/python -m tests.load.run --quick              # 200 connections, 8 s, small files
    .venv/bin/python -m tests.load.run --connections 500 --duration 30 --workers 1

The summary goes to stdout (progress to stderr); the exit status is 0 only if every check passed:
no 5xx, every completed body verified, no connection errors but the intentional aborts, RSS per
worker under --max-worker-rss, descriptors back to baseline, the server alive, no tracebacks.
The run stops by itself: new requests stop at --duration, in-flight ones get --grace seconds, then
everything is cancelled and the server stopped (also on Ctrl-C, SIGTERM and --time-limit).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from app.settings import parse_size
from tests.bounds import TimeLimitReached, bounded
from tests.load import monitor as mon
from tests.load.data import FULL_SIZES, QUICK_SIZES, DataTree, create_tree, size_name
from tests.load.mix import Client, MixOptions, watchdog
from tests.load.mix import run_client as client_loop
from tests.load.report import Afterwards, checks, summary
from tests.load.server import HOST, Ferry, get_status, start_ferry
from tests.load.stats import Stats
from tests.load.warmup import warm_up
from tests.load.wire import Connection

FD_TIMEOUT = 10.0  # seconds the descriptors get to return to the baseline
SAMPLE_INTERVAL = 0.5
SPARE_FDS = 256  # the client's own files, beyond one per connection


@dataclass(frozen=True)
class Plan:
    connections: int
    duration: float
    workers: int
    grace: float
    sizes: tuple[int, ...]
    directories: int
    entries: int
    max_worker_rss: int
    seed: int
    data_dir: Path | None
    time_limit: int
    uvloop: bool


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.load.run", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="200 connections, 8 s, files up to 4 MiB (the CI smoke run)")
    add("--connections", type=int, help="concurrent connections (default 1000; quick 200)")
    add("--duration", type=float, help="seconds of load (default 60; quick 8)")
    add("--workers", type=int, default=2, help="ferry serve --workers (default 2)")
    add("--grace", type=float, help="seconds in-flight requests get after the load (default 20; quick 8)")
    add("--max-worker-rss", default="512MiB", help="the RSS bound per worker process (default 512MiB)")
    add("--seed", type=int, default=1, help="seed of the data and of every client's choices")
    add("--data-dir", type=Path, help="where the temp dir goes (default: the system temp dir)")
    add("--time-limit", type=int, help="seconds before the whole run is abandoned (default: derived)")
    add("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the client's event loop")
    return parser.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    duration = args.duration or (8.0 if quick else 60.0)
    grace = args.grace if args.grace is not None else (8.0 if quick else 20.0)
    return Plan(
        connections=args.connections or (200 if quick else 1000),
        duration=duration,
        workers=args.workers,
        grace=grace,
        sizes=QUICK_SIZES if quick else FULL_SIZES,
        directories=2 if quick else 4,
        entries=300 if quick else 2000,
        max_worker_rss=int(parse_size(args.max_worker_rss)),
        seed=args.seed,
        data_dir=args.data_dir,
        time_limit=args.time_limit or int(duration + grace + 120),
        uvloop=args.loop == "uvloop",
    )


def log(message: str) -> None:
    print(f"load: {message}", file=sys.stderr, flush=True)


# --- limits ------------------------------------------------------------------------------------


def raise_open_file_limit(connections: int) -> None:
    """One descriptor per connection: lift the soft limit to the hard one, or fail early."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + SPARE_FDS
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"load: the hard open-file limit {hard} is below the {needed} this run needs")
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = hard if hard != resource.RLIM_INFINITY else max(needed, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# --- the load ----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    stats: Stats
    footprint: mon.Footprint
    elapsed: float
    client_cpu: float  # seconds of CPU this process used during the load
    client_crashes: int


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_clients(
    plan: Plan, port: int, tree: DataTree, stats: Stats, stopping: asyncio.Event
) -> list[Client]:
    live: set[Connection] = set()
    options = MixOptions()
    return [
        Client(HOST, port, tree, options, stats, random.Random(plan.seed * 1_000_003 + i), live, stopping)
        for i in range(plan.connections)
    ]


async def finish(tasks: list[asyncio.Task[None]], grace: float) -> int:
    """Give in-flight requests `grace` seconds, cancel the rest; returns how many clients crashed."""
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    crashes = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
    ]
    for crash in crashes[:3]:
        log(f"client task crashed: {crash!r}")
    return len(crashes)


async def load(plan: Plan, port: int, tree: DataTree, processes: mon.ServerProcesses) -> LoadResult:
    stats, footprint, stopping = Stats(), mon.Footprint(), asyncio.Event()
    clients = make_clients(plan, port, tree, stats, stopping)
    options = clients[0].options
    helpers = [
        asyncio.create_task(mon.sampler(processes, footprint, SAMPLE_INTERVAL)),
        asyncio.create_task(watchdog(clients[0].live, options.stall_timeout)),
    ]
    loop, cpu = asyncio.get_running_loop(), client_cpu()
    started, ramp = loop.time(), options.ramp_seconds / plan.connections
    tasks = [asyncio.create_task(client_loop(client, i * ramp)) for i, client in enumerate(clients)]
    try:
        await asyncio.sleep(plan.duration)
        stopping.set()
        log(f"load over after {plan.duration:.0f} s; in-flight requests get up to {plan.grace:.0f} s")
        crashes = await finish(tasks, plan.grace)
    finally:
        for task in [*tasks, *helpers]:
            task.cancel()
        await asyncio.gather(*tasks, *helpers, return_exceptions=True)
    return LoadResult(stats, footprint, loop.time() - started, client_cpu() - cpu, crashes)


async def session(
    plan: Plan, port: int, tree: DataTree, processes: mon.ServerProcesses
) -> tuple[mon.Snapshot, LoadResult]:
    """Warm-up, the baseline, then the load."""
    await warm_up(HOST, port, tree)
    await asyncio.sleep(1.0)  # the warm-up's connections close
    before = mon.snapshot(processes)
    log(f"baseline: workers {before.workers}, {before.threads} threads, {before.fds} fds open")
    log(f"{plan.connections} connections for {plan.duration:.0f} s")
    return before, await load(plan, port, tree, processes)


def run_session(
    plan: Plan, port: int, tree: DataTree, processes: mon.ServerProcesses
) -> tuple[mon.Snapshot, LoadResult]:
    if plan.uvloop:
        import uvloop

        return uvloop.run(session(plan, port, tree, processes))
    return asyncio.run(session(plan, port, tree, processes))


def count_lines(text: str, needle: str) -> int:
    return sum(needle in line for line in text.splitlines())


def afterwards(ferry: Ferry, processes: mon.ServerProcesses, before: mon.Snapshot) -> Afterwards:
    _, waited = mon.wait_for_fds(processes, before.fds, FD_TIMEOUT)
    text = ferry.log_text()
    return Afterwards(
        before=before,
        after=mon.snapshot(processes),
        fd_wait=waited,
        healthz=get_status(ferry.port, "/healthz"),
        tracebacks=count_lines(text, "Traceback"),
        error_lines=count_lines(text, "ERROR"),
        warning_lines=count_lines(text, "WARNING"),
        notable=Counter(line.strip()[:160] for line in text.splitlines() if not line.startswith("INFO")),
    )


def title(plan: Plan, tree: DataTree) -> list[str]:
    sizes = f"{size_name(min(plan.sizes))}-{size_name(max(plan.sizes))}"
    return [
        f"Ferry load test: {plan.connections} connections for {plan.duration:.0f} s on {HOST}, "
        f"ferry serve --workers {plan.workers} (zero-copy and write buffer at their defaults)",
        f"data: {len(tree.files)} files {sizes}, {len(tree.directories)} directories x "
        f"{plan.entries} entries, {len(tree.searches)} search terms; client loop "
        f"{'uvloop' if plan.uvloop else 'asyncio'}, seed {plan.seed}",
    ]


def run(plan: Plan) -> tuple[str, bool]:
    """The whole run; returns the summary and whether every check passed."""
    with tempfile.TemporaryDirectory(prefix="ferry-load-", dir=plan.data_dir) as temp:
        workdir = Path(temp)
        log(f"writing the tree to {workdir}")
        tree = create_tree(
            workdir / "data", plan.sizes, directories=plan.directories, entries=plan.entries, seed=plan.seed
        )
        ferry = start_ferry(tree.root, workdir, "--workers", str(plan.workers))
        try:
            processes = mon.ServerProcesses(ferry.pid, tree.root.resolve(), ferry.index)
            log(f"ferry serve on port {ferry.port}; warming up")
            before, result = run_session(plan, ferry.port, tree, processes)
            log(f"waiting up to {FD_TIMEOUT:.0f} s for the descriptors to return to {before.fds}")
            after = afterwards(ferry, processes, before)
        finally:
            ferry.stop()
    verdicts = checks(
        result.stats,
        result.footprint,
        after,
        rss_limit=plan.max_worker_rss,
        client_crashes=result.client_crashes,
    )
    text = summary(
        title(plan, tree),
        result.stats,
        result.footprint,
        after,
        verdicts,
        elapsed=result.elapsed,
        client_cpu=result.client_cpu,
        rss_limit=plan.max_worker_rss,
    )
    return text, all(check.ok for check in verdicts)


def main(argv: list[str] | None = None) -> int:
    plan = plan_from(parse_args(argv))
    raise_open_file_limit(plan.connections)
    try:
        with bounded(plan.time_limit):
            text, passed = run(plan)
    except TimeLimitReached as exc:
        log(f"failed: {exc.code}; server stopped")
        return 1
    except RuntimeError as exc:
        log(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; server stopped")
        return 130
    except SystemExit:
        log("terminated by a signal; server stopped")
        raise
    print(text)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
