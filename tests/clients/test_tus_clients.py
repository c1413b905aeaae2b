"""tus 1.0 against a real `ferry serve`: tuspy (the PyPI tus client) interrupted with `stop_at`
and resumed with `url=`, in the same server and after a restart; and the server SIGKILLed in the
middle of a PATCH, then restarted: the offset is one it recorded, the bytes past it are dropped,
and the upload completes to the right SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
from tusclient import client as tus_client
from tusclient.uploader.uploader import Uploader

from app.storage.resumable import CHECKPOINT_BYTES
from tests.conftest import PATIENCE, FerryServer, ServerFactory, wait_for

pytestmark = pytest.mark.clients

MiB = 1024**2
TOKEN = "tus-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TUS = {**AUTH, "Tus-Resumable": "1.0.0"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    found = tmp_path / "root"
    found.mkdir()
    return found


@pytest.fixture
def source(tmp_path: Path) -> Iterator[BinaryIO]:
    path = tmp_path / "source.bin"
    path.write_bytes(os.urandom(5 * MiB + 12345))
    with path.open("rb") as stream:
        yield stream


def _repr_digest(server: FerryServer, path: str) -> bytes | None:
    """The SHA-256 a download says the file has (the index's: set by the upload itself)."""
    response = httpx.head(f"{server.url}/files/{path}", headers={"Want-Repr-Digest": "sha-256=10"})
    assert response.status_code == 200
    field = response.headers.get("repr-digest", "")
    return base64.b64decode(field.split("=:", 1)[1].rstrip(":")) if field.startswith("sha-256=:") else None


def _uploader(server: FerryServer, source: BinaryIO, url: str | None = None) -> Uploader:
    """tuspy with a stream of ours (with `file_path=` it leaves descriptors open), 1 MiB PATCHes,
    each with its Upload-Checksum."""
    tus = tus_client.TusClient(f"{server.url}/api/uploads/", headers=AUTH)
    return tus.uploader(
        file_stream=source, url=url, chunk_size=MiB, metadata={"path": "in/big.bin"}, upload_checksum=True
    )


def test_tuspy_stops_and_resumes_in_the_same_server(
    ferry: ServerFactory, root: Path, source: BinaryIO
) -> None:
    server = ferry(root, "--write-token", TOKEN)
    first = _uploader(server, source)
    first.upload(stop_at=2 * MiB)
    assert first.offset == 2 * MiB and not (root / "in/big.bin").exists()
    resumed = _uploader(server, source, url=first.url)
    assert resumed.offset == 2 * MiB  # from HEAD
    resumed.upload()
    source.seek(0)
    data = source.read()
    assert (root / "in/big.bin").read_bytes() == data
    assert _repr_digest(server, "in/big.bin") == hashlib.sha256(data).digest()


def test_tuspy_resumes_after_a_server_restart(ferry: ServerFactory, root: Path, source: BinaryIO) -> None:
    server = ferry(root, "--write-token", TOKEN)
    first = _uploader(server, source)
    first.upload(stop_at=3 * MiB)
    server.stop()
    assert first.url is not None
    again = ferry(root, "--write-token", TOKEN)  # the same index (the working directory's)
    resumed = _uploader(again, source, url=first.url.replace(server.url, again.url))
    assert resumed.offset == 3 * MiB
    resumed.upload()
    source.seek(0)
    data = source.read()
    assert (root / "in/big.bin").read_bytes() == data
    assert _repr_digest(again, "in/big.bin") == hashlib.sha256(data).digest()


def _head_offset(server: FerryServer, url: str) -> int:
    response = httpx.head(url, headers=TUS)
    assert response.status_code == 200, response.text
    return int(response.headers["upload-offset"])


def test_sigkill_mid_patch_keeps_the_recorded_offset(ferry: ServerFactory, root: Path) -> None:
    data = os.urandom(CHECKPOINT_BYTES + 8 * MiB)
    server = ferry(root, "--write-token", TOKEN)
    created = httpx.post(
        f"{server.url}/api/uploads/",
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": "path a2lsbGVkLmJpbg=="},
    )
    assert created.status_code == 201
    url = created.headers["location"]
    path = url.removeprefix(server.url)
    first = httpx.patch(
        url,
        headers={**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
        content=data[:MiB],
    )
    assert first.status_code == 204
    # A PATCH for everything else that sends past the next checkpoint, then stalls: the server is
    # killed while it waits for the rest.
    sent = CHECKPOINT_BYTES + 2 * MiB
    with socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE) as sock:
        head = (
            f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {MiB}\r\nContent-Length: {len(data) - MiB}\r\n\r\n"
        )
        sock.sendall(head.encode() + data[MiB : MiB + sent])
        # Recorded at the first write boundary past the checkpoint (writes are CHUNK_SIZE or more).
        assert wait_for(lambda: _head_offset(server, url) > MiB, 4 * PATIENCE)
        recorded = _head_offset(server, url)
        assert MiB + CHECKPOINT_BYTES <= recorded <= MiB + sent
        meanwhile = httpx.patch(  # one append at a time: a second PATCH is refused while it runs
            url,
            headers={
                **TUS,
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": str(recorded),
            },
            content=b"x",
        )
        assert meanwhile.status_code == 409 and "another request is appending" in meanwhile.text
        server.process.kill()
        server.process.wait(timeout=PATIENCE)
    temps = [p for p in root.iterdir() if p.name.startswith(".ferry-upload-")]
    assert len(temps) == 1 and temps[0].stat().st_size >= recorded  # bytes past it, unacknowledged

    again = ferry(root, "--write-token", TOKEN)
    url = url.replace(server.url, again.url)
    assert _head_offset(again, url) == recorded
    stale = httpx.patch(  # a client that believes more arrived is told where to resume
        url,
        headers={**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(MiB + sent)},
        content=data[MiB + sent :],
    )
    assert stale.status_code == 409
    rest = httpx.patch(
        url,
        headers={**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(recorded)},
        content=data[recorded:],
        timeout=4 * PATIENCE,
    )
    assert rest.status_code == 204 and rest.headers["upload-offset"] == str(len(data))
    assert hashlib.sha256((root / "killed.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert _repr_digest(again, "killed.bin") == hashlib.sha256(data).digest()
    assert [p for p in root.iterdir() if p.name.startswith(".ferry-upload-")] == []


def test_a_stalled_patch_is_cut_by_the_body_timeout_and_its_bytes_kept(
    ferry: ServerFactory, root: Path
) -> None:
    data = os.urandom(6 * MiB)
    server = ferry(root, "--write-token", TOKEN, "--body-timeout", "1")
    created = httpx.post(
        f"{server.url}/api/uploads/",
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": "path c3RhbGxlZC5iaW4="},
    )
    url = created.headers["location"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=4 * PATIENCE) as sock:
        head = (
            f"PATCH {url.removeprefix(server.url)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {TOKEN}\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data[: 2 * MiB])  # then nothing: the server cuts it
        assert wait_for(lambda: _head_offset(server, url) == 2 * MiB, 4 * PATIENCE)
    rest = httpx.patch(
        url,
        headers={**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(2 * MiB)},
        content=data[2 * MiB :],
        timeout=4 * PATIENCE,
    )
    assert rest.status_code == 204
    assert (root / "stalled.bin").read_bytes() == data
