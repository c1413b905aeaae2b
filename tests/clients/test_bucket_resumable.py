"""Resumable uploads to a bucket (FERRY_STORAGE=s3://…) against the real engine (`weed mini`,
marker `engine`): the IETF draft and tus 1.0 on the bucket's core (app/storage/bucket_resumable.py),
continued by another replica that shares only the bucket, with nothing at the key before the last
byte, small appends acknowledged durably, the SHA-256 known at completion, and a terminated upload's
S3 multipart upload aborted.

In-process apps (create_app + httpx.ASGITransport) stand for the replicas of the draft and tus
sequences: each has an index and root of its own and serves the same prefix. tuspy runs against two
real `ferry serve` processes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest
from tusclient import client as tus_client

from app.main import FerryApp, create_app
from app.routes.resumable_draft import draft_uploads
from app.storage import bucket_resumable
from app.storage.bucket_resumable import STATE_ROOT, BucketUploads
from app.storage.errors import InTheWay, NotServable
from app.storage.resumable import owner_of
from tests.support.inprocess import in_process, make_settings
from tests.support.replicas import bucket_env, serve_bucket
from tests.support.seaweed import Seaweed

pytestmark = [pytest.mark.engine]

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DRAFT = {**AUTH, "Upload-Draft-Interop-Version": "8"}
PARTIAL = {**DRAFT, "Content-Type": "application/partial-upload"}
TUS = {**AUTH, "Tus-Resumable": "1.0.0"}
MiB = 1024**2
PART = 5 * MiB  # the part size the apps are given (S3's smallest)


@dataclass
class Replica:
    app: FerryApp
    http: httpx.AsyncClient


@dataclass
class Bucket:
    engine: Seaweed
    prefix: str
    replicas: list[Replica]

    async def object(self, path: str) -> bytes | None:
        """The object at `path` as the engine holds it (None: none), behind Ferry's back."""
        try:
            got = await obstore.get_async(self.engine.store(), self.prefix + path)
        except FileNotFoundError:
            return None
        return bytes(await got.bytes_async())

    async def states(self) -> dict[str, dict[str, Any]]:
        """The upload states kept in the bucket, by key."""
        found: dict[str, dict[str, Any]] = {}
        async for batch in obstore.list(self.engine.store(), self.prefix + STATE_ROOT):
            for meta in batch:
                if meta["path"].endswith(".json"):
                    got = await obstore.get_async(self.engine.store(), meta["path"])
                    found[meta["path"]] = json.loads(bytes(await got.bytes_async()))
        return found

    async def hidden(self) -> list[str]:
        """Every key Ferry keeps for uploads in progress (states and tails)."""
        keys: list[str] = []
        async for batch in obstore.list(self.engine.store(), self.prefix + STATE_ROOT):
            keys += [meta["path"] for meta in batch]
        return keys


Serve = Callable[..., contextlib.AbstractAsyncContextManager[Bucket]]


@pytest.fixture(autouse=True, scope="module")
def _no_uploads_left_behind(seaweed: Seaweed) -> Iterator[None]:
    """This module leaves uploads open by design (cut, resumed elsewhere): none outlives it."""
    yield
    seaweed.discard_pending_uploads()


@pytest.fixture
def serve(seaweed: Seaweed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Serve:
    """`async with serve(n) as bucket`: n apps serving one fresh prefix of the bucket."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)

    @contextlib.asynccontextmanager
    async def started(count: int, **overrides: object) -> AsyncIterator[Bucket]:
        prefix = f"r-{os.urandom(4).hex()}/"
        async with contextlib.AsyncExitStack() as stack:
            replicas = []
            for n in range(count):
                base = tmp_path / f"replica-{n}"
                (base / "root").mkdir(parents=True)
                settings = make_settings(
                    base / "root",
                    storage=f"s3://{seaweed.bucket}/{prefix}",
                    s3_endpoint=seaweed.endpoint,
                    s3_region=seaweed.region,
                    s3_allow_http=True,
                    s3_part_size="5MiB",
                    write_token=TOKEN,
                    index_path=base / "index.sqlite3",
                    **overrides,
                )
                app = create_app(settings)
                http = await stack.enter_async_context(in_process(app, timeout=60.0))
                replicas.append(Replica(app, http))
            yield Bucket(seaweed, prefix, replicas)

    return started


def _content_digest(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


def _offset(answer: httpx.Response) -> int:
    return int(answer.headers["upload-offset"])


async def _parts_left(bucket: Bucket, state: dict[str, Any]) -> list[int] | None:
    """The parts the engine still holds for a state's multipart upload (None: it is gone)."""
    core = bucket.replicas[0].app.services.bucket
    assert core is not None
    try:
        return await core.multipart().list_parts(state["upload"]["path"], state["multipart"])
    except NotServable:
        return None


@pytest.mark.anyio
async def test_a_draft_upload_is_continued_by_another_replica_and_appears_only_when_complete(
    serve: Serve,
) -> None:
    data = os.urandom(2 * PART + 12345)
    async with serve(2) as bucket:
        one, two = bucket.replicas[0].http, bucket.replicas[1].http
        first = PART + 100  # one part sent, 100 bytes past it kept as a tail
        created = await one.put(
            "/files/in/big.bin", content=data[:first], headers={**DRAFT, "Upload-Complete": "?0"}
        )
        assert created.status_code == 201, created.text
        assert _offset(created) == first
        location = httpx.URL(created.headers["location"]).path
        assert await bucket.object("in/big.bin") is None  # nothing at the key before the end
        (state,) = (await bucket.states()).values()
        assert [p["size"] for p in state["parts"]] == [PART] and state["tail"] is not None

        # The other replica sees the same upload: its offset, and 409 for a wrong one.
        head = await two.head(location, headers=DRAFT)
        assert (head.status_code, _offset(head), head.headers["upload-complete"]) == (204, first, "?0")
        wrong = await two.patch(
            location, content=b"x", headers={**PARTIAL, "Upload-Offset": "7", "Upload-Complete": "?0"}
        )
        assert wrong.status_code == 409, wrong.text
        assert wrong.json()["type"].endswith("mismatching-upload-offset")

        # A small append is acknowledged durably (the tail grows; no part can be that small).
        small = await two.patch(
            location,
            content=data[first : first + 1000],
            headers={**PARTIAL, "Upload-Offset": str(first), "Upload-Complete": "?0"},
        )
        assert (small.status_code, _offset(small)) == (204, first + 1000), small.text
        head = await one.head(location, headers=DRAFT)
        assert _offset(head) == first + 1000
        assert await bucket.object("in/big.bin") is None

        # Completed through the first replica: the whole file, its SHA-256 known at once.
        done = await one.patch(
            location,
            content=data[first + 1000 :],
            headers={**PARTIAL, "Upload-Offset": str(first + 1000), "Upload-Complete": "?1"},
        )
        assert done.status_code == 201, done.text
        assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()
        assert done.headers["repr-digest"] == _content_digest(data)
        assert await bucket.object("in/big.bin") == data
        assert await bucket.hidden() == []  # state and tail gone
        assert await _parts_left(bucket, state) is None  # the multipart upload was completed
        assert (await one.get("/files/in/big.bin")).content == data
        listing = await two.get("/files/in/")  # the listing's upload panel uses tus here too
        assert re.search(r'<section class="upload"[^>]* data-resumable', listing.text)


@pytest.mark.anyio
async def test_delete_aborts_the_multipart_upload_and_leaves_nothing(serve: Serve) -> None:
    async with serve(1) as bucket:
        http = bucket.replicas[0].http
        created = await http.put(
            "/files/gone.bin", content=os.urandom(PART + 1), headers={**DRAFT, "Upload-Complete": "?0"}
        )
        assert created.status_code == 201, created.text
        location = httpx.URL(created.headers["location"]).path
        (state,) = (await bucket.states()).values()
        assert await _parts_left(bucket, state) == [1]
        deleted = await http.delete(location, headers=DRAFT)
        assert deleted.status_code == 204, deleted.text
        assert await _parts_left(bucket, state) is None  # aborted in the engine
        assert await bucket.hidden() == []
        assert (await http.head(location, headers=DRAFT)).status_code == 404
        assert await bucket.object("gone.bin") is None


@pytest.mark.anyio
async def test_a_tus_checksum_mismatch_discards_the_append_and_the_right_bytes_complete(
    serve: Serve,
) -> None:
    data = os.urandom(PART + 5000)
    async with serve(2) as bucket:
        one, two = bucket.replicas[0].http, bucket.replicas[1].http
        path = base64.b64encode(b"sums/f.bin").decode()
        created = await one.post(
            "/api/uploads/",
            headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": f"path {path}"},
        )
        assert created.status_code == 201, created.text
        location = httpx.URL(created.headers["location"]).path
        patch = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
        wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
        refused = await one.patch(
            location, content=data, headers={**patch, "Upload-Checksum": f"sha256 {wrong}"}
        )
        assert refused.status_code == 460, refused.text
        head = await two.head(location, headers=TUS)
        assert head.headers["upload-offset"] == "0"  # the bytes were discarded
        right = base64.b64encode(hashlib.sha256(data).digest()).decode()
        done = await two.patch(
            location, content=data, headers={**patch, "Upload-Checksum": f"sha256 {right}"}
        )
        assert done.status_code == 204, done.text
        assert await bucket.object("sums/f.bin") == data
        assert await bucket.hidden() == []
        entry = bucket.replicas[1].app.services.index.get("sums/f.bin")
        assert entry is not None and entry.sha256 == hashlib.sha256(data).digest()


@pytest.mark.anyio
@pytest.mark.parametrize("first", [10, PART + 10], ids=["one-put", "multipart"])
async def test_a_precondition_failing_at_completion_ends_the_upload(serve: Serve, first: int) -> None:
    async with serve(1) as bucket:
        http = bucket.replicas[0].http
        created = await http.put(
            "/files/once.bin",
            content=os.urandom(first),
            headers={**DRAFT, "Upload-Complete": "?0", "If-None-Match": "*"},
        )
        assert created.status_code == 201, created.text
        location = httpx.URL(created.headers["location"]).path
        (state,) = (await bucket.states()).values()
        await obstore.put_async(bucket.engine.store(), bucket.prefix + "once.bin", b"someone else's")
        done = await http.patch(
            location,
            content=b", second half",
            headers={**PARTIAL, "Upload-Offset": str(first), "Upload-Complete": "?1"},
        )
        assert done.status_code == 412, done.text
        assert await bucket.object("once.bin") == b"someone else's"
        assert await bucket.hidden() == []
        if state["multipart"] is not None:
            assert await _parts_left(bucket, state) is None  # aborted in the engine


async def _created(http: httpx.AsyncClient, path: str, body: bytes) -> str:
    """A draft upload begun with `body`; its resource's path."""
    created = await http.put(f"/files/{path}", content=body, headers={**DRAFT, "Upload-Complete": "?0"})
    assert created.status_code == 201, created.text
    return httpx.URL(created.headers["location"]).path


async def _cut_patch(app: FerryApp, location: str, offset: int, body: bytes) -> int | None:
    """A draft PATCH whose client goes away after `body` (as uvicorn tells it: a disconnect); the
    status answered (None: nobody was left to answer)."""
    headers = {**PARTIAL, "Upload-Offset": str(offset), "Upload-Complete": "?0"}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PATCH",
        "scheme": "http",
        "path": location,
        "raw_path": location.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"ferry")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("ferry", 80),
    }
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body, "more_body": True},
        {"type": "http.disconnect"},
    ]
    answered: dict[str, int] = {}

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            answered["status"] = message["status"]

    await asyncio.wait_for(app(scope, receive, send), timeout=120)
    return answered.get("status")


@pytest.mark.anyio
async def test_a_patch_cut_mid_body_keeps_what_arrived_for_any_replica_to_continue(serve: Serve) -> None:
    data = os.urandom(2 * PART)
    async with serve(2) as bucket:
        one, two = bucket.replicas
        location = await _created(one.http, "cut.bin", data[:10])
        arrived = PART + 300  # a part, and a tail
        status = await _cut_patch(one.app, location, 10, data[10 : 10 + arrived])
        assert status in (None, 400)  # nobody is left to read an answer
        head = await two.http.head(location, headers=DRAFT)
        assert _offset(head) == 10 + arrived
        done = await two.http.patch(
            location,
            content=data[10 + arrived :],
            headers={**PARTIAL, "Upload-Offset": str(10 + arrived), "Upload-Complete": "?1"},
        )
        assert done.status_code == 201, done.text
        assert await bucket.object("cut.bin") == data
        assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.anyio
async def test_one_append_at_a_time_across_replicas_and_a_stale_lease_is_taken_over(serve: Serve) -> None:
    async with serve(2) as bucket:
        one, two = bucket.replicas
        location = await _created(one.http, "leased.bin", b"0123456789")
        core = draft_uploads(one.app.services).core
        assert isinstance(core, BucketUploads)
        upload = await core.find(location.rpartition("/")[2], owner_of(TOKEN.encode()))
        held = await core.append(upload)  # as a request of replica one, mid-append
        append = {**PARTIAL, "Upload-Offset": "10", "Upload-Complete": "?1"}
        busy = await two.http.patch(location, content=b"abc", headers=append)
        assert busy.status_code == 409, busy.text
        # Replica one dies mid-append: its lease is not renewed, and runs out.
        ((key, state),) = (await bucket.states()).items()
        state["lease_until"] = 0
        await obstore.put_async(bucket.engine.store(), key, json.dumps(state).encode())
        done = await two.http.patch(location, content=b"abc", headers=append)
        assert done.status_code == 201, done.text
        assert await bucket.object("leased.bin") == b"0123456789abc"
        held.buffer += b"late"  # what the old holder still had: never recorded
        with pytest.raises(InTheWay):
            await core.record(held)
        assert await bucket.object("leased.bin") == b"0123456789abc"
        assert await bucket.hidden() == []  # its tail was not left behind


@pytest.mark.anyio
async def test_expired_uploads_are_aborted_when_looked_up_and_swept_when_others_begin(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bucket_resumable, "SWEEP_SECONDS", 0.0)
    async with serve(1, upload_expiry=2) as bucket:
        http = bucket.replicas[0].http
        looked_up = await _created(http, "a.bin", os.urandom(PART + 1))
        swept = await _created(http, "b.bin", os.urandom(PART + 1))
        states = list((await bucket.states()).values())
        assert [await _parts_left(bucket, s) for s in states] == [[1], [1]]
        deadline = max(s["upload"]["expires"] for s in states) + 1.5
        while time.time() < deadline:  # until both have expired (by the wall clock they record)
            await asyncio.sleep(0.2)
        assert (await http.head(looked_up, headers=DRAFT)).status_code == 404
        await _created(http, "c.bin", b"new")  # its creation sweeps the other expired one
        assert [await _parts_left(bucket, s) for s in states] == [None, None]  # aborted in the engine
        assert len(await bucket.states()) == 1
        assert (await http.head(swept, headers=DRAFT)).status_code == 404


# --------------------------------------------------------------------------- tuspy, two servers


def test_tuspy_stops_on_one_replica_and_resumes_on_another(seaweed: Seaweed, tmp_path: Path) -> None:
    prefix = f"tus-{os.urandom(4).hex()}/"
    env = bucket_env(seaweed, prefix, write_token=TOKEN, s3_part_size="5MiB")
    one = serve_bucket(tmp_path, "one", env)
    two = serve_bucket(tmp_path, "two", env)
    try:
        data = os.urandom(PART + 3 * MiB + 12345)
        source = io.BytesIO(data)
        first = tus_client.TusClient(f"{one.url}/api/uploads/", headers=AUTH).uploader(
            file_stream=source, chunk_size=MiB, metadata={"path": "in/t.bin"}, upload_checksum=True
        )
        first.upload(stop_at=PART + MiB)
        assert first.offset == PART + MiB and first.url is not None
        assert httpx.get(f"{two.url}/files/in/t.bin").status_code == 404
        url = two.url + httpx.URL(first.url).path  # the same upload, through the other replica
        resumed = tus_client.TusClient(f"{two.url}/api/uploads/", headers=AUTH).uploader(
            file_stream=source, url=url, chunk_size=MiB, metadata={"path": "in/t.bin"}, upload_checksum=True
        )
        assert resumed.offset == PART + MiB  # from HEAD, on the other replica
        resumed.upload()
        answer = httpx.get(f"{one.url}/files/in/t.bin")
        assert answer.status_code == 200 and answer.content == data
        head = httpx.head(f"{two.url}/files/in/t.bin", headers={"Want-Repr-Digest": "sha-256=10"})
        assert head.headers["repr-digest"] == _content_digest(data)
    finally:
        one.stop()
        two.stop()
