"""app/server.py's malloc thresholds: what each chunk size gets, and an operator's own MALLOC_*
variables left alone (the behaviour they buy is shown in tests/clients/test_request_memory.py)."""

from __future__ import annotations

import os

import pytest

from app import server

MiB = 1024**2


@pytest.mark.parametrize(
    ("chunk", "mmap", "trim"),
    [
        (4096, 4 * MiB, 32 * MiB),
        (1 * MiB, 4 * MiB, 32 * MiB),
        (4 * MiB, 16 * MiB, 32 * MiB),
        (16 * MiB, 32 * MiB, 128 * MiB),  # glibc's ceiling for the mmap threshold
        (256 * MiB, 32 * MiB, 2048 * MiB),
    ],
)
def test_thresholds_follow_the_chunk_size(chunk: int, mmap: int, trim: int) -> None:
    assert server.malloc_thresholds(chunk) == (mmap, trim)


def test_spawned_workers_get_the_thresholds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "environ", {})  # this process's own is left as it was
    server._keep_request_memory(MiB)
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(4 * MiB)
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == str(32 * MiB)


def test_an_operators_own_malloc_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "environ", {"MALLOC_TRIM_THRESHOLD_": "12345"})
    server._keep_request_memory(MiB)
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
