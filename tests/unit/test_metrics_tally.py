"""metrics.Tally: a loop turn's increments and observations move the metrics once, at its end,
to the same values as moving them one by one."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Histogram

from app import metrics
from app.metrics import Tally

_VALUES = [0.0, 0.0004, 0.001, 0.001, 0.0011, 0.003, 0.02, 0.7, 2.5, 4.0, 61.0, 5000.0, 0.05]


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name.split("_", 1)[1], sample.labels, sample.value)
        for family in registry.collect()
        for sample in family.samples
    ]


def test_a_turns_observations_land_in_the_buckets_observe_would_use() -> None:
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    one = Histogram("a_seconds", "x", buckets=(0.001, 0.0025, 0.05, 1, 2.5, 60), registry=direct)
    other = Histogram("b_seconds", "x", buckets=(0.001, 0.0025, 0.05, 1, 2.5, 60), registry=tallied)
    tally = Tally()

    async def turn() -> list[tuple[str, dict[str, str], float]]:
        for value in _VALUES:
            one.observe(value)
            tally.observe(other, value)
        before = _samples(tallied)
        await asyncio.sleep(0)  # the turn ends
        return before

    before = asyncio.run(turn())
    assert all(value == 0 for name, _, value in before if not name.startswith("seconds_created"))
    assert _samples(tallied) == _samples(direct)
    assert dict((n, v) for n, labels, v in _samples(direct) if n == "seconds_count")["seconds_count"] == len(
        _VALUES
    )


def test_counts_move_once_at_the_end_of_the_turn() -> None:
    registry = CollectorRegistry()
    counter = Counter("c_total", "x", ["status"], registry=registry)
    ok, missing = counter.labels("200"), counter.labels("404")
    tally = Tally()
    moved: list[float] = []
    inc = ok.inc

    def counted(amount: float = 1) -> None:
        moved.append(amount)
        inc(amount)

    ok.inc = counted  # type: ignore[method-assign,assignment]

    async def turn() -> None:
        for _ in range(5):
            tally.inc(ok)
            tally.inc(missing, 2)
        assert ok._value.get() == 0
        await asyncio.sleep(0)

    asyncio.run(turn())
    assert moved == [5.0]
    assert (ok._value.get(), missing._value.get()) == (5.0, 10.0)


def test_outside_a_loop_each_moves_at_once_and_a_scrape_flushes_the_turn() -> None:
    registry = CollectorRegistry()
    counter = Counter("d_total", "x", registry=registry)
    tally = Tally()
    tally.inc(counter, 3)
    assert counter._value.get() == 3

    async def scrape_mid_turn() -> tuple[float, float]:
        before = metrics.FAST_ANSWERS._value.get()
        metrics.TALLY.inc(metrics.FAST_ANSWERS, 7)
        queued = metrics.FAST_ANSWERS._value.get()
        metrics.render()  # before the turn ends
        return queued - before, metrics.FAST_ANSWERS._value.get() - before

    assert asyncio.run(scrape_mid_turn()) == (0, 7)
