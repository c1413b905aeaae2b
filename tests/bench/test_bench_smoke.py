"""`python -m tests.bench.run --quick` end to end: one table row per measure, with numeric Ferry
and nginx figures, on stdout and in the --output file. Marked `clients` (not `bench`): it runs
in `make test`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.system import find_tool

pytestmark = pytest.mark.clients

REPO = Path(__file__).resolve().parents[2]
MEASURE_KEYS = [str(key) for key in range(1, 10)]
_NUMBER = re.compile(r"^\d[\d,]*(\.\d+)?")
_MISSING = [tool for tool in ("nginx", "wrk", "curl") if find_tool(tool) is None]


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The comparison table's rows by measure key: "(3) ..." → its cells."""
    rows: dict[str, list[str]] = {}
    for line in markdown.splitlines():
        match = re.match(r"^\| \((\d)\) ", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in line.strip("|").split(" | ")]
    return rows


def number(cell: str) -> float:
    match = _NUMBER.match(cell)
    assert match, f"not a figure: {cell!r}"
    return float(match.group(0).replace(",", ""))


def test_quick_bench_reports_every_measure_for_ferry_and_nginx(tmp_path: Path) -> None:
    assert not _MISSING, f"missing {_MISSING}: `make bench-tools` (run by `make test`) installs them"
    output = tmp_path / "latest.md"
    command = [sys.executable, "-m", "tests.bench.run", "--quick", "--output", str(output)]
    command += ["--data-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-4000:]

    rows = table_rows(result.stdout)
    assert sorted(rows) == MEASURE_KEYS, result.stdout
    for cells in rows.values():
        measure, ferry, nginx, ratio, _target = cells
        assert number(ferry) > 0, measure
        assert number(nginx) > 0, measure
        assert re.search(r"\(tcp_nopush (on|off)\)", nginx), measure
        assert number(ratio) > 0, measure
    assert output.read_text() in result.stdout
    assert not list(tmp_path.glob("ferry-bench-*")), "the temp dir outlived the run"
