"""tus 1.0 at /api/uploads/ in-process: the protocol's sequences (create, HEAD, PATCH in pieces,
offset mismatch, checksum mismatch, termination, expiry, creation-with-upload, deferred length),
who may see an upload, paths the write gate refuses, and the target appearing only after the last
byte, with the right SHA-256 in the index. Real clients and crashes: tests/clients/test_tus_clients.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.storage import resumable
from app.storage.paths import TEMP_PREFIX
from app.storage.values import identity
from tests.support.inprocess import AppPool, InProcessServer

TOKEN = "write-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Tus-Resumable": "1.0.0"}
PATCH = {**AUTH, "Content-Type": "application/offset+octet-stream"}


def _meta(**fields: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in fields.items())


def _empty_root(base: Path) -> Path:
    root = base / "root"
    root.mkdir()
    return root


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[AppPool]:
    pool = AppPool(tmp_path, tree=_empty_root)
    yield pool
    pool.stop()


@pytest.fixture
def server(apps: AppPool) -> InProcessServer:
    return apps.get("--write-token", TOKEN, "--max-upload-size", "10MiB")


def _temps(root: Path) -> list[str]:
    return [n for _, _, names in os.walk(root) for n in names if n.startswith(TEMP_PREFIX)]


def _create(server: InProcessServer, length: int, headers: dict[str, str] | None = None, **meta: str) -> str:
    response = server.client.post(
        f"{server.url}/api/uploads/",
        headers={**AUTH, "Upload-Length": str(length), "Upload-Metadata": _meta(**meta), **(headers or {})},
    )
    assert response.status_code == 201, response.text
    assert response.headers["tus-resumable"] == "1.0.0"
    location = response.headers["location"]
    assert location.startswith(f"{server.url}/api/uploads/")
    return location


def _patch(server: InProcessServer, url: str, offset: int, body: bytes, **extra: str) -> httpx.Response:
    return server.client.patch(url, headers={**PATCH, "Upload-Offset": str(offset), **extra}, content=body)


def _offset(server: InProcessServer, url: str) -> int:
    response = server.client.head(url, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    return int(response.headers["upload-offset"])


def test_options_announce_the_protocol(server: InProcessServer) -> None:
    response = server.client.options(f"{server.url}/api/uploads/")
    assert response.status_code == 204
    assert response.headers["tus-version"] == "1.0.0"
    assert response.headers["tus-max-size"] == str(10 * 1024**2)
    extensions = response.headers["tus-extension"].split(",")
    assert {"creation", "creation-with-upload", "termination", "expiration", "checksum"} <= set(extensions)
    assert "sha256" in response.headers["tus-checksum-algorithm"]


def test_patches_in_pieces_publish_the_file_once_complete(server: InProcessServer) -> None:
    data = os.urandom(200_000)
    url = _create(server, len(data), path="docs/report.bin")
    head = server.client.head(url, headers=AUTH)
    assert head.headers["upload-offset"] == "0" and head.headers["upload-length"] == str(len(data))
    assert head.headers["upload-metadata"] == _meta(path="docs/report.bin")
    assert "upload-expires" in head.headers
    for start in range(0, len(data), 64_000):
        assert not (server.root / "docs/report.bin").exists()
        response = _patch(server, url, start, data[start : start + 64_000])
        assert response.status_code == 204, response.text
        assert int(response.headers["upload-offset"]) == min(start + 64_000, len(data))
    target = server.root / "docs/report.bin"
    assert target.read_bytes() == data and _temps(server.root) == []
    digest = server.app.services.index.digest(identity(target.stat()))
    assert digest is not None and digest.sha256 == hashlib.sha256(data).digest()
    listed = server.client.get(f"{server.url}/files/docs/", params={"format": "json"}).json()
    assert [e["name"] for e in listed["entries"]] == ["report.bin"]
    assert server.client.head(url, headers=AUTH).status_code == 404  # done: the upload is gone


def test_a_wrong_offset_is_409_and_nothing_is_written(server: InProcessServer) -> None:
    url = _create(server, 10, path="a.bin")
    assert _patch(server, url, 0, b"01234").status_code == 204
    for wrong in (0, 3, 7):
        response = _patch(server, url, wrong, b"56789")
        assert response.status_code == 409 and response.headers["tus-resumable"] == "1.0.0"
    assert _offset(server, url) == 5
    assert _patch(server, url, 5, b"56789").status_code == 204
    assert (server.root / "a.bin").read_bytes() == b"0123456789"


def test_a_checksum_mismatch_is_460_and_its_bytes_discarded(server: InProcessServer) -> None:
    url = _create(server, 8, path="c.bin")
    wrong = "sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    assert _patch(server, url, 0, b"abcd", **{"Upload-Checksum": wrong}).status_code == 460
    assert _offset(server, url) == 0
    bad_algorithm = _patch(server, url, 0, b"abcd", **{"Upload-Checksum": "crc32 AAAAAA=="})
    assert bad_algorithm.status_code == 400
    right = "sha256 " + base64.b64encode(hashlib.sha256(b"abcd").digest()).decode()
    assert _patch(server, url, 0, b"abcd", **{"Upload-Checksum": right}).status_code == 204
    assert _patch(server, url, 4, b"efgh").status_code == 204
    assert (server.root / "c.bin").read_bytes() == b"abcdefgh"


def test_the_creations_preconditions_hold_again_at_the_last_byte(server: InProcessServer) -> None:
    url = _create(server, 8, {"If-None-Match": "*"}, path="race.txt")
    assert _patch(server, url, 0, b"abcd").status_code == 204
    (server.root / "race.txt").write_bytes(b"someone else's")  # stored meanwhile, another way
    response = _patch(server, url, 4, b"efgh")
    assert response.status_code == 412
    assert (server.root / "race.txt").read_bytes() == b"someone else's"
    assert server.client.head(url, headers=AUTH).status_code == 404 and _temps(server.root) == []


def test_termination_removes_the_upload(server: InProcessServer) -> None:
    url = _create(server, 10, path="t.bin")
    assert _patch(server, url, 0, b"01234").status_code == 204
    response = server.client.delete(url, headers=AUTH)
    assert response.status_code == 204
    assert server.client.head(url, headers=AUTH).status_code == 404
    assert _patch(server, url, 5, b"56789").status_code == 404
    assert _temps(server.root) == [] and not (server.root / "t.bin").exists()


def test_expired_uploads_are_gone_and_swept(server: InProcessServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = _create(server, 10, path="e.bin")
    assert _patch(server, url, 0, b"01234").status_code == 204
    later = resumable.wall_clock() + 86400 + 1  # FERRY_UPLOAD_EXPIRY's default, passed
    monkeypatch.setattr(resumable, "wall_clock", lambda: later)
    assert server.client.head(url, headers=AUTH).status_code == 404
    assert _patch(server, url, 5, b"56789").status_code == 404
    assert _temps(server.root)  # until the sweep
    assert resumable.expire_uploads(server.app.services.index, later) == 1
    assert _temps(server.root) == []


def test_creation_with_upload_and_an_empty_upload(server: InProcessServer) -> None:
    response = server.client.post(
        f"{server.url}/api/uploads/",
        headers={**PATCH, "Upload-Length": "10", "Upload-Metadata": _meta(filename="w.txt", folder="in/")},
        content=b"01234",
    )
    assert response.status_code == 201 and response.headers["upload-offset"] == "5"
    assert _patch(server, response.headers["location"], 5, b"56789").status_code == 204
    assert (server.root / "in/w.txt").read_bytes() == b"0123456789"
    _create(server, 0, path="empty.txt")
    assert (server.root / "empty.txt").read_bytes() == b""


def test_a_deferred_length_is_declared_by_a_patch(server: InProcessServer) -> None:
    response = server.client.post(
        f"{server.url}/api/uploads/",
        headers={**AUTH, "Upload-Defer-Length": "1", "Upload-Metadata": _meta(path="d.bin")},
    )
    assert response.status_code == 201
    url = response.headers["location"]
    assert server.client.head(url, headers=AUTH).headers["upload-defer-length"] == "1"
    assert _patch(server, url, 0, b"0123").status_code == 204
    assert _patch(server, url, 4, b"4567", **{"Upload-Length": "8"}).status_code == 204
    assert (server.root / "d.bin").read_bytes() == b"01234567"


def test_only_the_creating_token_sees_an_upload(apps: AppPool) -> None:
    server = apps.get("--write-token", TOKEN, "--read-tokens", "reader")
    url = _create(server, 10, path="mine.bin")
    for authorization in ("Bearer reader", "Bearer wrong", None):
        headers = {"Tus-Resumable": "1.0.0"}
        if authorization:
            headers["Authorization"] = authorization
        assert server.client.head(url, headers=headers).status_code == 401
        assert server.client.post(f"{server.url}/api/uploads/", headers=headers).status_code == 401
    # (Another token's uploads answer 404, like unknown ones: tests/integration/test_resumable_core.py.)
    assert server.client.head(f"{server.url}/api/uploads/unknown", headers=AUTH).status_code == 404


def test_refusals_before_any_byte(apps: AppPool, server: InProcessServer) -> None:
    post = f"{server.url}/api/uploads/"

    def create(headers: dict[str, str]) -> int:
        return server.client.post(post, headers=headers).status_code

    assert create({**AUTH, "Upload-Length": "1", "Upload-Metadata": _meta(path="../out.bin")}) == 404
    assert create({**AUTH, "Upload-Length": "1", "Upload-Metadata": _meta(path=".hidden/x")}) == 404
    assert create({**AUTH, "Upload-Length": "1", "Upload-Metadata": _meta(path="a" * 300)}) == 414
    assert create({**AUTH, "Upload-Length": str(11 * 1024**2), "Upload-Metadata": _meta(path="big")}) == 413
    assert create({**AUTH, "Upload-Length": "1"}) == 400  # no path
    assert create({**AUTH, "Upload-Metadata": _meta(path="x")}) == 400  # no length
    old = {**AUTH, "Tus-Resumable": "0.2.2", "Upload-Length": "1", "Upload-Metadata": _meta(path="x")}
    response = server.client.post(post, headers=old)
    assert response.status_code == 412 and response.headers["tus-version"] == "1.0.0"
    (server.root / "taken.txt").write_bytes(b"kept")
    taken = {**AUTH, "Upload-Length": "1", "Upload-Metadata": _meta(path="taken.txt"), "If-None-Match": "*"}
    assert create(taken) == 412
    url = _create(server, 4, path="p.bin")
    assert (
        server.client.patch(url, headers={**AUTH, "Upload-Offset": "0"}, content=b"abcd").status_code == 415
    )
    assert _patch(server, url, 0, b"abcdefgh").status_code == 413  # past the declared length
    assert _offset(server, url) == 0
    readonly = apps.get()
    assert readonly.client.post(f"{readonly.url}/api/uploads/", headers=AUTH).status_code == 405
    assert len(_temps(server.root)) == 1  # p.bin's: nothing refused left a file behind


def _counter(server: InProcessServer, line: str) -> float:
    text = server.client.get(f"{server.url}/metrics").text
    found = [ln for ln in text.splitlines() if ln.startswith(line + " ")]
    return float(found[0].split()[-1]) if found else 0.0


def test_metrics_count_uploads_and_bytes(server: InProcessServer) -> None:
    names = {
        result: f'ferry_resumable_uploads_total{{result="{result}"}}'
        for result in ("started", "completed", "aborted")
    }
    before = {result: _counter(server, name) for result, name in names.items()}
    bytes_before = _counter(server, "ferry_resumable_bytes_total")
    done = _create(server, 6, path="m1.bin")
    assert _patch(server, done, 0, b"abc").status_code == 204
    assert _patch(server, done, 3, b"def").status_code == 204
    dropped = _create(server, 6, path="m2.bin")
    assert server.client.delete(dropped, headers=AUTH).status_code == 204
    after = {result: _counter(server, name) for result, name in names.items()}
    assert {k: after[k] - before[k] for k in names} == {"started": 2, "completed": 1, "aborted": 1}
    assert _counter(server, "ferry_resumable_bytes_total") - bytes_before == 6


def test_open_uploads_per_token_are_capped(server: InProcessServer) -> None:
    urls = [_create(server, 1, path=f"cap/{i}.bin") for i in range(100)]
    response = server.client.post(
        f"{server.url}/api/uploads/",
        headers={**AUTH, "Upload-Length": "1", "Upload-Metadata": _meta(path="cap/over.bin")},
    )
    assert response.status_code == 429 and "retry-after" in response.headers
    assert server.client.delete(urls[0], headers=AUTH).status_code == 204
    _create(server, 1, path="cap/again.bin")  # room again once one ends


def test_a_length_the_disk_cannot_hold_is_507(apps: AppPool) -> None:
    server = apps.get("--write-token", TOKEN, "--max-upload-size", str(2**62))
    response = server.client.post(
        f"{server.url}/api/uploads/",
        headers={**AUTH, "Upload-Length": str(2**62), "Upload-Metadata": _meta(path="huge.bin")},
    )
    assert response.status_code == 507 and response.headers["tus-resumable"] == "1.0.0"
    assert _temps(server.root) == []


def test_cors_lets_a_page_resume(apps: AppPool) -> None:
    server = apps.get("--write-token", TOKEN, "--cors-origins", "https://app.example")
    origin = {"Origin": "https://app.example"}
    preflight = server.client.options(
        f"{server.url}/api/uploads/x",
        headers={
            **origin,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "upload-offset, tus-resumable",
        },
    )
    assert "PATCH" in preflight.headers["access-control-allow-methods"]
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "upload-offset" in allowed and "tus-resumable" in allowed and "upload-metadata" in allowed
    created = server.client.post(
        f"{server.url}/api/uploads/",
        headers={**AUTH, **origin, "Upload-Length": "1", "Upload-Metadata": _meta(path="cors.bin")},
    )
    exposed = created.headers["access-control-expose-headers"].lower()
    assert "location" in exposed and "upload-offset" in exposed and "tus-resumable" in exposed
