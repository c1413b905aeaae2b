"""Ferry's supervisor once its workers run (FERRY_WORKERS > 1): a small process of the standard
library only, which the loaded parent becomes by `exec` right after forking the workers.

The parent imports FastAPI, pydantic and Ferry once so the forked workers share those pages. Had it
stayed a parent, it would keep its own copy of every page a worker then writes to (CPython writes
reference counts and specialised bytecode as soon as code runs): ~20 MiB serving no request. Run
as `python -I -S overseer.py` (its plan in PLAN_ENV) it holds ~10 MiB and no copy of theirs.

What it does is what uvicorn's supervisor did:
- SIGTERM or SIGINT: stop taking connections, pass SIGTERM to every worker (each finishes its
  downloads within FERRY_SHUTDOWN_TIMEOUT), wait for them, remove the metrics directory, exit 0;
  a second one passes it again (a worker then stops at once).
- A worker that dies is started again (its live gauges removed from the metrics); one that exits
  with uvicorn's start-up failure status (3: the app or its settings are broken) stops the server
  with that status instead.
- Every TICK_SECONDS it pings each worker over a socket pair; one that has answered before and
  leaves a ping unanswered for the health-check timeout is hung: killed, then started again.
- SIGHUP replaces the workers one at a time (the new one serving before the old one is told to
  finish; another SIGHUP meanwhile, once more after), SIGTTIN adds a worker, SIGTTOU retires one.
A worker it starts is a fresh interpreter running the same command as the server (the plan's
`command`), told by WORKER_ENV which inherited descriptors to use: it shares no pages with the
forked ones, the price of not keeping a loaded parent for the rare restart.

Nothing here imports a Ferry module: `-S` leaves site-packages out, and the file runs by path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time

WORKER_ENV = "_FERRY_WORKER"  # "listen fd,loads fd,ping fd" in a worker this process starts
PLAN_ENV = "_FERRY_OVERSEER"  # the JSON of Overseer's arguments, from app/supervisor.py
STARTUP_FAILURE = 3  # uvicorn's exit status for a worker that could not start
TICK_SECONDS = 0.5
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)
STOPS = (signal.SIGINT, signal.SIGTERM)
LIVE_GAUGES = ("livemin", "livemax", "livesum", "liveall")  # prometheus-client's per-process gauges


def log(level: str, message: str) -> None:
    """One line as uvicorn's default formatter writes it (`INFO:     ...`), on stderr."""
    sys.stderr.write(f"{level + ':':<10}{message}\n")
    sys.stderr.flush()


class Worker:
    """A worker process and this side of its ping socket."""

    __slots__ = ("answered", "pid", "ping", "ready", "sent")

    def __init__(self, pid: int, ping: socket.socket) -> None:
        self.pid = pid
        self.ping = ping
        self.sent: float | None = None  # when the unanswered ping went out
        self.answered = False  # ever: a worker still importing is not counted as hung
        self.ready = False  # its server has started

    def take_answers(self) -> None:
        try:
            while answer := self.ping.recv(64):
                self.sent, self.answered, self.ready = None, True, answer.endswith(b"1")
        except OSError:  # none more now (BlockingIOError), or it is gone: reaped at its SIGCHLD
            pass

    def ask(self, now: float) -> None:
        """Ping it, unless a ping is outstanding."""
        if self.sent is None:
            try:
                self.ping.send(b"?")
                self.sent = now
            except OSError:
                pass

    def hung(self, now: float, timeout: float, startup: float) -> bool:
        limit = timeout if self.answered else startup
        return self.sent is not None and now - self.sent > limit


class Overseer:
    """The supervisor: `workers` are (pid, ping descriptor) of those forked before the exec,
    `wanted` how many should run; the rest as `serve` describes them (app/supervisor.py)."""

    def __init__(
        self,
        *,
        command: list[str],
        listen: int,
        loads: int,
        workers: list[list[int]],
        wanted: int,
        metrics: str | None,
        healthcheck: float,
        startup: float,
    ) -> None:
        self.command = command
        self.listen = listen
        self.loads = loads
        self.metrics = metrics
        self.timeout = healthcheck
        self.startup = startup
        self.workers: list[Worker] = []
        for pid, fd in workers:
            os.set_inheritable(fd, False)  # a worker started later must not hold its sibling's
            self.workers.append(self._worker(pid, socket.socket(fileno=fd)))
        self.wanted = wanted
        self.retiring: dict[int, Worker] = {}  # told to finish; not replaced when they exit
        self.stopping = False
        self.again = False  # a SIGHUP came during a restart: another round follows
        self.status = 0
        self.watched = time.monotonic()  # the last `watch`

    def _worker(self, pid: int, ping: socket.socket) -> Worker:
        ping.setblocking(False)
        return Worker(pid, ping)

    def run(self) -> int:
        log("INFO", f"Started parent process [{os.getpid()}]")
        while not self.stopping:
            self.reap()
            while len(self.workers) < self.wanted and not self.stopping:
                self.workers.append(self.spawn())
            self.watch()
            self.handle(signal.sigtimedwait(HANDLED, TICK_SECONDS))
        self.stop()
        log("INFO", f"Stopping parent process [{os.getpid()}]")
        return self.status

    def handle(self, info: signal.struct_siginfo | None) -> None:
        number = None if info is None else info.si_signo
        if number in STOPS:
            self.stopping = True
        elif number == signal.SIGHUP:
            self.restart_all()
        elif number == signal.SIGTTIN:
            self.wanted += 1
        elif number == signal.SIGTTOU:
            if self.wanted <= 1:
                log("INFO", "Already reached one process.")
            else:
                self.wanted -= 1
                self.retire(self.workers.pop())

    def watch(self) -> None:
        """Answers read first, then a worker judged hung, then pings sent. A ping is not judged
        on time this process itself did not run (stopped with its workers, SIGSTOP to the group,
        or not scheduled): it is forgotten, and the next one judged."""
        now = time.monotonic()
        stalled, self.watched = now - self.watched > self.timeout, now
        for worker in self.workers:
            worker.take_answers()
            if stalled:
                worker.sent = None
            if worker.hung(now, self.timeout, self.startup):
                log("WARNING", f"Child process [{worker.pid}] did not answer in {self.timeout:g} s; killed")
                kill(worker.pid, signal.SIGKILL)  # reaped and replaced at its SIGCHLD
                worker.sent = None
                worker.answered = False
            else:
                worker.ask(now)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.forget(pid)
            if (retired := self.retiring.pop(pid, None)) is not None:
                retired.ping.close()
                continue
            found = [worker for worker in self.workers if worker.pid == pid]
            if not found:
                continue
            self.workers.remove(found[0])
            found[0].ping.close()
            if self.stopping:
                continue
            if os.waitstatus_to_exitcode(status) == STARTUP_FAILURE:
                log("ERROR", f"Child process [{pid}] failed to start, stopping the parent process.")
                self.stopping, self.status = True, STARTUP_FAILURE
            else:
                log("INFO", f"Child process [{pid}] died")

    def forget(self, pid: int) -> None:
        """A finished worker's live gauges leave the shared metrics (prometheus-client's
        `mark_process_dead`)."""
        if self.metrics is not None:
            for mode in LIVE_GAUGES:
                remove(os.path.join(self.metrics, f"gauge_{mode}_{pid}.db"))

    def spawn(self) -> Worker:
        """A worker started afresh, given the listening socket, the balancing counts and a ping socket."""
        ours, theirs = socket.socketpair()
        for fd in (theirs.fileno(), self.listen, self.loads):
            os.set_inheritable(fd, True)
        env = dict(os.environ, **{WORKER_ENV: f"{self.listen},{self.loads},{theirs.fileno()}"})
        pid = os.posix_spawn(self.command[0], self.command, env, setsigmask=(), setsigdef=HANDLED)
        theirs.close()
        log("INFO", f"Started child process [{pid}]")
        return self._worker(pid, ours)

    def restart_all(self) -> None:
        """Each worker replaced in turn, the new one serving before the old one is told to finish;
        all once more if a SIGHUP came meanwhile (its release or setting may postdate this round)."""
        self.again = True
        while self.again and not self.stopping:
            self.again = False
            self.replace_each()

    def replace_each(self) -> None:  # (one round of `restart_all`)
        for old in list(self.workers):
            new = self.spawn()
            self.retiring[new.pid] = new  # until it is ready: not replaced if it dies meanwhile
            if not self.until_ready(new):
                kill(new.pid, signal.SIGKILL)
                if not self.stopping:
                    log("ERROR", f"Child process [{new.pid}] was not ready in time; keeping [{old.pid}]")
                return
            del self.retiring[new.pid]
            if old in self.workers:  # else it died meanwhile and has been replaced
                self.workers[self.workers.index(old)] = new
                self.retire(old)
            else:
                self.retire(new)

    def until_ready(self, worker: Worker) -> bool:
        """Wait until `worker` says its server has started (reaping, heeding every signal; another
        SIGHUP is kept for after this round); False if it dies, the deadline passes or it stops."""
        deadline = time.monotonic() + self.startup
        while time.monotonic() < deadline and not self.stopping:
            worker.take_answers()
            worker.ask(time.monotonic())
            if worker.ready:
                return True
            info = signal.sigtimedwait(HANDLED, 0.1)
            if info is not None and info.si_signo == signal.SIGHUP:
                self.again = True
            elif info is not None:
                self.handle(info)
            self.reap()
            if worker.pid not in self.retiring:
                return False  # it died
        return False

    def retire(self, worker: Worker) -> None:
        self.retiring[worker.pid] = worker
        kill(worker.pid, signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM to every worker; wait for all (passing a second SIGTERM or SIGINT on)."""
        os.close(self.listen)  # the port refuses new connections once the workers close theirs
        everyone = [*self.workers, *self.retiring.values()]
        for worker in everyone:
            kill(worker.pid, signal.SIGTERM)
        for worker in everyone:
            log("INFO", f"Waiting for child process [{worker.pid}]")
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.forget(pid)
                continue
            info = signal.sigtimedwait(HANDLED, TICK_SECONDS)
            if info is not None and info.si_signo in STOPS:
                for worker in everyone:
                    kill(worker.pid, info.si_signo)
        if self.metrics is not None and os.path.isdir(self.metrics):
            for name in os.listdir(self.metrics):
                remove(os.path.join(self.metrics, name))
            os.rmdir(self.metrics)


def kill(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def main() -> int:
    # Waited for, not handled: blocked already when the exec came from app/supervisor.py.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    return Overseer(**json.loads(os.environ.pop(PLAN_ENV))).run()


if __name__ == "__main__":
    sys.exit(main())
