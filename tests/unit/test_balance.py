"""app/balance.py's shared connection counts: which worker steps aside for which, without I/O
(the clock is passed in). The acceptor itself is shown on a real `ferry serve --workers 2`
(tests/clients/test_worker_balance.py)."""

from __future__ import annotations

import os

import pytest

from app.balance import STALE_SECONDS, Loads


def _workers(count: int, slots: int = 4, now: float = 100.0) -> list[Loads]:
    """`count` workers sharing one `Loads` (as forks do: one memory, a slot each)."""
    shared = Loads(slots)
    workers = []
    for _ in range(count):
        view = Loads.__new__(Loads)
        view.__dict__.update(shared.__dict__)  # the same shared arrays and lock, its own slot
        view.slot = -1
        assert view.claim(now)
        workers.append(view)
    return workers


def test_each_worker_claims_its_own_slot() -> None:
    a, b, c = _workers(3)
    assert len({a.slot, b.slot, c.slot}) == 3


def test_with_few_connections_any_fewer_elsewhere_makes_a_worker_step_aside() -> None:
    a, b = _workers(2)
    assert not a.busier(100.0) and not b.busier(100.0)  # tied: both accept
    a.add(1)
    assert a.busier(100.0) and not b.busier(100.0)
    b.add(1)
    assert not a.busier(100.0) and not b.busier(100.0)
    a.add(1)
    a.add(-1)
    assert not a.busier(100.0) and a.mine == 1


@pytest.mark.parametrize(
    ("mine", "other", "steps_aside"),
    [
        (2, 1, True),
        (5, 4, False),
        (9, 8, False),
        (10, 8, False),
        (11, 8, True),
        (100, 80, False),
        (101, 80, True),
    ],
)
def test_with_many_a_quarter_more_is_tolerated(mine: int, other: int, steps_aside: bool) -> None:
    a, b = _workers(2)
    a.add(mine)
    b.add(other)
    assert a.busier(100.0) is steps_aside


def test_a_worker_gone_silent_counts_for_nothing_and_its_slot_is_taken_again() -> None:
    a, b = _workers(2, slots=2)
    a.add(3)
    assert a.busier(100.0)  # b has none
    a.beat(100.0 + STALE_SECONDS)
    assert not a.busier(100.0 + STALE_SECONDS)  # b never beat since: gone
    assert not b.claim(100.0 + 1)  # every slot is live: none to take
    b.slot = -1
    assert b.claim(100.0 + STALE_SECONDS)  # a restarted worker takes the silent one's slot
    assert b.mine == 0 and a.busier(100.0 + STALE_SECONDS)


def test_a_worker_without_a_slot_never_steps_aside() -> None:
    lone = Loads(1)
    assert not lone.busier(100.0)
    lone.add(5)  # no slot: nothing counted
    assert lone.mine == 0


def test_counts_are_shared_with_a_forked_child() -> None:
    (a,) = _workers(1, slots=2)
    pid = os.fork()
    if pid == 0:  # the child: a worker of its own, counting in the same memory
        status = 0
        try:
            a.slot = -1
            assert a.claim(100.0)
            a.add(7)
        except BaseException:
            status = 1
        os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child_slot = 1 - a.slot
    assert a._counts[child_slot] == 7 and not a.busier(100.0)
