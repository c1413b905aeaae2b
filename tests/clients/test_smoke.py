from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.support.servers import BOTH_TRANSFER_PATHS

pytestmark = pytest.mark.clients


@BOTH_TRANSFER_PATHS
def test_serve_answers_healthz_and_a_download(ferry: ServerFactory, storage_tree: Path) -> None:
    server = ferry(storage_tree)
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    response = httpx.get(f"{server.url}/files/hello.txt")
    assert response.status_code == 200
    assert response.content == b"hello, ferry\n"
