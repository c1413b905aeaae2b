"""Memory of a real `ferry serve --workers 2`, idle after start-up: the workers are forked from a
parent that loaded the app, so they share its pages and each holds little of its own; the parent
then becomes a small supervisor (app/overseer.py) that keeps no copy of them.

Measured on the 2-vCPU build machine (Python 3.11): spawned workers held ~41 MiB each of their own
(USS) and the tree 128 MiB of PSS (172 MiB RSS, four processes with multiprocessing's resource
tracker); forked under a loaded supervisor, 12-17 MiB each and 75 MiB of PSS; under the overseer,
12-15 MiB each and 68 MiB of PSS (111 MiB RSS, the overseer 11 MiB of it). The bounds sit between,
with room for noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ServerFactory, wait_for

pytestmark = pytest.mark.clients

MIB = 1024**2
WORKER_OWN_BOUND = 28 * MIB  # USS of each worker: what only it holds
TREE_PSS_BOUND = 88 * MIB  # PSS summed over the supervisor and its workers
SUPERVISOR_OWN_BOUND = 12 * MIB  # USS of the supervisor: the overseer's ~5 MiB, not a loaded parent's ~20


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in bytes, by field (Rss, Pss, Private_Clean, ...)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value) * 1024
    return fields


def test_idle_workers_share_pages_and_the_supervisor_keeps_no_copy(
    ferry: ServerFactory, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    server = ferry(root, "--workers", "2")
    started = lambda: server.log.read_text(errors="replace").count("Application startup complete") == 2  # noqa: E731
    assert wait_for(started), server.log.read_text(errors="replace")[-2000:]
    workers = _children(server.pid)
    assert len(workers) == 2, workers  # no helper process beside them
    rollups = {pid: _rollup(pid) for pid in [server.pid, *workers]}
    own = {pid: rollups[pid]["Private_Clean"] + rollups[pid]["Private_Dirty"] for pid in rollups}
    tree_pss = sum(rollup["Pss"] for rollup in rollups.values())
    shown = {pid: {k: f"{rollups[pid][k] / MIB:.1f} MiB" for k in ("Rss", "Pss")} for pid in rollups}
    assert all(own[pid] < WORKER_OWN_BOUND for pid in workers), (own, shown)
    assert own[server.pid] < SUPERVISOR_OWN_BOUND, (own, shown)
    assert tree_pss < TREE_PSS_BOUND, shown
