"""The IETF resumable-upload draft in-process: PUT/POST /files/ with Upload-Complete creating an
upload resource, HEAD, PATCH (application/partial-upload), the draft's problem types (409
mismatching-upload-offset, 400 completed-upload and inconsistent-upload-length), 413 with
Upload-Limit, expiry, DELETE, Content-Digest and Repr-Digest, a body cut mid-way then resumed, and
the target appearing only with the last byte. The cut connection of a real client:
tests/clients/test_resumable_draft_clients.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.http.resumable_draft import PROBLEM_BASE, parse_limit
from app.storage import resumable
from app.storage.paths import TEMP_PREFIX
from app.storage.values import identity
from tests.support.inprocess import AppPool, InProcessServer

TOKEN = "write-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Upload-Draft-Interop-Version": "8"}
PARTIAL = {**AUTH, "Content-Type": "application/partial-upload"}
MAX = 10 * 1024**2


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


def _create(server: InProcessServer, path: str, body: bytes = b"", /, **extra: str) -> httpx.Response:
    headers = {**AUTH, "Upload-Complete": "?0", **extra}
    return server.client.put(f"{server.url}/files/{path}", headers=headers, content=body)


def _location(response: httpx.Response, server: InProcessServer) -> str:
    assert response.status_code == 201, response.text
    assert response.headers["upload-complete"] == "?0"
    location = response.headers["location"]
    assert location.startswith(f"{server.url}/api/uploads/")
    return location


def _patch(
    server: InProcessServer, url: str, offset: int, body: bytes, complete: bool, **extra: str
) -> httpx.Response:
    headers = {**PARTIAL, "Upload-Offset": str(offset), "Upload-Complete": "?1" if complete else "?0"}
    return server.client.patch(url, headers={**headers, **extra}, content=body)


def _head(server: InProcessServer, url: str) -> httpx.Response:
    response = server.client.head(url, headers=AUTH)
    assert response.status_code == 204, response.text
    assert response.headers["cache-control"] == "no-store"
    return response


def _digest(data: bytes, algorithm: str = "sha-256") -> str:
    value = hashlib.new(algorithm.replace("-", ""), data).digest()
    return f"{algorithm}=:{base64.b64encode(value).decode()}:"


def _indexed_sha256(server: InProcessServer, name: str) -> bytes | None:
    digest = server.app.services.index.digest(identity((server.root / name).stat()))
    return None if digest is None else digest.sha256


def test_options_announce_the_limits_and_the_patch_type(server: InProcessServer) -> None:
    for url in (f"{server.url}/files/any/where.bin", f"{server.url}/files/"):
        response = server.client.options(url)
        assert response.status_code == 204
        assert response.headers["accept-patch"] == "application/partial-upload"
        limits = parse_limit(response.headers["upload-limit"])
        assert limits is not None and limits["max-size"] == MAX and limits["max-age"] == 86400


def test_a_whole_put_with_upload_complete_is_a_plain_upload(server: InProcessServer) -> None:
    data = os.urandom(100_000)
    response = server.client.put(
        f"{server.url}/files/whole.bin",
        headers={**AUTH, "Upload-Complete": "?1", "Repr-Digest": _digest(data)},
        content=data,
    )
    assert response.status_code == 201, response.text
    assert response.headers["upload-complete"] == "?1"
    assert response.json()["name"] == "whole.bin" and response.headers["location"] == "/files/whole.bin"
    assert response.headers["repr-digest"] == _digest(data)
    assert (server.root / "whole.bin").read_bytes() == data and _temps(server.root) == []
    assert _indexed_sha256(server, "whole.bin") == hashlib.sha256(data).digest()
    again = server.client.put(
        f"{server.url}/files/whole.bin", headers={**AUTH, "Upload-Complete": "?1"}, content=b"x"
    )
    assert again.status_code == 204 and (server.root / "whole.bin").read_bytes() == b"x"


def test_create_then_patches_publish_once_complete(server: InProcessServer) -> None:
    data = os.urandom(200_000)
    url = _location(
        _create(server, "docs/report.bin", data[:50_000], **{"Upload-Length": str(len(data))}), server
    )
    head = _head(server, url)
    assert head.headers["upload-offset"] == "50000" and head.headers["upload-complete"] == "?0"
    assert head.headers["upload-length"] == str(len(data))
    assert parse_limit(head.headers["upload-limit"]) is not None
    for start in range(50_000, len(data), 50_000):
        assert not (server.root / "docs/report.bin").exists()
        end = start + 50_000
        response = _patch(server, url, start, data[start:end], complete=end >= len(data))
        assert int(response.headers["upload-offset"]) == min(end, len(data))
    assert response.status_code == 201 and response.headers["upload-complete"] == "?1"
    assert (server.root / "docs/report.bin").read_bytes() == data and _temps(server.root) == []
    assert _indexed_sha256(server, "docs/report.bin") == hashlib.sha256(data).digest()
    done = _head(server, url)  # remembered: the client may have missed the last answer
    assert done.headers["upload-complete"] == "?1" and done.headers["upload-offset"] == str(len(data))


def test_a_post_names_its_file_by_content_disposition(server: InProcessServer) -> None:
    response = server.client.post(
        f"{server.url}/files/inbox/",
        headers={**AUTH, "Upload-Complete": "?0", "Content-Disposition": 'attachment; filename="a b.txt"'},
        content=b"hello ",
    )
    url = _location(response, server)
    done = _patch(server, url, 6, b"world", complete=True)
    assert done.status_code == 201 and done.json()["entries"][0]["name"] == "a b.txt"
    assert (server.root / "inbox/a b.txt").read_bytes() == b"hello world"
    nameless = server.client.post(
        f"{server.url}/files/inbox/", headers={**AUTH, "Upload-Complete": "?1"}, content=b"x"
    )
    assert nameless.status_code == 400


def test_a_wrong_offset_is_409_mismatching_upload_offset(server: InProcessServer) -> None:
    url = _location(_create(server, "a.bin", b"01234"), server)
    response = _patch(server, url, 3, b"56789", complete=True)
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["upload-offset"] == "5" and response.headers["upload-complete"] == "?0"
    problem = response.json()
    assert problem["type"] == PROBLEM_BASE + "mismatching-upload-offset"
    assert problem["expected-offset"] == 5 and problem["provided-offset"] == 3
    assert _head(server, url).headers["upload-offset"] == "5"
    assert _patch(server, url, 5, b"56789", complete=True).status_code == 201
    assert (server.root / "a.bin").read_bytes() == b"0123456789"


def test_an_append_to_a_completed_upload_is_400_completed_upload(server: InProcessServer) -> None:
    url = _location(_create(server, "c.bin", b"abc"), server)
    assert _patch(server, url, 3, b"", complete=True).status_code == 201
    response = _patch(server, url, 3, b"more", complete=True)
    assert response.status_code == 400
    assert response.json()["type"] == PROBLEM_BASE + "completed-upload"
    assert (server.root / "c.bin").read_bytes() == b"abc"


def test_inconsistent_lengths_are_400(server: InProcessServer) -> None:
    refused = server.client.put(
        f"{server.url}/files/l.bin",
        headers={**AUTH, "Upload-Complete": "?1", "Upload-Length": "99"},
        content=b"short",
    )
    assert (
        refused.status_code == 400 and refused.json()["type"] == PROBLEM_BASE + "inconsistent-upload-length"
    )
    assert not (server.root / "l.bin").exists()
    url = _location(_create(server, "l.bin", b"0123", **{"Upload-Length": "8"}), server)
    for extra in ({"Upload-Length": "9"}, {}):
        body = b"4567" if extra else b"45"  # a length that changes; complete before the declared end
        response = _patch(server, url, 4, body, complete=not extra, **extra)
        assert response.status_code == 400, response.text
        assert response.json()["type"] == PROBLEM_BASE + "inconsistent-upload-length"
    assert not (server.root / "l.bin").exists()


def test_too_large_is_413_with_upload_limit(server: InProcessServer) -> None:
    response = _create(server, "big.bin", **{"Upload-Length": str(MAX + 1)})
    assert response.status_code == 413
    limits = parse_limit(response.headers["upload-limit"])
    assert limits is not None and limits["max-size"] == MAX
    url = _location(_create(server, "big.bin", **{"Upload-Length": "4"}), server)
    past = _patch(server, url, 0, b"12345", complete=False)
    assert past.status_code == 413 and "upload-limit" in past.headers
    assert _head(server, url).headers["upload-offset"] == "0"
    assert _temps(server.root) and not (server.root / "big.bin").exists()


def test_a_content_digest_mismatch_discards_the_bytes(server: InProcessServer) -> None:
    url = _location(
        _create(server, "d.bin", b"abcd", **{"Content-Digest": _digest(b"abcd", "sha-512")}), server
    )
    response = _patch(server, url, 4, b"efgh", complete=True, **{"Content-Digest": _digest(b"other")})
    assert response.status_code == 400 and response.headers["upload-offset"] == "4"
    assert _head(server, url).headers["upload-offset"] == "4" and not (server.root / "d.bin").exists()
    done = _patch(server, url, 4, b"efgh", complete=True, **{"Content-Digest": _digest(b"efgh")})
    assert done.status_code == 201 and (server.root / "d.bin").read_bytes() == b"abcdefgh"


def test_a_repr_digest_mismatch_ends_the_upload(server: InProcessServer) -> None:
    url = _location(_create(server, "r.bin", b"abcd", **{"Repr-Digest": _digest(b"abcdXXXX")}), server)
    response = _patch(server, url, 4, b"efgh", complete=True)
    assert response.status_code == 400 and response.headers["upload-complete"] == "?1"
    assert not (server.root / "r.bin").exists() and _temps(server.root) == []
    assert _head(server, url).headers["upload-complete"] == "?1"  # it ended
    assert _patch(server, url, 8, b"", complete=True).json()["type"] == PROBLEM_BASE + "completed-upload"


def test_delete_cancels_the_upload(server: InProcessServer) -> None:
    url = _location(_create(server, "t.bin", b"01234"), server)
    assert server.client.delete(url, headers=AUTH).status_code == 204
    assert server.client.head(url, headers=AUTH).status_code == 404
    assert _patch(server, url, 5, b"56789", complete=True).status_code == 404
    assert _temps(server.root) == [] and not (server.root / "t.bin").exists()


def test_expired_uploads_are_gone(server: InProcessServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = _location(_create(server, "e.bin", b"01234"), server)
    later = resumable.wall_clock() + 86400 + 1  # FERRY_UPLOAD_EXPIRY's default, passed
    monkeypatch.setattr(resumable, "wall_clock", lambda: later)
    assert server.client.head(url, headers=AUTH).status_code == 404
    assert _patch(server, url, 5, b"56789", complete=True).status_code == 404
    assert resumable.expire_uploads(server.app.services.index, later) == 1
    assert _temps(server.root) == []


def test_the_token_and_the_interop_version_are_required(server: InProcessServer) -> None:
    url = _location(_create(server, "w.bin", b"0"), server)
    assert server.client.head(url, headers={"Upload-Draft-Interop-Version": "8"}).status_code == 401
    other = {**AUTH, "Authorization": "Bearer nope"}
    assert (
        server.client.put(f"{server.url}/files/x.bin", headers={**other, "Upload-Complete": "?1"}).status_code
        == 401
    )
    for version in ({"Upload-Draft-Interop-Version": "3"}, {"Upload-Draft-Interop-Version": "?1"}):
        headers = {**AUTH, **version, "Upload-Complete": "?1"}
        assert (
            server.client.put(f"{server.url}/files/x.bin", headers=headers, content=b"x").status_code == 400
        )
    tus_js = {**AUTH, "Upload-Draft-Interop-Version": "6", "Upload-Complete": "?1"}
    assert server.client.put(f"{server.url}/files/x.bin", headers=tus_js, content=b"x").status_code == 201


def test_a_put_without_upload_complete_is_unchanged(server: InProcessServer) -> None:
    response = server.client.put(f"{server.url}/files/plain.txt", headers=AUTH, content=b"plain")
    assert response.status_code == 201 and "upload-complete" not in response.headers
    ignored = server.client.put(
        f"{server.url}/files/plain.txt", headers={**AUTH, "Upload-Complete": "yes"}, content=b"again"
    )  # not a Boolean: the field is ignored, as the draft says
    assert ignored.status_code == 204 and "upload-complete" not in ignored.headers
    assert _temps(server.root) == []


def _cut_request(
    apps: AppPool, server: InProcessServer, method: str, url: str, headers: dict[str, str], body: bytes
) -> list[MutableMapping[str, Any]]:
    """`method url` whose client goes away after `body` (more was announced): what the app sent."""
    parsed = httpx.URL(url)

    async def call() -> list[MutableMapping[str, Any]]:
        messages: list[dict[str, Any]] = [
            {"type": "http.request", "body": body, "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await asyncio.Event().wait()  # never: the client is gone
            raise AssertionError

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        fields = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": parsed.path,
            "raw_path": parsed.raw_path,
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", parsed.host.encode()), *fields],
            "client": ("127.0.0.1", 40000),
            "server": (parsed.host, 80),
        }
        await server.app(scope, receive, send)
        return sent

    return apps._loop.run(call())


def test_a_cut_patch_keeps_its_bytes_and_resumes(apps: AppPool, server: InProcessServer) -> None:
    data = os.urandom(300_000)
    url = _location(_create(server, "cut.bin", **{"Upload-Length": str(len(data))}), server)
    headers = {**PARTIAL, "Upload-Offset": "0", "Upload-Complete": "?1", "Content-Length": str(len(data))}
    _cut_request(apps, server, "PATCH", url, headers, data[:123_456])
    assert not (server.root / "cut.bin").exists()
    offset = int(_head(server, url).headers["upload-offset"])
    assert offset == 123_456
    done = _patch(server, url, offset, data[offset:], complete=True)
    assert done.status_code == 201 and done.headers["upload-complete"] == "?1"
    assert (server.root / "cut.bin").read_bytes() == data
    assert _indexed_sha256(server, "cut.bin") == hashlib.sha256(data).digest()


def test_a_cut_put_leaves_an_upload_not_a_file(apps: AppPool, server: InProcessServer) -> None:
    headers = {**AUTH, "Upload-Complete": "?1", "Content-Length": "1000"}
    _cut_request(apps, server, "PUT", f"{server.url}/files/half.bin", headers, b"x" * 400)
    assert not (server.root / "half.bin").exists()
    index = server.app.services.index
    uploads = index.expired_resumable(resumable.wall_clock() + 10 * 86400)
    assert [(u.path, u.offset, u.length) for u in uploads] == [("half.bin", 400, 1000)]


def test_cors_lets_a_page_use_the_draft(apps: AppPool) -> None:
    server = apps.get("--write-token", TOKEN, "--cors-origins", "https://app.example")
    origin = {"Origin": "https://app.example"}
    preflight = server.client.options(
        f"{server.url}/files/page.bin",
        headers={
            **origin,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "upload-complete, upload-draft-interop-version",
        },
    )
    allowed = preflight.headers["access-control-allow-headers"].lower()
    for name in ("upload-complete", "upload-draft-interop-version", "upload-offset", "content-digest"):
        assert name in allowed
    created = _create(server, "page.bin", b"x", **origin)
    exposed = created.headers["access-control-expose-headers"].lower()
    for name in ("location", "upload-offset", "upload-complete", "upload-limit"):
        assert name in exposed


@settings(deadline=None, max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=5),
    declared=st.booleans(),
    first=st.integers(min_value=0, max_value=20_000),
)
def test_any_chunking_ends_in_the_same_file(
    server: InProcessServer, cuts: list[int], declared: bool, first: int
) -> None:
    data = os.urandom(20_000)
    name = f"chunks/{os.urandom(6).hex()}.bin"
    extra = {"Upload-Length": str(len(data))} if declared else {}
    url = _location(_create(server, name, data[:first], **extra), server)
    points = sorted({first, *cuts, len(data)})
    points = [p for p in points if p >= first]
    for start, end in zip(points, points[1:], strict=False):
        assert not (server.root / name).exists()
        response = _patch(server, url, start, data[start:end], complete=end == len(data))
        assert response.status_code in (201, 204), response.text
        assert response.headers["upload-offset"] == str(end)
    if len(points) == 1:  # the creation carried it all: complete it with an empty append
        assert _patch(server, url, len(data), b"", complete=True).status_code == 201
    assert (server.root / name).read_bytes() == data
    assert _indexed_sha256(server, name) == hashlib.sha256(data).digest()
