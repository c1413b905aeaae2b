"""app/overseer.py, the supervisor a multi-worker server becomes once its workers are forked: run as
it runs (`python -I -S overseer.py`, its plan in the environment) over small stand-in workers that
keep its contract with a worker: they find their descriptors in WORKER_ENV and answer pings. The
same supervisor over real Ferry workers: tests/clients/test_supervisor.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app import overseer
from tests.support.servers import wait_for

# A stand-in worker: "serve" answers every ping, noting how many under its pid in the directory it
# is given (and exits 0 at SIGTERM); "slow" does the same after a second; "fail" exits with
# uvicorn's start-up failure status (3); "hang" answers one ping, then never again (alive, silent).
STAND_IN = r"""
import os, signal, socket, sys, time
listen, loads, ping = (int(fd) for fd in os.environ["_FERRY_WORKER"].split(","))
os.fstat(listen), os.fstat(loads)  # inherited
mode, notes = sys.argv[1], sys.argv[2]
if mode == "fail":
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if mode == "slow":
    time.sleep(1.0)  # starting, a while before it answers
ping = socket.socket(fileno=ping)
answered = 0
while ping.recv(64):
    ping.sendall(b"1")
    answered += 1
    with open(os.path.join(notes, str(os.getpid())), "w") as note:
        note.write(str(answered))
    if mode == "hang":
        while True:
            time.sleep(1)
"""


class Running:
    """An overseer process over `wanted` stand-in workers, in `place`."""

    def __init__(self, place: Path, mode: str, wanted: int, healthcheck: float) -> None:
        self.metrics, self.notes = place / "metrics", place / "ready"
        self.metrics.mkdir(parents=True)
        self.notes.mkdir()
        self.listen = socket.create_server(("127.0.0.1", 0))
        self.loads = os.memfd_create("test-loads")
        plan = {
            "command": [sys.executable, "-c", STAND_IN, mode, str(self.notes)],
            "listen": self.listen.fileno(),
            "loads": self.loads,
            "workers": [],
            "wanted": wanted,
            "metrics": str(self.metrics),
            "healthcheck": healthcheck,
            "startup": 60.0,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", overseer.__file__],
            env={**os.environ, overseer.PLAN_ENV: json.dumps(plan)},
            pass_fds=(self.listen.fileno(), self.loads),
            stderr=subprocess.PIPE,
            text=True,
        )

    def children(self) -> set[int]:
        pid = self.process.pid
        try:
            return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
        except FileNotFoundError:
            return set()

    def ready(self) -> set[int]:
        """Its children that have answered a ping."""
        return self.children() & {int(note.name) for note in self.notes.iterdir()}

    def pinged(self, pid: int) -> int:
        """How many pings worker `pid` has answered."""
        try:
            return int((self.notes / str(pid)).read_text() or 0)
        except FileNotFoundError:
            return 0

    def settled(self, count: int) -> set[int]:
        """Its children, once there are `count` of them and all have answered a ping."""
        assert wait_for(lambda: len(self.children()) == count == len(self.ready())), self.children()
        return self.children()

    def signal(self, number: int) -> None:
        """Send `number` and wait until the overseer has taken it (it waits for its signals blocked:
        pending ones are taken lowest number first, so a SIGTERM sent next would overtake it)."""
        self.process.send_signal(number)
        assert wait_for(lambda: not self._pending() >> (number - 1) & 1), number

    def _pending(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(status.split("ShdPnd:", 1)[1].split()[0], 16)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, errors = self.process.communicate(timeout=60)
        return self.process.returncode, errors

    def close(self) -> None:
        for pid in self.children():
            _kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=60)
        self.listen.close()
        os.close(self.loads)


def _kill(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


Start = Callable[..., Running]


@pytest.fixture
def overseer_of(tmp_path: Path) -> Iterator[Start]:
    started: list[Running] = []

    def start(mode: str = "serve", wanted: int = 2, healthcheck: float = 5.0) -> Running:
        running = Running(tmp_path / f"overseer-{len(started)}", mode, wanted, healthcheck)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


def test_it_starts_the_workers_wanted_and_stops_them_at_sigterm(overseer_of: Start) -> None:
    running = overseer_of(wanted=3)
    workers = running.settled(3)
    (running.metrics / "counter_1.db").write_bytes(b"x")
    status, errors = running.stop()
    assert status == 0, errors
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in workers)
    assert not running.metrics.exists()  # the metrics directory is removed with the server
    assert "Stopping parent process" in errors


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_worker_that_dies_is_replaced_and_its_live_gauges_removed(overseer_of: Start) -> None:
    running = overseer_of()
    first, second = sorted(running.settled(2))
    for pid in (first, second):
        (running.metrics / f"gauge_livesum_{pid}.db").write_bytes(b"x")
        (running.metrics / f"counter_{pid}.db").write_bytes(b"x")  # kept: counts survive a worker
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: first not in running.children() and len(running.ready()) == 2)
    assert second in running.children()
    assert sorted(path.name for path in running.metrics.iterdir()) == sorted(
        [f"counter_{first}.db", f"counter_{second}.db", f"gauge_livesum_{second}.db"]
    )
    status, errors = running.stop()
    assert status == 0 and f"Child process [{first}] died" in errors, errors


def test_a_worker_that_cannot_start_stops_the_server_with_its_status(overseer_of: Start) -> None:
    running = overseer_of("fail")
    _, errors = running.process.communicate(timeout=60)
    assert running.process.returncode == overseer.STARTUP_FAILURE, errors
    assert "failed to start, stopping the parent process" in errors


def test_a_worker_that_stops_answering_pings_is_killed_and_replaced(overseer_of: Start) -> None:
    running = overseer_of("hang", wanted=1, healthcheck=1.0)
    (first,) = running.settled(1)
    assert wait_for(lambda: first not in running.children() and len(running.ready()) == 1)
    status, errors = running.stop()
    assert status == 0 and f"Child process [{first}] did not answer in 1 s" in errors, errors


def test_sighup_replaces_every_worker(overseer_of: Start) -> None:
    running = overseer_of()
    old = running.settled(2)
    running.signal(signal.SIGHUP)
    assert wait_for(lambda: len(running.ready()) == 2 and not running.ready() & old), running.children()
    assert running.settled(2).isdisjoint(old)


def test_a_sighup_during_a_restart_replaces_every_worker_once_more(overseer_of: Start) -> None:
    """The second SIGHUP (a second release, say, while the first restart runs) is not lost: the
    workers the first round started are replaced as well."""
    running = overseer_of(mode="slow")
    first = running.settled(2)
    running.signal(signal.SIGHUP)
    assert wait_for(lambda: len(running.children()) == 3)  # the first round's first worker, starting
    running.signal(signal.SIGHUP)
    # Six workers ever answered: the two first ones, two of the first round, two of the second.
    assert wait_for(lambda: len(list(running.notes.iterdir())) == 6), sorted(running.notes.iterdir())
    last = running.settled(2)
    assert last.isdisjoint(first)
    time.sleep(2.5)  # a third round would have started a worker by now
    assert running.children() == last and len(list(running.notes.iterdir())) == 6
    status, errors = running.stop()
    assert status == 0, errors


def test_sigttin_adds_a_worker_and_sigttou_retires_one_but_never_the_last(overseer_of: Start) -> None:
    running = overseer_of(wanted=1)
    running.settled(1)
    running.signal(signal.SIGTTIN)
    running.settled(2)
    running.signal(signal.SIGTTOU)
    running.settled(1)
    running.signal(signal.SIGTTOU)
    status, errors = running.stop()
    assert status == 0 and "Already reached one process." in errors, errors


@pytest.mark.parametrize("with_workers", [False, True], ids=["the-overseer-alone", "the-whole-server"])
def test_a_stopped_overseer_takes_no_worker_for_hung(overseer_of: Start, with_workers: bool) -> None:
    """SIGSTOP for longer than the health-check timeout, then SIGCONT (a benchmark pausing the
    servers it is not measuring, a debugger, a machine too busy to run it): the same workers go on."""
    running = overseer_of(wanted=2, healthcheck=1.0)
    workers = running.settled(2)
    # A third ping means the overseer has read two answers: it now judges them by the 1 s limit.
    assert wait_for(lambda: all(running.pinged(pid) >= 3 for pid in workers))
    stopped = [running.process.pid, *(workers if with_workers else [])]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(2.5)
    for pid in reversed(stopped):
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 4.0  # eight ticks: a worker wrongly judged is killed within two
    while time.monotonic() < deadline:
        assert running.children() == workers
        time.sleep(0.1)
    status, errors = running.stop()
    assert status == 0 and "did not answer" not in errors, errors
