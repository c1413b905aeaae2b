"""The summary the run prints, and the checks that decide its exit status."""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from tests.load.monitor import Footprint, Snapshot
from tests.load.stats import KINDS, KindStats, Stats

MIB = 1024**2
INDEX_KIND = "index db"
SHOWN_MESSAGES = 10


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"  {'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class Afterwards:
    """The server at rest before the load and once it was over (after the descriptor wait)."""

    before: Snapshot
    after: Snapshot
    fd_wait: float  # seconds until the descriptors were back (or the wait gave up)
    healthz: int | None
    tracebacks: int
    error_lines: int
    warning_lines: int
    notable: Counter[str]  # distinct log lines that are not INFO

    @property
    def fds_back(self) -> bool:
        return self.after.fds <= self.before.fds


def format_bytes(size: float) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", MIB), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size:.0f} B"


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def kind_row(kind: str, s: KindStats) -> str:
    p50, p99 = (percentile(s.seconds, q) * 1000 for q in (0.5, 0.99))
    cells = (s.started, s.verified, s.aborted, s.cut, s.bad, s.errors)
    counts = "".join(f"{value:>10}" for value in cells)
    return f"  {kind:<11}{counts}{format_bytes(s.received):>12}{p50:>9.0f}{p99:>9.0f}"


def request_table(stats: Stats) -> list[str]:
    header = "".join(f"{name:>10}" for name in ("started", "verified", "aborted", "cut", "bad", "errors"))
    lines = [f"  {'kind':<11}{header}{'received':>12}{'p50 ms':>9}{'p99 ms':>9}"]
    lines += [kind_row(kind, stats.kinds[kind]) for kind in KINDS]
    total = KindStats(received=stats.total("received"))
    for attribute in ("started", "verified", "aborted", "cut", "bad", "errors"):
        setattr(total, attribute, stats.total(attribute))
    total.seconds = [x for kind in KINDS for x in stats.kinds[kind].seconds]
    return [*lines, kind_row("total", total)]


def status_line(statuses: Counter[int]) -> str:
    return ", ".join(f"{status}={count}" for status, count in sorted(statuses.items())) or "none"


def messages(title: str, counter: Counter[str]) -> list[str]:
    if not counter:
        return []
    shown = [f"    {count:>6} x {message}" for message, count in counter.most_common(SHOWN_MESSAGES)]
    more = len(counter) - SHOWN_MESSAGES
    return [f"  {title}:", *shown, *([f"    ... and {more} more"] if more > 0 else [])]


def retry_text(retries: Counter[str]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(retries.items())) or "none"


def kinds_text(kinds: Counter[str]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))


def change_text(before: Counter[str], after: Counter[str]) -> str:
    changes = {kind: after[kind] - before[kind] for kind in sorted(set(before) | set(after))}
    return ", ".join(f"{kind} {delta:+d}" for kind, delta in changes.items() if delta) or "none"


def without_index(kinds: Counter[str]) -> int:
    return sum(count for kind, count in kinds.items() if kind != INDEX_KIND)


def rss_lines(footprint: Footprint, after: Afterwards, limit: int) -> list[str]:
    workers = ", ".join(
        f"pid {pid} {format_bytes(value)}" for pid, value in sorted(footprint.peak_worker_rss.items())
    )
    return [
        f"peak RSS: {format_bytes(footprint.peak_total_rss)} summed over "
        f"{len(footprint.peak_worker_rss)} worker(s); peak per worker: "
        f"{format_bytes(max(footprint.peak_worker_rss.values(), default=0))} (limit {format_bytes(limit)})",
        f"  per worker: {workers}",
        f"  summed RSS before the load {format_bytes(after.before.rss)}, "
        f"after {format_bytes(after.after.rss)}",
    ]


def fd_lines(footprint: Footprint, after: Afterwards) -> list[str]:
    back = "back to baseline" if after.fds_back else "NOT back to baseline"
    return [
        f"open fds: baseline {after.before.fds}, peak {footprint.peak_fds}, after {after.after.fds} "
        f"({back} after {after.fd_wait:.1f} s)",
        f"  before by kind: {kinds_text(after.before.fd_kinds)}",
        f"  after by kind:  {kinds_text(after.after.fd_kinds)}",
        f"  change by kind: {change_text(after.before.fd_kinds, after.after.fd_kinds)}",
    ]


def checks(
    stats: Stats, footprint: Footprint, after: Afterwards, *, rss_limit: int, client_crashes: int
) -> list[Check]:
    fivexx = sum(count for status, count in stats.statuses.items() if status >= 500)
    idle_kinds = [kind for kind in KINDS if stats.kinds[kind].verified + stats.kinds[kind].aborted == 0]
    peak_worker = max(footprint.peak_worker_rss.values(), default=0)
    same_workers = after.before.workers == after.after.workers
    return [
        Check("no 5xx", fivexx == 0, f"{fivexx} responses with status >= 500"),
        Check(
            "every completed body verified", stats.total("bad") == 0, f"{stats.total('bad')} failed checks"
        ),
        Check(
            "no connection errors but the intentional aborts",
            stats.total("errors") + stats.connect_errors == 0,
            f"{stats.total('errors')} during requests, {stats.connect_errors} connecting",
        ),
        Check("every kind of request exercised", not idle_kinds, f"none completed: {idle_kinds or '-'}"),
        Check(
            "server RSS bounded", 0 < peak_worker <= rss_limit, f"peak per worker {format_bytes(peak_worker)}"
        ),
        Check(
            "open fds back to baseline",
            after.fds_back,
            f"{after.after.fds} after, baseline {after.before.fds}",
        ),
        Check(
            "  connections' fds (all but the index's)",
            without_index(after.after.fd_kinds) <= without_index(after.before.fd_kinds),
            f"{without_index(after.after.fd_kinds)} after, baseline {without_index(after.before.fd_kinds)}",
        ),
        Check(
            "  index database fds",
            after.after.fd_kinds[INDEX_KIND] <= after.before.fd_kinds[INDEX_KIND],
            f"{after.after.fd_kinds[INDEX_KIND]} after, baseline {after.before.fd_kinds[INDEX_KIND]}",
        ),
        Check("served files all closed", after.after.fd_kinds["served file"] == 0, "descriptors below ROOT"),
        Check(
            "server alive",
            same_workers and after.healthz == 200,
            f"workers {'unchanged' if same_workers else 'CHANGED'}, /healthz {after.healthz}",
        ),
        Check("no tracebacks in the server log", after.tracebacks == 0, f"{after.tracebacks} tracebacks"),
        Check("the load client itself", client_crashes == 0, f"{client_crashes} client tasks crashed"),
    ]


def summary(
    title: list[str],
    stats: Stats,
    footprint: Footprint,
    after: Afterwards,
    verdicts: Iterable[Check],
    *,
    elapsed: float,
    client_cpu: float,
    rss_limit: int,
) -> str:
    verdicts = list(verdicts)
    fivexx = sum(count for status, count in stats.statuses.items() if status >= 500)
    received = stats.total("received")
    lines = [
        *title,
        "requests:",
        *request_table(stats),
        f"rate: {stats.total('verified') / elapsed:.0f} verified requests/s, "
        f"{format_bytes(received / elapsed)}/s received, over {elapsed:.1f} s",
        f"statuses: {status_line(stats.statuses)}",
        f"5xx: {fivexx}",
        f"connection errors: {stats.total('errors') + stats.connect_errors} "
        f"(intentional aborts: {stats.total('aborted')}; connections opened: {stats.connects})",
        f"keep-alive: {stats.stale} idle connections found closed by the server before reuse; "
        f"{sum(stats.retries.values())} requests retried on a new connection after the server closed a "
        f"reused one before answering",
        f"  retried by kind: {retry_text(stats.retries)}; by how long the previous response on that "
        f"connection took to read: {retry_text(stats.retried_after)}",
        f"failed checks: {stats.total('bad')}",
        *messages("failed checks", stats.problems),
        *messages("connection errors", stats.errors),
        *rss_lines(footprint, after, rss_limit),
        *fd_lines(footprint, after),
        f"server log: {after.tracebacks} tracebacks, {after.error_lines} ERROR lines, "
        f"{after.warning_lines} WARNING lines",
        *messages("server log lines other than INFO", after.notable),
        f"CPU over the load: server {after.after.cpu - after.before.cpu:.1f} s, client {client_cpu:.1f} s "
        f"(same machine, {os.cpu_count()} CPUs); server threads {after.before.threads} before, "
        f"{after.after.threads} after",
        "checks:",
        *(check.line() for check in verdicts),
        f"result: {'PASS' if all(check.ok for check in verdicts) else 'FAIL'}",
    ]
    return "\n".join(lines)
