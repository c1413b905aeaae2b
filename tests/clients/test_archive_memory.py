"""Memory of folder archives in a real `ferry serve`: bounded per archive, not by its bytes.

An archive's manifest and layout live as long as its response: the paths inside it and a few
integers per file (app/routes/archives.py, app/archives/), so the memory of one archive grows with
its file count, not its bytes, and FERRY_ARCHIVE_MAX_FILES bounds it: a zip then a tar of 100,000
files grew the worker by 48 MiB from a cold start (about 0.45 KiB per file: 22 MiB of manifest
objects, 8.5 MiB of ZIP names and CRC-32s, the rest allocator and SQLite pages), bounded below at
1 KiB per file. The bytes sent cost what a file download's do: a chunk and the write buffer per
connection, so four concurrent downloads of a 1 GiB archive grow the worker about as much as four
downloads of one 1 GiB file (measured: file 0, tar 0.2, zip 8.9 MiB for the four).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import FerryServer, ServerFactory, wait_for

pytestmark = pytest.mark.clients

KiB = 1024
MiB = 1024**2
GiB = 1024**3
FILES = 100_000
PER_FOLDER = 1_000
CONTENT = b"0123456789abcdef"  # every small file: one tar block of data, a short ZIP entry
# Measured about 0.45 KiB per file; a little over twice that, and far below holding the archive.
PER_FILE_BOUND = KiB
CHUNK = MiB  # FERRY_CHUNK_SIZE below
WRITE_BUFFER = 256 * KiB  # FERRY_WRITE_BUFFER's default
CONCURRENT = 4
SCAN_PATIENCE = 300.0  # indexing 100,000 files on a busy machine


@contextmanager
def peak_rss(server: FerryServer) -> Iterator[Callable[[], int]]:
    """Samples the server's RSS every 20 ms while the block runs; yields the peak so far."""
    samples = [server.rss_bytes()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            samples.append(server.rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: max(samples)
    finally:
        done.set()
        sampler.join()
        samples.append(server.rss_bytes())


def indexed_entries(server: FerryServer) -> int:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    match = re.search(r"^ferry_index_entries (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def curl_size(url: str) -> int:
    """Download `url` to /dev/null with curl; the body's size (C, so the client keeps up)."""
    result = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", url],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return int(result.stdout)


def length(url: str) -> int:
    response = httpx.head(url, timeout=120)
    assert response.status_code == 200, response.text
    return int(response.headers["content-length"])


# --- one archive of 100,000 files ----------------------------------------------------------------


@pytest.fixture(scope="module")
def many_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive-memory") / "root"
    for folder in range(FILES // PER_FOLDER):
        directory = root / "many" / f"d{folder:03d}"
        directory.mkdir(parents=True)
        for i in range(PER_FOLDER):
            (directory / f"file-{i:04d}.txt").write_bytes(CONTENT)
    return root


def test_an_archive_of_100000_files_costs_a_bounded_manifest(ferry: ServerFactory, many_files: Path) -> None:
    # No hashing: the hasher's own work on 100,000 files would be measured too. The ZIP is then
    # sent whole, its CRC-32s computed while it goes (the same manifest and layout either way).
    server = ferry(many_files, "--no-checksums")
    assert wait_for(lambda: indexed_entries(server) >= FILES, timeout=SCAN_PATIENCE)
    url = f"{server.url}/files/many/?archive="
    # Warm-up: a 1,000-file archive of each kind loads every code path and the executor.
    for kind in ("zip", "tar"):
        assert curl_size(f"{server.url}/files/many/d000/?archive={kind}") > PER_FOLDER * len(CONTENT)
    baseline = server.rss_bytes()

    with peak_rss(server) as peak:
        for kind in ("zip", "tar"):
            expected = length(url + kind)
            assert curl_size(url + kind) == expected
    growth = peak() - baseline

    assert length(url + "tar") == FILES * 1024 + 1024  # a header and a data block each, the end
    assert growth < FILES * PER_FILE_BOUND, f"RSS grew {growth / MiB:.1f} MiB from {baseline / MiB:.1f} MiB"


# --- four downloads of a 1 GiB archive -----------------------------------------------------------


def sparse(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.truncate(size)


def concurrent_growth(server: FerryServer, url: str) -> int:
    """How far the server's RSS rose above its level just before, during CONCURRENT downloads."""
    total = length(url)
    before = server.rss_bytes()
    with peak_rss(server) as peak, ThreadPoolExecutor(CONCURRENT) as pool:
        sizes = list(pool.map(lambda _: curl_size(url), range(CONCURRENT)))
    assert sizes == [total] * CONCURRENT
    return peak() - before


def test_four_downloads_of_a_1_gib_archive_cost_about_what_four_of_a_file_do(
    ferry: ServerFactory, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    folder = root / "folder"
    (folder / "small").mkdir(parents=True)
    big = (GiB - 64 * MiB) // 3
    for i in range(3):
        sparse(folder / f"big-{i}.bin", big)
    for i in range(64):  # 64 MiB in 1 MiB files, the rest of the GiB in the big ones
        (folder / "small" / f"{i:02d}.bin").write_bytes(
            os.urandom(MiB if i < 63 else GiB - 3 * big - 63 * MiB)
        )
    sparse(root / "one.bin", GiB)
    # No hashing: the ZIP goes the read path (its CRC-32s computed while sending), the tar sendfile.
    server = ferry(root, "--no-checksums", "--chunk-size", str(CHUNK))
    file_url, archive = f"{server.url}/files/one.bin", f"{server.url}/files/folder/?archive="
    assert length(archive + "tar") > GiB and length(archive + "zip") > GiB
    curl_size(file_url)  # warm-up: one download of each
    curl_size(archive + "tar")
    curl_size(archive + "zip")

    growth = {name: concurrent_growth(server, url) for name, url in
              (("file", file_url), ("tar", archive + "tar"), ("zip", archive + "zip"))}  # fmt: skip

    shown = ", ".join(f"{name} {value / MiB:.1f} MiB" for name, value in growth.items())
    per_download = 2 * CHUNK + WRITE_BUFFER  # a chunk read, the chunk gathered, the write buffer
    for kind in ("tar", "zip"):
        assert growth[kind] <= growth["file"] + CONCURRENT * per_download + 8 * MiB, shown
