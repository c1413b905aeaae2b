"""app/metrics.py keeps the pid prometheus-client's multiprocess values file under, current across
forks (each forked worker writes its own file; /metrics sums them), without a getpid(2) per
increment."""

from __future__ import annotations

import os

from app import metrics


def test_the_pid_is_the_processs_own_after_a_fork() -> None:
    assert metrics._pid() == os.getpid()
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.close(reader)
        os.write(writer, str(metrics._pid()).encode())
        os._exit(0)
    os.close(writer)
    reported = int(os.read(reader, 64))
    os.close(reader)
    os.waitpid(child, 0)
    assert reported == child != os.getpid() == metrics._pid()
