"""The traffic: N virtual clients, each on its own keep-alive connection, each request drawn from
the mix (full downloads, ranges, range sets, listings, searches, slow readers, aborting clients)
and checked against the tree. A watchdog aborts a connection that waits on the server too long.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.load import verify as v
from tests.load.data import KIB, DataFile, DataTree
from tests.load.stats import KINDS, Outcome, Stats
from tests.load.wire import Connection, Head, ProtocolError

PAGE = 100
CONNECT_RETRY = 0.2
# Requests drawn per kind (slow readers and aborts hold a connection for seconds or drop it).
WEIGHTS = {"full": 30, "range": 25, "multirange": 10, "listing": 10, "search": 10, "slow": 5, "abort": 10}
TRANSPORT_ERRORS = (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError)
RETRYABLE = (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True)
class MixOptions:
    slow_rate: int = 64 * KIB  # bytes per second
    slow_seconds: tuple[float, float] = (1.0, 4.0)
    abort_most: int = 256 * KIB  # body bytes an aborting client reads at most
    stall_timeout: float = 30.0  # waiting this long for the server is an error
    ramp_seconds: float = 1.0  # the clients start spread over this long


@dataclass
class Client:
    """What one virtual client needs: the server, the tree, its random stream, the counters."""

    host: str
    port: int
    tree: DataTree
    options: MixOptions
    stats: Stats
    rng: random.Random
    live: set[Connection]
    stopping: asyncio.Event
    conn: Connection | None = None
    kinds: list[str] = field(default_factory=lambda: list(WEIGHTS))
    weights: list[int] = field(default_factory=lambda: list(WEIGHTS.values()))

    def pick_kind(self) -> str:
        return self.rng.choices(self.kinds, self.weights)[0]

    def pick_file(self, smallest: int = 0) -> DataFile:
        """Weighted to smaller files (weight ∝ 1/√size); most bytes still come from big ones."""
        files = [f for f in self.tree.files if f.size >= smallest] or list(self.tree.files)
        return self.rng.choices(files, [f.size**-0.5 for f in files])[0]

    async def connection(self) -> Connection:
        if self.conn is not None and self.conn.reusable:
            if not self.conn.closed_by_server():
                return self.conn
            self.stats.stale += 1
        self.drop(graceful=True)
        while True:
            try:
                self.conn = await Connection.open(self.host, self.port)
            except OSError as exc:
                self.stats.connect_error(type(exc).__name__)
                await asyncio.sleep(CONNECT_RETRY)
                continue
            self.stats.connects += 1
            self.live.add(self.conn)
            return self.conn

    def drop(self, *, graceful: bool = False) -> None:
        if self.conn is None:
            return
        self.live.discard(self.conn)
        if graceful:
            self.conn.close()
        else:
            self.conn.abort()
        self.conn = None


# --- the kinds of request ------------------------------------------------------------------------


async def drain(conn: Connection, head: Head) -> int:
    """Read an unexpected answer's body so the connection stays in step."""
    return len(await conn.read_all(head)) if head.status not in (204, 304) else 0


async def refuse(conn: Connection, head: Head, problem: str) -> Outcome:
    return Outcome(head.status, await drain(conn, head), problem)


async def hashed(conn: Connection, length: int, *, rate: float = 0, stop_after: int = -1) -> tuple[str, int]:
    digest = hashlib.sha256()
    received = await conn.read_body(length, digest.update, rate=rate, stop_after=stop_after)
    return digest.hexdigest(), received


async def full_download(client: Client, conn: Connection) -> Outcome:
    file = client.pick_file()
    head = await conn.request(file.target)
    problem = v.first_problem(
        v.expect_status(head, 200), v.expect_header(head, "content-length", str(file.size))
    )
    if problem:
        return await refuse(conn, head, problem)
    digest, received = await hashed(conn, file.size)
    return Outcome(200, received, v.check_digest(file.name, digest, file.sha256, received, file.size))


async def single_range(client: Client, conn: Connection) -> Outcome:
    file = client.rng.choice(client.tree.files)
    span = client.rng.choice(file.spans)
    head = await conn.request(file.target, {"Range": f"bytes={span.spec}"})
    problem = v.first_problem(
        v.expect_status(head, 206),
        v.expect_header(head, "content-range", span.content_range(file.size)),
        v.expect_header(head, "content-length", str(span.length)),
    )
    if problem:
        return await refuse(conn, head, f"{file.name} {span.spec}: {problem}")
    digest, received = await hashed(conn, span.length)
    what = f"{file.name} {span.spec}"
    return Outcome(206, received, v.check_digest(what, digest, span.sha256, received, span.length))


async def range_set(client: Client, conn: Connection) -> Outcome:
    file = client.rng.choice(client.tree.files)
    spans = client.rng.choice(file.sets)
    head = await conn.request(file.target, {"Range": spans.header(client.rng)})
    boundary = v.boundary_of(head)
    problem = v.expect_status(head, 206) or (None if boundary else "not multipart/byteranges")
    if problem or boundary is None:
        return await refuse(conn, head, f"{file.name}: {problem}")
    body = await conn.read_all(head)
    if head.content_length != len(body):
        return Outcome(206, len(body), f"Content-Length {head.content_length}, body {len(body)}")
    parts = v.split_multipart(body, boundary)
    if isinstance(parts, str):
        return Outcome(206, len(body), f"{file.name}: {parts}")
    return Outcome(206, len(body), v.check_parts(parts, spans, file))


async def get_json(conn: Connection, target: str) -> tuple[Head, dict[str, Any] | str, int]:
    head = await conn.request(target)
    body = await conn.read_all(head)
    problem = v.expect_status(head, 200)
    return head, problem or v.parse_json(body), len(body)


async def listing(client: Client, conn: Connection) -> Outcome:
    """One to three pages of a big directory, following next_cursor."""
    directory = client.rng.choice(client.tree.directories)
    cursor, after, received, status = "", "", 0, None
    for page in range(client.rng.randint(1, 3)):
        query = {"limit": str(PAGE), **({"cursor": cursor} if cursor else {})}
        target = f"/api/files/{directory.path}?{urllib.parse.urlencode(query)}"
        head, document, size = await get_json(conn, target)
        received, status = received + size, head.status
        if isinstance(document, str):
            return Outcome(status, received, f"{directory.path}: {document}")
        remaining = directory.entries - page * PAGE
        expected, more = min(PAGE, remaining), remaining > PAGE
        problem = v.check_page(document, expected=expected, more=more, after=after)
        if problem:
            return Outcome(status, received, f"{directory.path} page {page + 1}: {problem}")
        if not more:
            break
        cursor, after = str(document["next_cursor"]), str(document["entries"][-1]["name"])
    return Outcome(status, received)


async def search(client: Client, conn: Connection) -> Outcome:
    term = client.rng.choice(client.tree.searches)
    target = "/api/search?" + urllib.parse.urlencode({"q": term.query, "limit": str(PAGE)})
    head, document, size = await get_json(conn, target)
    if isinstance(document, str):
        return Outcome(head.status, size, f"q={term.query}: {document}")
    expected, more = min(PAGE, term.matches), term.matches > PAGE
    return Outcome(head.status, size, v.check_search(document, term.query, expected=expected, more=more))


async def slow_reader(client: Client, conn: Connection) -> Outcome:
    """Read at SLOW_RATE for a few seconds, then either finish at full speed (verified) or go."""
    file = client.pick_file(smallest=256 * KIB)
    head = await conn.request(file.target)
    problem = v.expect_status(head, 200)
    if problem:
        return await refuse(conn, head, problem)
    rate = client.options.slow_rate
    slow_bytes = int(rate * client.rng.uniform(*client.options.slow_seconds))
    digest = hashlib.sha256()
    received = await conn.read_body(file.size, digest.update, rate=rate, stop_after=slow_bytes)
    if received < file.size and client.rng.random() < 0.5:
        conn.close()
        conn.reusable = False
        return Outcome(200, received, aborted=True)
    received += await conn.read_body(file.size - received, digest.update)
    return Outcome(
        200, received, v.check_digest(file.name, digest.hexdigest(), file.sha256, received, file.size)
    )


async def aborting_client(client: Client, conn: Connection) -> Outcome:
    """Ask for a big file, then leave: at once, after a little body (close), or with RST."""
    file = client.pick_file(smallest=1024 * KIB)
    how = client.rng.choice(("before-head", "close", "reset"))
    conn.reusable = False
    await conn.send(file.target)
    if how == "before-head":
        conn.close()
        return Outcome(None, 0, aborted=True)
    head = await conn.read_head()
    received = await conn.read_body(
        file.size, lambda _: None, stop_after=client.rng.randint(0, client.options.abort_most)
    )
    if how == "close":
        conn.close()
    else:
        conn.reset()
    return Outcome(head.status, received, aborted=True)


Scenario = Callable[[Client, Connection], Awaitable[Outcome]]
SCENARIOS: dict[str, Scenario] = {
    "full": full_download,
    "range": single_range,
    "multirange": range_set,
    "listing": listing,
    "search": search,
    "slow": slow_reader,
    "abort": aborting_client,
}
assert tuple(SCENARIOS) == KINDS and set(WEIGHTS) == set(KINDS)


# --- the clients and the watchdog --------------------------------------------------------------


def exchange_bucket(seconds: float) -> str:
    """How long the previous exchange on a connection took (uvicorn's keep-alive timeout is 5 s,
    counted from when the server queued the last byte, not from when the client read it)."""
    return "< 1 s" if seconds < 1 else "1-5 s" if seconds < 5 else ">= 5 s"


async def attempt(client: Client, kind: str) -> Outcome | None:
    """One request of `kind`, retried once on a fresh connection if a reused one was closed
    before the answer began; None after a connection error (counted)."""
    state = client.rng.getstate()  # a retry repeats the same request
    for retry in (False, True):
        conn = await client.connection()
        try:
            outcome = await SCENARIOS[kind](client, conn)
        except asyncio.CancelledError:
            client.stats.kinds[kind].cut += 1
            client.drop()
            raise
        except TRANSPORT_ERRORS as exc:
            client.drop()
            if not retry and isinstance(exc, RETRYABLE) and conn.closed_before_answer():
                client.stats.retries[kind] += 1
                client.stats.retried_after[exchange_bucket(conn.last_exchange)] += 1
                client.rng.setstate(state)
                continue
            stalled = "stalled (watchdog)" if conn.stalled else type(exc).__name__
            client.stats.error(kind, f"{stalled} {conn.describe()}")
            return None
        conn.finished()
        return outcome
    raise AssertionError("unreachable")  # pragma: no cover


async def one_request(client: Client, kind: str) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    client.stats.kinds[kind].started += 1
    outcome = await attempt(client, kind)
    if outcome is None:
        return
    client.stats.record(kind, outcome, loop.time() - started)
    if outcome.problem is not None or outcome.aborted:
        client.drop(graceful=outcome.aborted)


async def run_client(client: Client, delay: float) -> None:
    await asyncio.sleep(delay)
    try:
        while not client.stopping.is_set():
            await one_request(client, client.pick_kind())
    finally:
        client.drop(graceful=True)


async def watchdog(live: set[Connection], stall_timeout: float) -> None:
    """Abort connections that have waited on the server for longer than `stall_timeout`."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(1.0)
        now = loop.time()
        for conn in list(live):
            if conn.busy and now - conn.last_io > stall_timeout:
                conn.stalled = True
                conn.abort()
