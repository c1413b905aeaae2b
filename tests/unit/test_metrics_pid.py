"""app/metrics.py keeps the pid prometheus-client's multiprocess values file under, current across
forks (each forked worker writes its own file; /metrics sums them), without a getpid(2) per
increment."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

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


def test_a_metrics_file_not_yet_sized_is_skipped_not_fatal(tmp_path: Path) -> None:
    """A process creates its metric file and sizes it a moment later: a scrape in between reads
    every other process's values (prometheus-client's own collector fails whole)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector

    from app.metrics import SizedFiles

    values = MmapedDict(str(tmp_path / "counter_1.db"))  # type: ignore[no-untyped-call]
    key = mmap_key("ferry_probe_total", "ferry_probe_total", [], [], "")
    values.write_value(key, 3.0, 0.0)  # type: ignore[no-untyped-call]
    values.close()  # type: ignore[no-untyped-call]
    (tmp_path / "counter_2.db").touch()  # just created, not yet sized
    plain = CollectorRegistry()
    MultiProcessCollector(plain, str(tmp_path))  # type: ignore[no-untyped-call]
    with pytest.raises(struct.error):
        generate_latest(plain)
    registry = CollectorRegistry()
    SizedFiles(registry, str(tmp_path))
    assert b"ferry_probe_total 3.0" in generate_latest(registry)
