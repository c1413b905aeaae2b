"""Fixtures of the security suite (ANCHORS.md §3): one shared tree and server pool per module.

Every test runs against a real `ferry serve`. Unless a test parametrizes `zero_copy` itself (where
the sendfile and the read paths differ), servers run on FERRY_ZERO_COPY=auto, the production
default, so each case is not paid for twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import FerryServer, ServerPool


@pytest.fixture
def zero_copy() -> str:
    return "auto"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    shared = ServerPool(tmp_path_factory.mktemp("security"))
    yield shared
    shared.stop()


@pytest.fixture
def served(pool: ServerPool, zero_copy: str) -> Callable[..., FerryServer]:
    """served(*flags): the pool's server for these flags, started on first use."""

    def get(*flags: str) -> FerryServer:
        return pool.get(zero_copy, *flags)

    return get
