"""`python -m tests.load.run --quick` end to end: 200 connections for 8 s against a real `ferry
serve`, every check passing and the summary's key lines present. Marked `clients` (not `bench`): it
runs in `make test`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.load.stats import KINDS

pytestmark = pytest.mark.clients

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 150  # seconds: tree, start-up, 8 s of load, grace, the descriptor wait


def kind_rows(summary: str) -> dict[str, list[str]]:
    """The request table's rows by kind: "full" → [started, verified, aborted, cut, bad, errors, ...]."""
    rows: dict[str, list[str]] = {}
    for line in summary.splitlines():
        cells = line.split()
        if cells and cells[0] in KINDS and len(cells) >= 7 and cells[1].isdigit():
            rows[cells[0]] = cells[1:]
    return rows


def test_quick_load_passes_every_check(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tests.load.run", "--quick", "--data-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    summary = result.stdout
    assert result.returncode == 0, summary + result.stderr[-4000:]

    assert "Ferry load test: 200 connections" in summary
    for line in ("5xx: 0", "connection errors: 0 (", "failed checks: 0", "result: PASS"):
        assert re.search(rf"^{re.escape(line)}", summary, re.MULTILINE), line
    assert re.search(r"^peak RSS: [\d.]+ MiB summed over 2 worker\(s\)", summary, re.MULTILINE)
    assert re.search(
        r"^open fds: baseline \d+, peak \d+, after \d+ \(back to baseline", summary, re.MULTILINE
    )
    assert "FAIL" not in summary

    rows = kind_rows(summary)
    assert sorted(rows) == sorted(KINDS), summary
    for kind, (started, verified, aborted, _cut, bad, errors, *_) in rows.items():
        assert int(started) > 0, kind
        assert int(bad) == 0 and int(errors) == 0, kind
        assert int(verified) + int(aborted) > 0, kind
    assert int(rows["full"][1]) > 0 and int(rows["abort"][2]) > 0
    assert not list(tmp_path.glob("ferry-load-*")), "the temp dir outlived the run"
