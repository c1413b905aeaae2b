"""What the load run counts: per kind of request, its statuses, bytes, outcomes and latencies."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

KINDS = ("full", "range", "multirange", "listing", "search", "slow", "abort")
EXAMPLES = 5  # problem and error messages kept per distinct message


@dataclass(frozen=True)
class Outcome:
    """How one request ended, as the scenario saw it."""

    status: int | None
    received: int  # body bytes
    problem: str | None = None  # a wrong status, header or body: a failed check
    aborted: bool = False  # the client gave up on purpose (slow reader, aborting client)


@dataclass
class KindStats:
    started: int = 0
    verified: int = 0  # completed, and every check passed
    aborted: int = 0  # intentional aborts
    cut: int = 0  # in flight when the run ended, cancelled
    bad: int = 0  # failed a check
    errors: int = 0  # connection errors the client did not cause
    received: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)  # of verified requests


@dataclass
class Stats:
    kinds: dict[str, KindStats] = field(default_factory=lambda: {kind: KindStats() for kind in KINDS})
    problems: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    connects: int = 0
    connect_errors: int = 0
    stale: int = 0  # keep-alive connections the server had closed, noticed before reuse
    retries: Counter[str] = field(default_factory=Counter)  # by kind: RFC 9112 §9.3.1 retries
    retried_after: Counter[str] = field(default_factory=Counter)  # by the previous exchange's length

    def record(self, kind: str, outcome: Outcome, seconds: float) -> None:
        stats = self.kinds[kind]
        stats.received += outcome.received
        if outcome.status is not None:
            stats.statuses[outcome.status] += 1
        if outcome.problem is not None:
            stats.bad += 1
            self.problems[f"{kind}: {outcome.problem}"] += 1
        elif outcome.aborted:
            stats.aborted += 1
        else:
            stats.verified += 1
            stats.seconds.append(seconds)

    def error(self, kind: str, message: str) -> None:
        self.kinds[kind].errors += 1
        self.errors[f"{kind}: {message}"] += 1

    def connect_error(self, message: str) -> None:
        self.connect_errors += 1
        self.errors[f"connect: {message}"] += 1

    @property
    def statuses(self) -> Counter[int]:
        total: Counter[int] = Counter()
        for stats in self.kinds.values():
            total.update(stats.statuses)
        return total

    def total(self, attribute: str) -> int:
        return sum(int(getattr(stats, attribute)) for stats in self.kinds.values())
