"""Memory between requests on a real `ferry serve`: a series of uploads reuses the buffers freed
by the one before instead of faulting fresh pages in for each (app/server.py
`_keep_request_memory`: glibc's malloc otherwise gives the top of its heap back after every
request)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import FerryServer, start_server

MiB = 1024**2
TOKEN = "request-memory-token"


@pytest.fixture
def writable(tmp_path: Path) -> Iterator[FerryServer]:
    root = tmp_path / "root"
    root.mkdir()
    server = start_server(root, tmp_path, "--write-token", TOKEN, "--no-fsync")
    try:
        yield server
    finally:
        server.stop()


def _minor_faults(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[7])  # field 10 of proc(5): minflt


def test_a_series_of_uploads_does_not_fault_its_buffers_in_again(writable: FerryServer) -> None:
    body = os.urandom(8 * MiB)
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=writable.url, headers=headers, timeout=60) as client:

        def put(i: int) -> None:
            assert client.put(f"/files/series/{i % 2}.bin", content=body).status_code in (200, 201, 204)

        for i in range(4):  # the heap grows to what one upload needs
            put(i)
        before = _minor_faults(writable.pid)
        for i in range(12):
            put(i)
        faults = _minor_faults(writable.pid) - before
    # Faulting an upload's buffers in again costs about 8 MiB / 4 KiB = 2,048 faults per request
    # (24,000 for the twelve); kept, the twelve take a few hundred at most.
    assert faults < 4000, faults
