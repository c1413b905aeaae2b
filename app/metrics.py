"""Prometheus metrics: what operators of a download server need to see, exact across workers.

With several workers (FERRY_WORKERS > 1) every process writes its samples to files in
PROMETHEUS_MULTIPROC_DIR (set by `ferry serve` before the workers start) and /metrics sums them,
so a scrape is right whichever worker answers it.
"""

from __future__ import annotations

import asyncio
import bisect
import glob
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created samples only add noise

_PID = os.getpid()


def _pid() -> int:
    """This process's pid, kept current across forks: prometheus-client's multiprocess values ask
    for it on every increment (a getpid(2) each, nine a request)."""
    return _PID


def _forked() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_forked)
if values.ValueClass.__name__ == "MmapedValue":  # multiprocess mode: each process its own file
    values.ValueClass = values.MultiProcessValue(process_identifier=_pid)  # type: ignore[no-untyped-call]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

REQUESTS = Counter(
    "ferry_http_requests_total", "Requests answered, by method and status", ["method", "status"]
)
BYTES_SENT = Counter("ferry_bytes_sent_total", "File bytes sent, by status (200, 206)", ["status"])
RANGE_RESPONSES = Counter("ferry_range_responses_total", "206 responses, by kind", ["kind"])
IF_RANGE = Counter(
    "ferry_if_range_total",
    "Range requests with If-Range: hit (resumed, 206) or miss (restarted, 200)",
    ["result"],
)
FAST_ANSWERS = Counter(
    "ferry_fast_path_answers_total",
    "Requests the protocol answered itself, below the ASGI app (FERRY_FAST_PATH)",
)
ABORTS = Counter("ferry_client_aborts_total", "Downloads the client abandoned before the end")
UNDELIVERED = Counter("ferry_undelivered_bytes_total", "Bytes promised by Content-Length but never sent")
IN_FLIGHT = Gauge(
    "ferry_downloads_in_flight", "File bodies being sent right now", multiprocess_mode="livesum"
)
TTFB = Histogram("ferry_time_to_first_byte_seconds", "From request to first body byte", buckets=_BUCKETS)
DURATION = Histogram("ferry_transfer_duration_seconds", "From request to last body byte", buckets=_BUCKETS)
ARCHIVES = Counter(
    "ferry_archives_total", "Folder archives answered with a body, by format (zip, tar)", ["format"]
)
ARCHIVE_BYTES = Counter("ferry_archive_bytes_total", "Bytes of folder archives sent, by format", ["format"])
UPLOADS = Counter("ferry_uploads_total", "Uploaded files, by result (created, replaced, failed)", ["result"])
UPLOAD_BYTES = Counter("ferry_upload_bytes_total", "Bytes of uploads stored")
RESUMABLE_UPLOADS = Counter(
    "ferry_resumable_uploads_total",
    "Resumable uploads, by result (started, completed, expired, aborted)",
    ["result"],
)
RESUMABLE_BYTES = Counter("ferry_resumable_bytes_total", "Bytes appended to resumable uploads")
RESUMED_BYTES = Counter(
    "ferry_resumable_resumed_bytes_total",
    "Bytes a resumable upload had stored when a process that did not receive them continued it "
    "(after a restart, or on another worker): what resuming saved from being sent again",
)
INDEX_ENTRIES = Gauge("ferry_index_entries", "Entries in the storage index", multiprocess_mode="max")
HASHED_BYTES = Counter("ferry_hashed_bytes_total", "Bytes the background hasher has read and hashed")
HASHED_FILES = Counter("ferry_hashed_files_total", "Files whose SHA-256 the background hasher computed")
ON_DEMAND_HASH_BYTES = Counter(
    "ferry_on_demand_hash_bytes_total", "Bytes read and hashed because a request asked for a digest"
)
ON_DEMAND_HASH_SKIPPED = Counter(
    "ferry_on_demand_hash_skipped_total",
    "Requests that asked for a digest and were answered without it (or 503) rather than wait",
)
DIGEST_LOOKUPS_ABANDONED = Counter(
    "ferry_digest_lookups_abandoned_total",
    "Downloads sent without their digest fields because the index did not answer in time",
)
INDEX_SCAN_SECONDS = Gauge(
    "ferry_index_last_scan_seconds", "Duration of the last index scan", multiprocess_mode="mostrecent"
)

INDEX_SKIPPED_NAMES = Counter(
    "ferry_index_skipped_names_total",
    "Names under ROOT the index skipped: not valid UTF-8, so no URL names them",
)
INDEX_WATCH_RESTARTS = Counter(
    "ferry_index_watch_restarts_total", "Times file watching (inotify) failed and was started again"
)
INDEX_REBUILDS = Counter(
    "ferry_index_rebuilds_total", "Times a damaged index was replaced and rebuilt from disk"
)
STALE_UPLOADS_REMOVED = Counter(
    "ferry_stale_uploads_removed_total", "Temporary files of abandoned uploads removed by the sweep"
)


class Tally:
    """The counts and observations of one event-loop turn, added to the metrics at its end.

    Each increment of a value takes a lock and, with several workers, writes its mapped file:
    0.7 µs apiece, seven for a small download, the largest share of its access bookkeeping. A
    turn's requests add up here and move each value once (a histogram: once per bucket touched).
    Outside a running loop, or for an operator scraping, they move at once (`flush`)."""

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}
        self._observed: dict[Any, list[float]] = {}
        self._queued = False

    def inc(self, child: Any, amount: float = 1.0) -> None:
        """`child.inc(amount)` at the end of this turn."""
        counts = self._counts
        counts[child] = counts.get(child, 0.0) + amount
        if not self._queued:
            self._queue()

    def observe(self, child: Any, value: float) -> None:
        """`child.observe(value)` at the end of this turn."""
        found = self._observed.get(child)
        if found is None:
            self._observed[child] = [value]
        else:
            found.append(value)
        if not self._queued:
            self._queue()

    def _queue(self) -> None:
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no loop to end a turn: now
            self.flush()
            return
        self._queued = True

    def flush(self) -> None:
        self._queued = False
        counts, self._counts = self._counts, {}
        for child, amount in counts.items():
            child.inc(amount)
        observed, self._observed = self._observed, {}
        for child, found in observed.items():
            _observe_all(child, found)


def _observe_all(histogram: Any, found: list[float]) -> None:
    """`histogram.observe` of each value, its sum and each bucket moved once (prometheus-client's
    Histogram keeps per-bucket counts, cumulated when sampled; tests/unit/test_metrics_tally.py
    checks the outcome against observe())."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(found) == 1:
        for value in found:
            histogram.observe(value)
        return
    per_bucket: dict[int, int] = {}
    for value in found:
        at = bisect.bisect_left(bounds, value)
        per_bucket[at] = per_bucket.get(at, 0) + 1
    total.inc(sum(found))
    for at, count in per_bucket.items():
        if at < len(buckets):  # (a NaN falls in no bucket, as with observe)
            buckets[at].inc(count)


TALLY = Tally()  # this process's


def render() -> tuple[bytes, str]:
    """The exposition text for a scrape, summed over every worker when there are several."""
    TALLY.flush()
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        SizedFiles(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def process_exited(pid: int) -> None:
    """Drop a finished worker's live gauges (in-flight downloads) from the shared files."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class SizedFiles(multiprocess.MultiProcessCollector):
    """prometheus-client's collector of every process's metric files, skipping a file still at 0
    bytes: a process creates its file and sizes it a moment later, and a scrape in between failed
    whole (struct.error reading the empty header; prometheus/client_python#1199). A just-started
    server scraped at once (the benchmarks poll it) met it."""

    def __init__(self, registry: Any, path: str | None = None) -> None:
        super().__init__(registry, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Any:
        files = []
        for name in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(name):
                    files.append(name)
            except OSError:
                pass  # removed meanwhile: a process that ended
        return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
