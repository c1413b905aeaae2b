"""The load generators: curl for single transfers, uploads and time to first byte, wrk for
concurrent load, http.client for the latency of JSON requests, and a sampler of the servers'
resident memory while they work.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.bench.system import HOST, BenchError, memory_kib, rss_kib, tree_pids

RANGE_SPAN = 64 * 1024
WRK_THREADS = 2
WRK_TIMEOUT_S = 30  # per response; a 100 MiB download under 64-way load takes seconds

# Every wrk run reports through this hook: one parseable line instead of wrk's prose.
_DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%.0f bytes=%.0f duration_us=%.0f connect=%.0f read=%.0f write=%.0f"
    .. " status=%.0f timeout=%.0f p50_us=%.0f p99_us=%.0f\\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

# A random 64 KiB range per request: half at 4 KiB-aligned offsets, half anywhere.
_RANGES = """
local size = {size}
local span = {span}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end
function init(args)
  math.randomseed(os.time() * 1000 + (id or 0) * 7919)
end
function request()
  local a = math.random(0, size - span)
  if math.random() < 0.5 then a = a - a % 4096 end
  return wrk.format("GET", nil, {{["Range"] = "bytes=" .. a .. "-" .. (a + span - 1)}})
end
"""


# --- curl --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    status: int
    size: int
    speed: float  # bytes per second over the whole transfer
    ttfb: float  # seconds to the first response byte, connection included


def curl(
    curl_bin: str,
    url: str,
    *,
    timeout: float,
    expect: tuple[int, int],
    headers: tuple[str, ...] = (),
    follow: bool = False,
) -> Transfer:
    """One download to /dev/null; `expect` is (status, body size) of the last response (`follow`:
    redirects followed, curl -L)."""
    write_out = "%{http_code} %{size_download} %{speed_download} %{time_starttransfer}"
    command = [curl_bin, "-s", "--noproxy", "*", "-o", "/dev/null", "--max-time", f"{timeout:.0f}"]
    if follow:
        command.append("-L")
    for header in headers:
        command += ["-H", header]
    command += ["-w", write_out, url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 15, check=False)
    if result.returncode != 0:
        raise BenchError(f"curl {url} exited {result.returncode}: {result.stderr.strip()}")
    status, size, speed, ttfb = result.stdout.split()
    transfer = Transfer(int(status), int(size), float(speed), float(ttfb))
    if (transfer.status, transfer.size) != expect:
        raise BenchError(f"curl {url} {headers}: got {transfer.status}/{transfer.size} bytes, want {expect}")
    return transfer


@dataclass(frozen=True)
class Upload:
    status: int
    size: int
    speed: float  # bytes per second over the whole request, response included


def upload(
    curl_bin: str,
    url: str,
    source: Path,
    *,
    token: str | None,
    timeout: float,
    refused: tuple[int, ...] = (),
) -> Upload:
    """One PUT of `source` (curl -T: Expect: 100-continue, then the body from the file). A status
    in `refused` is returned as it is (the server does not take uploads), any other non-2xx fails."""
    command = [curl_bin, "-sS", "--noproxy", "*", "-o", "/dev/null", "--max-time", f"{timeout:.0f}"]
    command += ["-T", str(source), "-w", "%{http_code} %{size_upload} %{speed_upload}"]
    if token is not None:
        command += ["-H", f"Authorization: Bearer {token}"]
    result = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=timeout + 15, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"curl -T {url} exited {result.returncode}: {result.stderr.strip()}")
    status, size, speed = result.stdout.split()
    sent = Upload(int(status), int(size), float(speed))
    if sent.status in refused:
        return sent
    expected = source.stat().st_size
    if sent.status not in (200, 201, 204) or sent.size != expected:
        raise BenchError(
            f"curl -T {url}: got {sent.status} after {sent.size} bytes, want 2xx after {expected}"
        )
    return sent


# --- http.client -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    """Wall times of one GET repeated on one keep-alive connection, and the last JSON answer."""

    milliseconds: list[float]
    body: dict[str, Any]


def timed_gets(port: int, path: str, *, requests: int, timeout: float = 60.0) -> Timings:
    """`requests` GETs of `path`, each timed from sending the request to the last body byte."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    times: list[float] = []
    body = b""
    try:
        for _ in range(requests):
            began = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            times.append((time.perf_counter() - began) * 1000)
            if response.status != 200:
                raise BenchError(f"GET {path}: {response.status} {body[:200]!r}")
    except OSError as exc:
        raise BenchError(f"GET {path}: {exc}") from exc
    finally:
        connection.close()
    decoded: dict[str, Any] = json.loads(body)
    return Timings(times, decoded)


def fetch_text(port: int, path: str, *, timeout: float = 10.0) -> str:
    """One GET's body as text (/metrics, for instance)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
    except OSError as exc:
        raise BenchError(f"GET {path}: {exc}") from exc
    finally:
        connection.close()
    if response.status != 200:
        raise BenchError(f"GET {path}: {response.status} {body[:200]!r}")
    return body


# --- wrk ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkScripts:
    plain: Path  # the done hook only: wrk keeps its fast static request
    ranges: Path  # a random 64 KiB range of the stream file per request
    closing: Path  # `Connection: close`: a new connection per request, as a script's curl makes


def write_scripts(directory: Path, stream_size: int) -> WrkScripts:
    plain = directory / "wrk-plain.lua"
    plain.write_text(_DONE_HOOK)
    ranges = directory / "wrk-ranges.lua"
    ranges.write_text(_RANGES.format(size=stream_size, span=RANGE_SPAN) + _DONE_HOOK)
    closing = directory / "wrk-closing.lua"
    closing.write_text('wrk.headers["Connection"] = "close"\n' + _DONE_HOOK)
    return WrkScripts(plain, ranges, closing)


@dataclass(frozen=True)
class WrkResult:
    requests: int
    bytes: int
    seconds: float
    errors: dict[str, int]
    p99_ms: float
    p50_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def throughput(self) -> float:
        return self.bytes / self.seconds

    def describe(self, *, per_response: bool = True) -> str:
        """Responses and bytes; per response only where no transfer is cut off at the end."""
        errors = ", ".join(f"{kind} {count}" for kind, count in self.errors.items() if count) or "no errors"
        if per_response and self.requests:
            volume = f"{self.bytes / self.requests / 1024:,.1f} KiB per response"
        else:
            volume = f"{self.bytes / 1024**3:,.1f} GiB read"
        return f"{self.requests} responses, {volume}, p99 {self.p99_ms:.1f} ms, {errors}"


def _parse_wrk(output: str) -> WrkResult:
    line = next((line for line in output.splitlines() if line.startswith("BENCH ")), None)
    if line is None:
        raise BenchError(f"wrk printed no summary:\n{output[-2000:]}")
    values = {key: int(value) for key, value in (item.split("=") for item in line.split()[1:])}
    errors = {kind: values[kind] for kind in ("connect", "read", "write", "status", "timeout")}
    seconds = values["duration_us"] / 1e6
    p50, p99 = values["p50_us"] / 1000, values["p99_us"] / 1000
    return WrkResult(values["requests"], values["bytes"], seconds, errors, p99, p50)


def wrk(wrk_bin: str, url: str, *, script: Path, connections: int, duration: int) -> WrkResult:
    threads = min(WRK_THREADS, connections)
    command = [wrk_bin, f"-t{threads}", f"-c{connections}", f"-d{duration}s", f"--timeout={WRK_TIMEOUT_S}s"]
    command += ["-s", str(script), url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    if result.returncode != 0:
        raise BenchError(f"wrk {url} exited {result.returncode}: {result.stderr.strip()}")
    outcome = _parse_wrk(result.stdout)
    if outcome.errors["status"]:  # a 4xx/5xx answer: the figure would measure the wrong thing
        raise BenchError(f"wrk {url}: {outcome.describe()}")
    return outcome


# --- memory ------------------------------------------------------------------------------------


@dataclass
class RssSampler:
    """Samples VmRSS of the given processes every `interval` seconds, in a thread, while entered."""

    pids: list[int]
    interval: float = 0.2
    peaks_kib: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        for pid in self.pids:
            rss = rss_kib(pid)
            if rss is not None:
                self.peaks_kib[pid] = max(rss, self.peaks_kib.get(pid, 0))

    def _loop(self) -> None:
        self._sample()
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()

    def peak_mib(self) -> float:
        if not self.peaks_kib:
            raise BenchError(f"no RSS sample from processes {self.pids}")
        return max(self.peaks_kib.values()) / 1024

    def describe(self) -> str:
        return "per worker: " + ", ".join(f"{kib / 1024:.1f}" for kib in self.peaks_kib.values()) + " MiB"


@dataclass
class TreeMemory:
    """RSS and PSS summed over a server's whole process tree (looked up again at each sample, so a
    restarted worker counts), every `interval` seconds in a thread while entered: the peak sums."""

    parent: int
    interval: float = 0.5
    peak_rss_kib: int = 0
    peak_pss_kib: int = 0
    processes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> TreeMemory:
        figures = [found for pid in tree_pids(self.parent) if (found := memory_kib(pid)) is not None]
        self.processes = max(self.processes, len(figures))
        self.peak_rss_kib = max(self.peak_rss_kib, sum(rss for rss, _ in figures))
        self.peak_pss_kib = max(self.peak_pss_kib, sum(pss for _, pss in figures))
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMemory:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="tree-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def describe(self) -> str:
        return f"{self.processes} processes; RSS counts shared pages once per process, PSS divides them"
