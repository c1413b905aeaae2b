"""`python -m tests.bench.run --quick` end to end: one table row per measure, with numeric Ferry
and nginx figures, on stdout and in the --output file; the uploads' rows (nginx's WebDAV PUT, or
Ferry alone where nginx has no dav module); the index table at 2,000 files. Marked `clients` (not
`bench`): it runs in `make test`. The S3 section, on a `weed mini` the bench starts itself: every
figure through Ferry and directly, with a ratio; the PUT through Ferry "not measured" while Ferry
answers 405 to it. The archive section: the one file, the zip and the tar each with a figure, and
each archive's ratio to the file (none for the memory growth).
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
# (5c): server CPU per request during (5); (8a)-(8d): the whole process tree's RSS and PSS, idle
# and during (3).
DOWNLOAD_KEYS = ["1", "2", "3", "4", "5", "5c", "5n", "6", "7", "8", "8a", "8b", "8c", "8d", "9"]
UPLOAD_KEYS = ["10", "11", "12"]
HASH_RATE_KEYS = ["13", "14"]
HASH_SERVING_KEYS = ["15", "16", "17"]
S3_COMPARED_KEYS = ["18", "19", "20", "21"]  # through Ferry and directly, with a ratio
S3_PUT_KEY, S3_RSS_KEY = "22", "23"
S3_TITLE = "S3: Ferry over SeaweedFS against SeaweedFS directly, 8 MiB"
TUS_KEY = "28"  # the resumable upload in PATCHes: Ferry alone
ARCHIVE_KEYS, ARCHIVE_RSS_KEY = ["24", "25", "27"], "26"  # with ratios to the file; the growth without
ARCHIVE_TITLE = "Folder archives: a 8 MiB folder as zip and tar against the same bytes as one file"
INDEX_FILES = 2_000  # --quick
# The index table's rows, by the start of their label.
INDEX_ROWS = [
    "start-up scan, as Ferry logs it (s)",
    "start-up scan, wall time",
    "restart with that index: scan",
    "restart: wall time",
    "index on disk",
    "server RSS after the scan",
    "listing: first page",
    "listing: its last page",
    'search "0001086"',
    'search "f00"',
    'search "99"',
    'search "zq"',
    "server peak RSS",
    "for context: `find DIR -type f \\| wc -l`",
    "for context: `find DIR -type f -printf",
]
_NUMBER = re.compile(r"^\d[\d,]*(\.\d+)?")
_MISSING = [tool for tool in ("nginx", "wrk", "curl") if find_tool(tool) is None]


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The comparison tables' rows by measure key: "(3) ..." → its cells."""
    rows: dict[str, list[str]] = {}
    for line in markdown.splitlines():
        match = re.match(r"^\| \((\d+[a-z]?)\) ", line)
        if match:
            rows[match.group(1)] = cells(line)
    return rows


def section_rows(markdown: str, title: str) -> list[list[str]]:
    """The rows of the table under `## title`, header and rule left out."""
    lines = markdown.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0].splitlines()
    table = [line for line in lines if line.startswith("| ")]
    return [cells(line) for line in table[2:]]


def key_order(key: str) -> tuple[int, str]:
    """ "8a" after "8", before "9"."""
    digits = key.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(digits), key[len(digits) :]


def number(cell: str) -> float:
    match = _NUMBER.match(cell)
    assert match, f"not a figure: {cell!r}"
    return float(match.group(0).replace(",", ""))


def test_quick_bench_reports_every_measure_for_ferry_and_nginx(tmp_path: Path) -> None:
    assert not _MISSING, f"missing {_MISSING}: `make bench-tools` (run by `make test`) installs them"
    output = tmp_path / "latest.md"
    command = [sys.executable, "-m", "tests.bench.run", "--quick", "--output", str(output)]
    command += ["--data-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=360, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = result.stdout

    rows = table_rows(report)
    expected = DOWNLOAD_KEYS + UPLOAD_KEYS + HASH_RATE_KEYS + HASH_SERVING_KEYS + S3_COMPARED_KEYS
    archive_keys = sorted([*ARCHIVE_KEYS, ARCHIVE_RSS_KEY], key=int)
    assert sorted(rows, key=key_order) == [*expected, S3_PUT_KEY, S3_RSS_KEY, *archive_keys, TUS_KEY], report
    measure, ferry, _nginx, _ratio, target = rows[TUS_KEY]
    assert number(ferry) > 0 and "(10)" in target, measure
    for key in DOWNLOAD_KEYS:
        measure, ferry, nginx, ratio, _target = rows[key]
        assert number(ferry) > 0, measure
        assert number(nginx) > 0, measure
        assert re.search(r"\(tcp_nopush (on|off)\)", nginx), measure
        assert number(ratio) > 0, measure
    for key in UPLOAD_KEYS:
        measure, ferry, nginx, ratio, _target = rows[key]
        assert number(ferry) > 0, measure
        if nginx == "— (nginx: no dav module in nginx-light)":
            assert ratio == "n/a", measure
        else:
            assert number(nginx) > 0 and nginx.endswith("(dav)"), measure
            assert number(ratio) > 0, measure

    for key in HASH_RATE_KEYS:
        measure, ferry, *rest = rows[key]
        assert number(ferry) > 0 and rest == ["—"] * 5, measure
    for key in HASH_SERVING_KEYS:
        measure, busy, off, ratio, target, nginx, versus = rows[key]
        assert min(number(busy), number(off), number(nginx), number(ratio), number(versus)) > 0, measure
        assert target.startswith("≥ 0.90 ") and target.endswith(("met", "MISSED")), measure
    hashing = section_rows(report, "Integrity: background hashing")
    assert [row[0].split(")")[0] + ")" for row in hashing] == [
        f"({k})" for k in HASH_RATE_KEYS + HASH_SERVING_KEYS
    ]
    # The hasher pauses while transfers are in flight: what it read during each measure is shown.
    assert "hashed during it:" in report

    s3 = section_rows(report, S3_TITLE)
    assert [row[0].split(")")[0] + ")" for row in s3] == [
        f"({k})" for k in [*S3_COMPARED_KEYS, S3_PUT_KEY, S3_RSS_KEY]
    ]
    for key in S3_COMPARED_KEYS:
        measure, ferry, direct, ratio, _target = rows[key]
        assert min(number(ferry), number(direct), number(ratio)) > 0, measure
    measure, ferry, direct, ratio, _target = rows[S3_PUT_KEY]
    assert number(direct) > 0, measure
    if ferry == "not measured":  # no uploads into a bucket yet: said so, not failed
        assert ratio == "n/a" and "(22) not measured through Ferry" in report, measure
    else:
        assert number(ferry) > 0 and number(ratio) > 0, measure
    measure, ferry, direct, ratio, _target = rows[S3_RSS_KEY]
    assert number(ferry) > 0 and (direct, ratio) == ("—", "n/a"), measure

    archive = section_rows(report, ARCHIVE_TITLE)
    assert [row[0].split(")")[0] + ")" for row in archive] == [f"({k})" for k in archive_keys]
    for key in ARCHIVE_KEYS:
        measure, file, zip_, zip_ratio, tar, tar_ratio, target = rows[key]
        assert min(number(file), number(zip_), number(zip_ratio), number(tar), number(tar_ratio)) > 0, measure
        assert target.endswith(("met", "MISSED")), measure
    measure, file, zip_, zip_ratio, tar, tar_ratio, _target = rows[ARCHIVE_RSS_KEY]
    assert min(number(file), number(zip_), number(tar)) >= 0 and zip_ratio == tar_ratio == "—", measure

    index = section_rows(report, f"Index at {INDEX_FILES:,} files")
    assert len(index) == len(INDEX_ROWS), index
    for row, label in zip(index, INDEX_ROWS, strict=True):
        measure, ferry, detail = row
        assert measure.startswith(label), (measure, label)
        assert number(ferry) >= 0, measure
        if measure.endswith("(ms)") or measure.endswith("(MiB)"):
            assert number(ferry) > 0, measure
    by_label = {row[0]: row[2] for row in index}
    scan = next(detail for label, detail in by_label.items() if label.startswith(INDEX_ROWS[0]))
    # ROOT, d000, d000/e00 and d000/e01; the entries are the files and the three below ROOT.
    assert scan == "4 directories, 4 read from disk; 2,003 entries indexed", scan
    restart = next(detail for label, detail in by_label.items() if label.startswith(INDEX_ROWS[2]))
    assert restart == "4 directories, 0 read from disk", restart

    assert output.read_text() in report
    assert not list(tmp_path.glob("ferry-bench-*")), "the temp dir outlived the run"
    assert (tmp_path / f"ferry-index-tree-{INDEX_FILES}" / "complete").exists(), "the tree is kept"


def test_a_server_the_bench_did_not_stop_is_stopped_when_it_exits(tmp_path: Path) -> None:
    """A bench that fails between a server's start and the step that would stop it (as one did
    when an nginx could not start beside two running Ferry servers) leaves nothing running."""
    script = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from tests.bench.servers import Server\n"
        "process = subprocess.Popen(['sleep', '600'], start_new_session=True, stdout=-3, stderr=-3)\n"
        f"Server('left', 'ferry', process, 0, Path({str(tmp_path / 'log')!r}))\n"
        "print(process.pid, flush=True)\n"
        "raise SystemExit('the bench failed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1 and "the bench failed" in done.stderr, done.stderr
    pid = int(done.stdout.split()[0])
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z", "X"), f"the server's process {pid} is still running ({state})"


def test_the_upload_section_alone_lists_every_run_of_ferry(tmp_path: Path) -> None:
    """`--uploads-only` prints each run's figure per server, Ferry's as well as nginx's."""
    output = tmp_path / "uploads.md"
    command = [sys.executable, "-m", "tests.bench.run", "--quick", "--uploads-only", "--output", str(output)]
    command += ["--data-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = output.read_text().split("## Every run", 1)[1]
    for key in [*UPLOAD_KEYS, TUS_KEY]:
        block = runs.split(f"- ({key}) ", 1)[1].split("\n- (", 1)[0]
        assert re.search(r"^  - Ferry: \d", block, re.MULTILINE), (key, block)
