"""The IETF resumable-upload draft and tus-js-client against a real `ferry serve`: a PATCH whose
connection is cut mid-body keeps the bytes that arrived, and the upload resumes from HEAD's offset;
tus-js-client (npm, under Debian's Node) uploads in both its protocols (`tus-v1` and
`ietf-draft-05`), aborted part-way and resumed by its upload URL, to the right SHA-256.

tus-js-client is installed on first use into .cache/node/ (npm install --no-save; `make tools`
installs nodejs and npm).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PATIENCE, FerryServer, ServerFactory, wait_for
from tests.support.workers import exclusive

pytestmark = pytest.mark.clients

TOKEN = "draft-token"
DRAFT = {"Authorization": f"Bearer {TOKEN}", "Upload-Draft-Interop-Version": "8"}
REPO = Path(__file__).resolve().parents[2]
NODE_CACHE = REPO / ".cache" / "node"
SCRIPT = Path(__file__).parent / "node" / "tus_upload.js"
MiB = 1024**2


@pytest.fixture
def root(tmp_path: Path) -> Path:
    found = tmp_path / "root"
    found.mkdir()
    return found


def _repr_sha256(server: FerryServer, path: str) -> bytes | None:
    response = httpx.head(f"{server.url}/files/{path}", headers={"Want-Repr-Digest": "sha-256=10"})
    assert response.status_code == 200
    field = response.headers.get("repr-digest", "")
    return base64.b64decode(field.split("=:", 1)[1].rstrip(":")) if field.startswith("sha-256=:") else None


def _draft_offset(url: str) -> int:
    response = httpx.head(url, headers=DRAFT)
    assert response.status_code == 204, response.text
    assert response.headers["upload-complete"] == "?0"
    return int(response.headers["upload-offset"])


def test_a_cut_patch_is_resumed_from_heads_offset(ferry: ServerFactory, root: Path) -> None:
    server = ferry(root, "--write-token", TOKEN)
    data = os.urandom(3 * MiB + 777)
    created = httpx.put(
        f"{server.url}/files/in/cut.bin",
        headers={**DRAFT, "Upload-Complete": "?0", "Upload-Length": str(len(data))},
    )
    assert created.status_code == 201, created.text
    url = created.headers["location"]
    sent = MiB + 12345
    with socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE) as raw:
        path = httpx.URL(url).raw_path.decode()
        head = (
            f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Upload-Draft-Interop-Version: 8\r\nContent-Type: application/partial-upload\r\n"
            f"Upload-Offset: 0\r\nUpload-Complete: ?1\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        raw.sendall(head.encode() + data[:sent])
    # The server notices the cut and records what arrived (the client cannot know how much did).
    assert wait_for(lambda: _draft_offset(url) == sent)
    assert not (root / "in/cut.bin").exists()
    done = httpx.patch(
        url,
        headers={
            **DRAFT,
            "Content-Type": "application/partial-upload",
            "Upload-Offset": str(sent),
            "Upload-Complete": "?1",
        },
        content=data[sent:],
        timeout=PATIENCE,
    )
    assert done.status_code == 201, done.text
    assert done.headers["upload-complete"] == "?1" and done.headers["upload-offset"] == str(len(data))
    assert (root / "in/cut.bin").read_bytes() == data
    assert _repr_sha256(server, "in/cut.bin") == hashlib.sha256(data).digest()


@pytest.fixture(scope="session")
def tus_js() -> Path:
    """node_modules with tus-js-client 4 (installed once into .cache/node/)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed (make tools installs Debian's nodejs and npm)")
    modules = NODE_CACHE / "node_modules"
    with exclusive(NODE_CACHE):  # parallel workers (pytest -n): one installs, the others wait
        if not (modules / "tus-js-client" / "package.json").exists():
            subprocess.run(
                [
                    npm,
                    "install",
                    "--no-save",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                    str(NODE_CACHE),
                    "tus-js-client@4",
                ],
                check=True,
                timeout=10 * PATIENCE,
                capture_output=True,
            )
    return modules


def _line(process: subprocess.Popen[str]) -> dict[str, Any]:
    """The next JSON line the script prints (failing with its stderr if it ends first)."""
    assert process.stdout is not None
    deadline = time.monotonic() + 4 * PATIENCE
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if line:
                found: dict[str, Any] = json.loads(line)
                return found
            break
    process.kill()
    _, err = process.communicate(timeout=PATIENCE)
    raise AssertionError(f"tus-js-client said nothing more: {err}")


@pytest.mark.parametrize("protocol", ["tus-v1", "ietf-draft-05"])
def test_tus_js_client_resumes_an_aborted_upload(
    ferry: ServerFactory, root: Path, tmp_path: Path, tus_js: Path, protocol: str
) -> None:
    server = ferry(root, "--write-token", TOKEN)
    data = os.urandom(3 * MiB + 4321)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    if protocol == "tus-v1":
        endpoint, metadata, target = f"{server.url}/api/uploads/", {"path": "in/tus.bin"}, "in/tus.bin"
    else:
        endpoint, metadata, target = f"{server.url}/files/in/", {"filename": "draft.bin"}, "in/draft.bin"
    command = ["node", str(SCRIPT), endpoint, str(source), protocol, TOKEN, str(MiB), json.dumps(metadata)]
    env = {**os.environ, "NODE_PATH": str(tus_js)}
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with subprocess.Popen(command, text=True, env=env, **pipes) as process:  # type: ignore[call-overload]
        try:
            aborted = _line(process)
            url = aborted["url"]
            assert url.startswith(f"{server.url}/api/uploads/") and aborted["sent"] >= MiB
            assert not (root / target).exists()  # nothing at the target before the last byte
            process.stdin.write("resume\n")
            process.stdin.flush()
            done = _line(process)
            assert process.wait(timeout=PATIENCE) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=PATIENCE)
    assert done["done"] == url and 0 < done["from"] < len(data)  # resumed, not started over
    assert (root / target).read_bytes() == data
    assert _repr_sha256(server, target) == hashlib.sha256(data).digest()
