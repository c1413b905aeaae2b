"""Writes to a bucket (FERRY_STORAGE=s3://…) against a real engine (`weed mini`, marker `engine`):
PUT, POST and DELETE keep the local root's contract (CONTRACT.md "Writes", the README's
"Uploads"), over the object store: statuses, ETags and Location, conditional writes pinned at the
store, verified digests stored with the object, the index updated at once, and no upload ever
left partial or pending in the engine.

In-process (create_app + httpx.ASGITransport); what needs a body cut off or held back mid-way
drives the ASGI app directly with a scripted `receive`, as uvicorn delivers a disconnect.
Each test serves a prefix of its own in the session's bucket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import os
import subprocess
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import obstore
import pytest

from app import metrics
from app.main import FerryApp, create_app
from tests.support.inprocess import in_process, make_settings
from tests.support.raw import connect, read_head, request_head
from tests.support.seaweed import Seaweed
from tests.support.servers import FerryServer, start_server, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.anyio]

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KiB, MiB = 1024, 1024**2


@dataclass
class Bucket:
    """A Ferry app serving one prefix of the engine's bucket, and a client on it."""

    app: FerryApp
    http: httpx.AsyncClient
    engine: Seaweed
    prefix: str

    async def objects(self) -> dict[str, bytes]:
        """What the bucket holds under the prefix, behind Ferry's back."""
        store = self.engine.store()
        found: dict[str, bytes] = {}
        async for batch in obstore.list(store, self.prefix):
            for meta in batch:
                got = await obstore.get_async(store, meta["path"])
                found[meta["path"].removeprefix(self.prefix)] = bytes(await got.bytes_async())
        return found

    async def attributes(self, path: str) -> dict[str, Any]:
        got = await obstore.get_async(self.engine.store(), self.prefix + path, options={"head": True})
        return dict(got.attributes)

    def crc32(self, path: str) -> int | None:
        """The CRC-32 this app's index keeps for the file at `path` (what a ZIP entry needs)."""
        entry = self.app.services.index.get(path)
        assert entry is not None, path
        return entry.crc32

    async def plant(self, path: str, data: bytes) -> None:
        await obstore.put_async(self.engine.store(), self.prefix + path, data)

    async def listing(self, folder: str) -> dict[str, dict[str, Any]]:
        url = f"/files/{quote(folder)}/" if folder else "/files/"
        answer = await self.http.get(url, params={"format": "json"})
        assert answer.status_code == 200, answer.text
        return {e["name"]: e for e in answer.json()["entries"]}

    async def search(self, query: str) -> set[str]:
        answer = await self.http.get("/api/search", params={"q": query})
        assert answer.status_code == 200, answer.text
        return {e["path"] for e in answer.json()["entries"]}


Body = AsyncIterator[dict[str, Any]]
Serve = Callable[..., contextlib.AbstractAsyncContextManager[Bucket]]


@pytest.fixture
def serve(
    seaweed: Seaweed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Serve:
    """`async with serve(**settings) as bucket`: a Ferry app on a fresh prefix, writes enabled."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    name = request.node.name[:30].replace("[", "-").replace("]", "")

    @contextlib.asynccontextmanager
    async def started(retry_seconds: float | None = None, **overrides: object) -> AsyncIterator[Bucket]:
        prefix = f"w-{name}-{os.urandom(4).hex()}/"
        base = tmp_path / prefix.strip("/")
        (base / "root").mkdir(parents=True)
        settings: dict[str, object] = {
            "storage": f"s3://{seaweed.bucket}/{prefix}",
            "s3_endpoint": seaweed.endpoint,
            "s3_region": seaweed.region,
            "s3_allow_http": True,
            "s3_part_size": "5MiB",
            "write_token": TOKEN,
            "index_path": base / "index.sqlite3",
            **overrides,
        }
        app = create_app(make_settings(base / "root", **settings))
        bucket = app.services.bucket
        assert bucket is not None
        if retry_seconds is not None:  # an engine that does not answer is reported sooner
            bucket.config = dataclasses.replace(bucket.config, retry_seconds=retry_seconds, timeout="5s")
        async with in_process(app, timeout=60.0) as http:
            yield Bucket(app, http, seaweed, prefix)

    return started


async def _nothing_pending(bucket: Bucket) -> None:
    """No multipart upload left begun in the store. SeaweedFS's filer drops an aborted upload's
    folder a moment after the abort has been answered, so this waits (with a deadline) for it."""
    engine = bucket.engine
    assert await asyncio.to_thread(wait_for, lambda: engine.pending_uploads() == []), engine.pending_uploads()


def sha256_field(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


def counter(result: str) -> float:
    return metrics.UPLOADS.labels(result)._value.get()  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- driving the ASGI app


async def drive(
    app: FerryApp, method: str, path: str, headers: dict[str, str], messages: AsyncIterator[dict[str, Any]]
) -> tuple[int | None, dict[str, str]]:
    """One request through the app with a scripted `receive` (the body's messages, then what a
    server sends once the body is over: a disconnect when the client is gone); the status (None
    when nothing was answered) and headers of the answer."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": quote(path).encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"ferry")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("ferry", 80),
    }
    answer: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        try:
            return await anext(messages)
        except StopAsyncIteration:
            await asyncio.Event().wait()  # never: the body is over
            raise AssertionError("unreachable") from None

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}

    await asyncio.wait_for(app(scope, receive, send), timeout=120)
    return answer.get("status"), answer.get("headers", {})


# --------------------------------------------------------------------------- PUT


async def test_put_creates_replaces_and_is_served_listed_and_searched_at_once(serve: Serve) -> None:
    async with serve() as b:
        data = b"version 1\n"
        created_before = counter("created")
        created = await b.http.put("/files/docs/a b.txt", content=data, headers=AUTH)
        assert created.status_code == 201, created.text
        entry = created.json()
        assert (entry["path"], entry["type"], entry["size"]) == ("docs/a b.txt", "file", len(data))
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert created.headers["location"] == "/files/docs/a%20b.txt" == entry["url"]
        assert created.headers["etag"] == entry["etag"]
        assert created.headers["repr-digest"] == sha256_field(data)
        assert counter("created") == created_before + 1
        # Stored whole, with its SHA-256 and CRC-32 kept with the object, and in the index.
        assert (await b.objects()) == {"docs/a b.txt": data}
        attributes = await b.attributes("docs/a b.txt")
        assert attributes["sha256"] == hashlib.sha256(data).hexdigest()
        assert attributes["crc32"] == f"{zlib.crc32(data):08x}"
        assert b.crc32("docs/a b.txt") == zlib.crc32(data)
        storage = b.app.services.bucket
        assert storage is not None and (await storage.stat("docs/a b.txt")).crc32 == zlib.crc32(data)

        got = await b.http.get("/files/docs/a%20b.txt")
        assert got.status_code == 200 and got.content == data
        assert got.headers["etag"] == created.headers["etag"]
        assert got.headers["repr-digest"] == sha256_field(data)
        assert got.headers["content-type"].startswith("text/plain")
        # In the listing (its folder too) and in search at once, before any listing round.
        assert (await b.listing(""))["docs"]["type"] == "dir"
        listed = (await b.listing("docs"))["a b.txt"]
        assert (listed["etag"], listed["size"]) == (entry["etag"], len(data))
        assert await b.search("a b") == {"docs/a b.txt"}

        replaced = await b.http.put("/files/docs/a b.txt", content=b"version 2", headers=AUTH)
        assert replaced.status_code == 204, replaced.text
        assert replaced.headers["etag"] != created.headers["etag"]
        assert replaced.headers["location"] == "/files/docs/a%20b.txt"
        assert replaced.headers["repr-digest"] == sha256_field(b"version 2")
        again = await b.http.get("/files/docs/a%20b.txt")
        assert again.content == b"version 2" and again.headers["etag"] == replaced.headers["etag"]
        assert (await b.listing("docs"))["a b.txt"]["etag"] == replaced.headers["etag"]


async def test_conditional_puts(serve: Serve) -> None:
    async with serve() as b:
        first = await b.http.put("/files/doc.txt", content=b"one", headers={**AUTH, "If-None-Match": "*"})
        assert first.status_code == 201
        etag1 = first.headers["etag"]
        taken = await b.http.put("/files/doc.txt", content=b"two", headers={**AUTH, "If-None-Match": "*"})
        assert taken.status_code == 412
        second = await b.http.put("/files/doc.txt", content=b"two", headers={**AUTH, "If-Match": etag1})
        assert second.status_code == 204
        stale = await b.http.put("/files/doc.txt", content=b"three", headers={**AUTH, "If-Match": etag1})
        assert stale.status_code == 412
        missing = await b.http.put("/files/none.txt", content=b"x", headers={**AUTH, "If-Match": etag1})
        assert missing.status_code == 412
        assert await b.objects() == {"doc.txt": b"two"}


async def test_a_write_racing_between_the_check_and_the_store_is_refused(serve: Serve) -> None:
    """If-Match holds when Ferry checks it; the object is replaced (another replica, another
    client) while the body arrives: the store, pinned to the version Ferry checked, refuses."""
    async with serve() as b:
        for size in (10, 6 * MiB):  # one conditional PUT; a multipart upload
            path = f"race-{size}.bin"
            put = await b.http.put(f"/files/{path}", content=b"a" * size, headers=AUTH)
            etag = put.headers["etag"]
            reading, planted = asyncio.Event(), asyncio.Event()

            async def body(size: int = size, race: tuple[asyncio.Event, ...] = (reading, planted)) -> Body:
                race[0].set()  # Ferry checked If-Match and reads the body
                yield {"type": "http.request", "body": b"b" * (size // 2), "more_body": True}
                await race[1].wait()
                yield {"type": "http.request", "body": b"b" * (size - size // 2), "more_body": False}

            headers = {**AUTH, "If-Match": etag, "Content-Length": str(size)}
            request = asyncio.ensure_future(drive(b.app, "PUT", f"/files/{path}", headers, body()))
            await asyncio.wait_for(reading.wait(), timeout=60)
            await b.plant(path, b"c" * 7)
            planted.set()
            status, _ = await request
            assert status == 412
            assert (await b.objects())[path] == b"c" * 7
        await _nothing_pending(b)


async def test_a_multipart_sized_body_is_stored_whole_with_its_digest(serve: Serve) -> None:
    async with serve() as b:
        data = os.urandom(11 * MiB + 5)  # three parts of 5 MiB

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 256 * KiB):
                yield data[i : i + 256 * KiB]

        put = await b.http.put("/files/big/file.bin", content=chunks(), headers=AUTH)
        assert put.status_code == 201, put.text
        assert put.headers["repr-digest"] == sha256_field(data)
        await _nothing_pending(b)
        got = await b.http.get("/files/big/file.bin")
        assert got.status_code == 200 and got.content == data
        # Kept by the object's identity: no re-read (the index has no hasher for it to wait on).
        assert got.headers["repr-digest"] == sha256_field(data)
        assert got.headers["etag"] == put.headers["etag"]
        ranged = await b.http.get("/files/big/file.bin", headers={"Range": "bytes=5242870-5242889"})
        assert ranged.status_code == 206 and ranged.content == data[5242870:5242890]
        # Its CRC-32, known only once the last part is sent, is kept by the index of this replica.
        assert b.crc32("big/file.bin") == zlib.crc32(data)
        assert "crc32" not in await b.attributes("big/file.bin")
        # Declared, it is stored with the object too, whatever the size.
        declared = await b.http.put(
            "/files/big/declared.bin", content=data, headers={**AUTH, "Content-Digest": sha256_field(data)}
        )
        assert declared.status_code == 201
        assert (await b.attributes("big/declared.bin"))["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [10, 6 * MiB])
async def test_a_body_not_matching_its_digest_is_400_and_nothing_is_stored(serve: Serve, size: int) -> None:
    async with serve() as b:
        data = os.urandom(size)
        await b.plant("kept.bin", b"old")
        sha512 = f"sha-512=:{base64.b64encode(hashlib.sha512(b'other').digest()).decode()}:"
        for path, field in [
            ("new.bin", {"Content-Digest": sha256_field(b"other")}),
            ("kept.bin", {"Repr-Digest": sha256_field(b"other")}),
            ("new.bin", {"Content-Digest": sha512}),
        ]:
            answer = await b.http.put(f"/files/{path}", content=data, headers={**AUTH, **field})
            assert answer.status_code == 400, answer.text
            assert "nothing was stored" in answer.json()["detail"]
        assert await b.objects() == {"kept.bin": b"old"}
        await _nothing_pending(b)
        good = f"sha-512=:{base64.b64encode(hashlib.sha512(data).digest()).decode()}:"
        ok = await b.http.put("/files/new.bin", content=data, headers={**AUTH, "Content-Digest": good})
        assert ok.status_code == 201
        assert (await b.objects())["new.bin"] == data


async def test_oversize_bodies_are_413_and_nothing_is_stored(serve: Serve) -> None:
    async with serve(max_upload_size="6MiB") as b:
        declared = await b.http.put(
            "/files/big.bin", content=b"x" * 10, headers={**AUTH, "Content-Length": str(7 * MiB)}
        )
        assert declared.status_code == 413
        # A chunked body crossing the limit past its first part: the multipart upload is aborted.

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(7):
                yield b"y" * MiB

        streamed = await b.http.put("/files/big.bin", content=chunks(), headers=AUTH)
        assert streamed.status_code == 413
        assert await b.objects() == {}
        await _nothing_pending(b)


async def test_a_client_gone_mid_body_leaves_nothing(serve: Serve) -> None:
    async with serve() as b:
        await b.plant("kept.bin", b"old")
        for path in ("new.bin", "kept.bin"):
            failed = counter("failed")

            async def cut() -> AsyncIterator[dict[str, Any]]:
                for _ in range(7):  # past the first 5 MiB part: a multipart upload has begun
                    yield {"type": "http.request", "body": b"z" * MiB, "more_body": True}
                yield {"type": "http.disconnect"}

            status, _ = await drive(b.app, "PUT", f"/files/{path}", AUTH, cut())
            assert status is None  # nobody left to answer
            assert counter("failed") == failed + 1
        assert await b.objects() == {"kept.bin": b"old"}
        await _nothing_pending(b)
        assert (await b.http.get("/files/new.bin")).status_code == 404
        assert "new.bin" not in await b.listing("")  # (kept.bin, planted, waits for a listing round)


async def test_an_upload_cancelled_by_shutdown_is_aborted_in_the_store(serve: Serve) -> None:
    """Past FERRY_SHUTDOWN_TIMEOUT the server cancels what still runs: an upload whose client is
    still sending is aborted in the store, not left pending there."""
    async with serve() as b:
        sent = asyncio.Event()

        async def stalled() -> Body:
            for _ in range(7):  # past the first 5 MiB part: a multipart upload has begun
                yield {"type": "http.request", "body": b"z" * MiB, "more_body": True}
            sent.set()
            await asyncio.Event().wait()  # the client sends nothing more, nor goes away
            yield {}

        request = asyncio.ensure_future(drive(b.app, "PUT", "/files/stalled.bin", AUTH, stalled()))
        await asyncio.wait_for(sent.wait(), timeout=60)
        assert await asyncio.to_thread(wait_for, lambda: b.engine.pending_uploads() != [])
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await _nothing_pending(b)
        assert await b.objects() == {}


async def test_writes_need_the_token(serve: Serve) -> None:
    async with serve(write_token=None) as b:
        for method in ("PUT", "DELETE", "POST"):
            answer = await b.http.request(method, "/files/x.txt", content=b"x", headers=AUTH)
            assert answer.status_code == 405, method
            assert "PUT" not in answer.headers["allow"]
    async with serve() as b:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            answer = await b.http.put("/files/x.txt", content=b"x", headers=headers)
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"].startswith("Bearer")
        assert (await b.http.delete("/files/x.txt")).status_code == 401
        assert await b.objects() == {}


async def test_names_and_shapes_are_refused_as_locally(serve: Serve) -> None:
    async with serve() as b:
        await b.plant("file", b"f")
        await b.plant("dir/inner.txt", b"i")
        cases = [
            ("/files/.hidden", 404),  # the name rules of the path gate
            ("/files/a/.ferry-upload-x", 404),
            ("/files/dir/", 400),  # PUT needs a file path
            ("/files/dir", 409),  # a folder is in the way
            ("/files/file/below.txt", 409),  # a file is in the way of a folder
            ("/files/" + "n" * 1100, 414),  # longer than an S3 key
        ]
        for url, status in cases:
            answer = await b.http.put(url, content=b"x", headers=AUTH)
            assert answer.status_code == status, (url, answer.text)
        assert await b.objects() == {"file": b"f", "dir/inner.txt": b"i"}


# --------------------------------------------------------------------------- POST


async def test_a_form_of_two_files_is_stored(serve: Serve) -> None:
    async with serve() as b:
        one, two = b"first file\n", os.urandom(6 * MiB)
        await b.plant("in/two.bin", b"old")
        files = [("f", ("one.txt", one, "text/plain")), ("f", ("C:\\x\\two.bin", two, "application/x"))]
        posted = await b.http.post("/files/in/", files=files, data={"note": "ignored"}, headers=AUTH)
        assert posted.status_code == 201, posted.text
        entries = {e["path"]: e for e in posted.json()["entries"]}
        assert set(entries) == {"in/one.txt", "in/two.bin"}
        assert entries["in/two.bin"]["sha256"] == hashlib.sha256(two).hexdigest()
        assert await b.objects() == {"in/one.txt": one, "in/two.bin": two}
        for name, data in (("one.txt", one), ("two.bin", two)):
            got = await b.http.get(f"/files/in/{name}")
            assert got.content == data and got.headers["etag"] == entries[f"in/{name}"]["etag"]
            assert got.headers["repr-digest"] == sha256_field(data)
            # Spooled first, so its digest was known before it was sent: stored with the object.
            attributes = await b.attributes(f"in/{name}")
            assert attributes["sha256"] == hashlib.sha256(data).hexdigest()
            assert attributes["crc32"] == f"{zlib.crc32(data):08x}"
            assert b.crc32(f"in/{name}") == zlib.crc32(data)
        assert set(await b.listing("in")) == {"one.txt", "two.bin"}
        assert await b.search("one") == {"in/one.txt"}
        await _nothing_pending(b)
        leftovers = [
            p for p in Path(b.app.services.settings.index_file).parent.iterdir() if "spool" in p.name
        ]
        assert leftovers == []


async def test_a_form_is_stored_whole_or_not_at_all(serve: Serve) -> None:
    async with serve() as b:
        good = ("f", ("good.txt", b"good", "text/plain"))
        # The second part's digest does not match: neither is stored.
        bad_digest = httpx.Request(
            "POST",
            "http://ferry/files/up/",
            files=[good, ("f", ("bad.txt", b"bad", "text/plain"))],
            headers=AUTH,
        )
        body = bad_digest.read()
        marker = b'filename="bad.txt"\r\n'
        body = body.replace(marker, marker + f"Content-Digest: {sha256_field(b'other')}\r\n".encode())
        answer = await b.http.post(
            "/files/up/", content=body, headers={**AUTH, "Content-Type": bad_digest.headers["content-type"]}
        )
        assert answer.status_code == 400, answer.text
        # A part whose name is taken by a folder: refused before any part is stored.
        await b.plant("up/dir/x", b"x")
        taken = await b.http.post(
            "/files/up/", files=[good, ("f", ("dir", b"d", "text/plain"))], headers=AUTH
        )
        assert taken.status_code == 409, taken.text

        # A form cut off after its first file: nothing stored, no upload pending.
        async def cut() -> AsyncIterator[dict[str, Any]]:
            head = body[: body.index(b"bad.txt")]
            yield {"type": "http.request", "body": head, "more_body": True}
            yield {"type": "http.disconnect"}

        headers = {**AUTH, "Content-Type": bad_digest.headers["content-type"]}
        status, _ = await drive(b.app, "POST", "/files/up/", headers, cut())
        assert status is None
        assert await b.objects() == {"up/dir/x": b"x"}
        await _nothing_pending(b)


# --------------------------------------------------------------------------- DELETE


async def test_delete(serve: Serve) -> None:
    async with serve() as b:
        put = await b.http.put("/files/a/b/doc.txt", content=b"doc", headers=AUTH)
        assert (await b.http.put("/files/a/other.txt", content=b"o", headers=AUTH)).status_code == 201
        etag = put.headers["etag"]
        stale = await b.http.put("/files/a/b/doc.txt", content=b"doc2", headers=AUTH)
        assert stale.status_code == 204
        assert (
            await b.http.delete("/files/a/b/doc.txt", headers={**AUTH, "If-Match": etag})
        ).status_code == 412
        assert (await b.objects())["a/b/doc.txt"] == b"doc2"
        current = stale.headers["etag"]
        assert (await b.http.delete("/files/a/", headers=AUTH)).status_code == 409  # not empty
        assert (await b.http.delete("/files/a", headers=AUTH)).status_code == 409
        assert (await b.http.delete("/files/", headers=AUTH)).status_code == 409  # the root
        assert (await b.http.delete("/files/a/other.txt/", headers=AUTH)).status_code == 404
        deleted = await b.http.delete("/files/a/b/doc.txt", headers={**AUTH, "If-Match": current})
        assert deleted.status_code == 204
        assert (await b.http.delete("/files/a/b/doc.txt", headers=AUTH)).status_code == 404
        assert (await b.http.get("/files/a/b/doc.txt")).status_code == 404
        assert await b.objects() == {"a/other.txt": b"o"}
        # Its folder went with its last key, from the listing and search too.
        assert set(await b.listing("a")) == {"other.txt"}
        assert await b.search("doc") == set()
        assert (await b.http.delete("/files/a/other.txt", headers=AUTH)).status_code == 204
        assert await b.listing("") == {}
        assert (await b.http.delete("/files/a/", headers=AUTH)).status_code == 404  # no such folder


async def test_an_unreachable_engine_is_503(serve: Serve) -> None:
    async with serve(s3_endpoint="http://127.0.0.1:9", retry_seconds=1.0) as b:
        answer = await b.http.put("/files/x.txt", content=b"x", headers=AUTH)
        assert answer.status_code == 503
        assert answer.headers["retry-after"]
        assert (await b.http.delete("/files/x.txt", headers=AUTH)).status_code == 503


# --------------------------------------------------------------------------- through `ferry serve`


@pytest.fixture
def served(seaweed: Seaweed, tmp_path: Path) -> Iterator[tuple[FerryServer, str]]:
    """A real `ferry serve` (uvicorn, its own event loop and obstore runtime) on a fresh prefix."""
    prefix = f"w-served-{os.urandom(4).hex()}/"
    (tmp_path / "root").mkdir()
    (tmp_path / "cwd").mkdir()
    env = {**seaweed.env(), "FERRY_STORAGE": f"s3://{seaweed.bucket}/{prefix}", "FERRY_S3_PART_SIZE": "5MiB"}
    server = start_server(tmp_path / "root", tmp_path / "cwd", "--write-token", TOKEN, env=env)
    try:
        yield server, prefix
    finally:
        server.stop()


def test_curl_uploads_and_a_cut_upload_through_a_real_server(
    served: tuple[FerryServer, str], seaweed: Seaweed, tmp_path: Path
) -> None:
    server, prefix = served
    big, small = tmp_path / "big.bin", tmp_path / "small.txt"
    big.write_bytes(os.urandom(12 * MiB))
    small.write_bytes(b"small\n")
    auth = ["-H", f"Authorization: Bearer {TOKEN}"]
    curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *auth]
    put = subprocess.run([*curl, "-T", str(big), f"{server.url}/files/in/big.bin"], capture_output=True)
    assert put.stdout == b"201", put.stderr
    # The same bytes again under another key (so the same store ETag): each keeps its own digest.
    form = [*curl, "-F", f"f=@{small}", "-F", f"g=@{big};filename=copy.bin", f"{server.url}/files/form/"]
    assert subprocess.run(form, capture_output=True).stdout == b"201"
    for path, source in (("in/big.bin", big), ("form/small.txt", small), ("form/copy.bin", big)):
        got = httpx.get(f"{server.url}/files/{path}", timeout=60)
        assert got.status_code == 200 and got.content == source.read_bytes(), path
        assert got.headers.get("repr-digest") == sha256_field(source.read_bytes()), path

    # Refused before the body: a client waiting for 100 Continue never sends it.
    for headers, status in (({}, b"401"), ({**AUTH, "If-Match": '"stale"'}, b"412")):
        with contextlib.closing(connect(server.port)) as sock:
            sock.sendall(
                request_head(
                    "PUT",
                    "/files/in/big.bin",
                    {**headers, "Expect": "100-continue", "Content-Length": str(9 * MiB)},
                )
            )
            head, _ = read_head(sock)
            assert head.split(b" ")[1] == status, head

    # A client gone mid-body, once its multipart upload has begun in the engine: aborted.
    sock = connect(server.port)
    try:
        head = request_head("PUT", "/files/in/cut.bin", {**AUTH, "Content-Length": str(12 * MiB)})
        sock.sendall(head + os.urandom(7 * MiB))
        assert wait_for(lambda: seaweed.pending_uploads() != []), "no multipart upload began"
    finally:
        sock.close()
    assert wait_for(lambda: seaweed.pending_uploads() == []), seaweed.pending_uploads()
    assert httpx.get(f"{server.url}/files/in/cut.bin", timeout=60).status_code == 404
    keys = {m["path"] for batch in obstore.list(seaweed.store(), prefix) for m in batch}
    assert keys == {prefix + p for p in ("in/big.bin", "form/small.txt", "form/copy.bin")}
    assert httpx.get(f"{server.url}/healthz", timeout=60).status_code == 200
