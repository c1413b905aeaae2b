"""Fixtures of the security suite (ANCHORS.md §3): one shared tree and server pool per module.

Every test runs against a real `ferry serve`. Unless a test parametrizes `zero_copy` itself (where
the sendfile and the read paths differ), servers run on FERRY_ZERO_COPY=auto, the production
default, so each case is not paid for twice.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import FerryServer, ServerPool
from tests.support.servers import module_pool

pool = module_pool("security")


@pytest.fixture
def served(pool: ServerPool, zero_copy: str) -> Callable[..., FerryServer]:
    """served(*flags): the pool's server for these flags, started on first use."""

    def get(*flags: str) -> FerryServer:
        return pool.get(zero_copy, *flags)

    return get
