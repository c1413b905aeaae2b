"""app/server.py `sweep_metrics_left`: the metrics directories a killed server left are removed at
the next start; a running server's, and anything else in the temporary directory, are not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.server import sweep_metrics_left


def _dead_pid() -> int:
    """A PID that was a process and is gone (reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)
    return child.pid


def test_only_the_directories_of_servers_that_are_gone_are_removed(tmp_path: Path) -> None:
    dead, alive, own = _dead_pid(), os.getppid(), os.getpid()
    for name in (
        f"ferry-metrics-{dead}-a1b2c3",
        f"ferry-metrics-{alive}-d4e5f6",
        f"ferry-metrics-{own}-g7h8",
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "counter_1.db").write_bytes(b"\0" * 16)
    (tmp_path / "ferry-metrics-12345678").mkdir()  # an older Ferry's name, no PID in it: kept
    (tmp_path / f"ferry-metrics-{dead}-file").write_text("a file, not a directory")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / f"ferry-metrics-{dead}-link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / f"other-{dead}-x").mkdir()

    removed = sweep_metrics_left(str(tmp_path))

    assert removed == sorted(
        [str(tmp_path / f"ferry-metrics-{dead}-a1b2c3"), str(tmp_path / f"ferry-metrics-{own}-g7h8")]
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [
            f"ferry-metrics-{alive}-d4e5f6",
            "ferry-metrics-12345678",
            f"ferry-metrics-{dead}-file",
            "elsewhere",
            f"ferry-metrics-{dead}-link",
            f"other-{dead}-x",
        ]
    )
    assert (tmp_path / f"ferry-metrics-{alive}-d4e5f6" / "counter_1.db").exists()
    assert (tmp_path / "elsewhere").is_dir()  # a link's target is never followed
