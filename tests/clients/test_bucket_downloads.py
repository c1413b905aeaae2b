"""Downloads from a bucket (FERRY_STORAGE=s3://…) beyond the shared contract cases
(tests/integration/test_download_contract.py and the clients' copy run those on a bucket too):
the types and dispositions of objects, Repr-Digest from the SHA-256 stored with an object, and,
against a real `ferry serve`, metrics and access-log lines, an object replaced mid-download (a
short body or the old version whole, never a mixed one), bounded memory under slow readers of a
large object, and FERRY_S3_DOWNLOADS=redirect (a presigned URL, only after Ferry's own authorisation).

Each test serves a key prefix of its own in the session's `weed mini` (marker `engine`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import obstore
import pytest

from app.storage.s3 import S3Storage
from tests.clients.test_operations import delta, scrape
from tests.integration.test_access_control import mint
from tests.support.buckets import bucket_env, new_prefix, plant, serving
from tests.support.seaweed import Seaweed
from tests.support.servers import PATIENCE, FerryServer, start_server, wait_for
from tests.support.storage import body, config, credentials

pytestmark = [pytest.mark.engine]

KiB, MiB = 1024, 1024**2
READ = "bucket-read-token"
KEY = "bucket-signing-key-0123456789abcdef"

Serve = Callable[..., FerryServer]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def serve(seaweed: Seaweed, tmp_path: Path) -> Iterator[Serve]:
    """serve(prefix, *flags) -> a `ferry serve` of that prefix of the bucket, on an empty ROOT."""
    servers: list[FerryServer] = []
    root = tmp_path / "empty-root"
    root.mkdir()

    def start(prefix: str, *flags: str) -> FerryServer:
        cwd = tmp_path / f"cwd-{len(servers)}"
        cwd.mkdir()
        server = start_server(root, cwd, *flags, env=bucket_env(seaweed, prefix))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def sha256_field(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


# --------------------------------------------------------------------------- in-process


@pytest.mark.anyio
async def test_types_and_dispositions_of_objects(seaweed: Seaweed, tmp_path: Path) -> None:
    prefix = new_prefix("types")
    await plant(
        seaweed,
        prefix,
        {
            "page.html": b"<p>hi</p>\n",
            "pic.svg": b"<svg/>\n",
            "pic.png": b"\x89PNG\r\n\x1a\n",
            "a b.txt": b"ab\n",
        },
    )
    async with serving(seaweed, tmp_path, prefix) as http:
        for name, media in (
            ("page.html", "text/html"),
            ("pic.svg", "image/svg+xml"),
            ("pic.png", "image/png"),
        ):
            r = await http.get(f"/files/{name}?inline=1")
            assert r.headers["content-type"].split(";")[0] == media, name
            assert r.headers["x-content-type-options"] == "nosniff"
            active = media != "image/png"  # a page or a script never renders on this origin
            assert r.headers["content-disposition"].split(";")[0] == ("attachment" if active else "inline")
        plain = await http.get("/files/a%20b.txt")
        assert plain.headers["content-disposition"] == "attachment"  # the URL carries the name
        named = await http.get("/files/a%20b.txt?download=1")
        assert (
            named.headers["content-disposition"]
            == "attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt"
        )


@pytest.mark.anyio
async def test_repr_digest_comes_from_the_sha256_stored_with_the_object(
    seaweed: Seaweed, tmp_path: Path
) -> None:
    prefix = new_prefix("digest")
    data, written, bare = os.urandom(300 * KiB), os.urandom(2 * KiB), b"no digest stored\n"
    store = seaweed.store()
    attributes = {"sha256": hashlib.sha256(data).hexdigest()}
    await obstore.put_async(store, f"{prefix}/planted.bin", data, attributes=attributes)
    await obstore.put_async(store, f"{prefix}/bare.txt", bare)
    ferry = S3Storage(config(seaweed, prefix), credentials(seaweed))  # Ferry's own write stores it
    try:
        await ferry.write("written.bin", body(written), sha256=hashlib.sha256(written).digest())
    finally:
        await ferry.aclose()
    async with serving(seaweed, tmp_path, prefix, "--no-checksums") as http:  # no hashing here
        for name, content in (("planted.bin", data), ("written.bin", written)):
            field = sha256_field(content)
            full = await http.get(f"/files/{name}")
            assert full.content == content and full.headers["repr-digest"] == field, name
            head = await http.head(f"/files/{name}")
            assert head.headers["repr-digest"] == field
            part = await http.get(f"/files/{name}", headers={"range": "bytes=10-19"})
            assert part.status_code == 206 and part.headers["repr-digest"] == field  # the whole file's
            sums = await http.get(f"/files/{name}?checksums")
            assert sums.status_code == 200 and sums.text.split() == [
                hashlib.sha256(content).hexdigest(),
                name,
            ]
            meta4 = await http.get(f"/files/{name}?meta4")
            assert meta4.status_code == 200 and hashlib.sha256(content).hexdigest() in meta4.text
        plain = await http.get("/files/bare.txt")
        assert plain.content == bare and "repr-digest" not in plain.headers
        assert (await http.get("/files/bare.txt?checksums")).status_code == 503


# --------------------------------------------------------------------------- a real server


class SlowReader:
    """A raw HTTP/1.1 GET whose body is read only when asked: a client as slow as a test wants."""

    def __init__(self, port: int, path: str, headers: str = "") -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        self.sock.settimeout(PATIENCE)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            got = self.sock.recv(4096)
            assert got, "the server closed the connection before its headers"
            head += got
        head, _, self.pending = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        fields = dict(line.split(": ", 1) for line in lines[1:])
        self.length = int({k.lower(): v for k, v in fields.items()}["content-length"])

    def read(self, n: int) -> bytes:
        """Up to `n` body bytes (fewer only at the end of the connection)."""
        data = bytearray(self.pending[:n])
        self.pending = self.pending[n:]
        while len(data) < n:
            got = self.sock.recv(min(256 * KiB, n - len(data)))
            if not got:
                break
            data += got
        return bytes(data)

    def rest(self, each: Callable[[], None] = lambda: None) -> bytes:
        """Everything until the server closes the connection; `each` called after every MiB."""
        data = bytearray(self.pending)
        self.pending = b""
        mark = len(data)
        while got := self.sock.recv(256 * KiB):
            data += got
            if len(data) - mark >= MiB:
                each()
                mark = len(data)
        return bytes(data)

    def close(self) -> None:
        self.sock.close()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def until_idle(server: FerryServer, sample: Callable[[], None]) -> None:
    """Sample while the server works; return once it has used no CPU for a second (blocked on its
    slow clients), or after PATIENCE on a machine too busy to tell."""
    deadline = time.monotonic() + PATIENCE
    last, still_since = cpu_ticks(server.pid), time.monotonic()
    while time.monotonic() < deadline:
        sample()
        time.sleep(0.1)
        now = cpu_ticks(server.pid)
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= 1.0:
            return


@pytest.mark.clients
@pytest.mark.parametrize("zero_copy", ["auto", "off"])
def test_an_object_replaced_mid_download_is_never_sent_mixed(
    seaweed: Seaweed, serve: Serve, zero_copy: str
) -> None:
    """A GET answers one version whole or fails (S3's model): the body is either short (the client
    knows the download failed) or the complete old version its ETag and Content-Length describe;
    never new bytes in an old response. With zero copy off, every window is pinned to the old
    ETag (If-Match), so the body is short; spliced (auto), the rest of the range is one GET pinned
    to the old ETag, so the old version may come whole."""
    prefix = new_prefix("replaced")
    size = 20 * MiB
    old, new = os.urandom(size), os.urandom(size)
    key = f"{prefix}/moving.bin"
    obstore.put(seaweed.store(), key, old)
    server = serve(prefix, "--zero-copy", zero_copy)
    reader = SlowReader(server.port, "/files/moving.bin")
    try:
        assert (reader.status, reader.length) == (200, size)
        first = reader.read(MiB)
        obstore.put(seaweed.store(), key, new)  # replaced while the client is still reading
        got = first + reader.rest()
    finally:
        reader.close()
    # What came is the old version's, never a mix; a full-length body is the old one, byte for byte.
    assert got == old[: len(got)]
    if zero_copy == "off":
        assert len(got) < size  # each window pinned to the old ETag: the download fails, visibly
    if len(got) < size:
        assert wait_for(lambda: "changed while it was being sent" in server.log.read_text())
    after = httpx.get(f"{server.url}/files/moving.bin", timeout=PATIENCE)
    assert after.status_code == 200 and after.content == new  # and the server keeps serving


@pytest.mark.clients
def test_slow_readers_of_a_large_object_hold_bounded_memory(seaweed: Seaweed, serve: Serve) -> None:
    prefix = new_prefix("memory")
    size = 128 * MiB
    data = os.urandom(size)
    store = seaweed.store()
    obstore.put(store, f"{prefix}/large.bin", data)
    obstore.put(store, f"{prefix}/warm.bin", data[: 4 * MiB])
    server = serve(prefix, "--no-checksums")  # the downloads' memory alone, no hashing beside them
    warm = httpx.get(f"{server.url}/files/warm.bin", timeout=PATIENCE)  # the store's runtime and pool
    assert warm.content == data[: 4 * MiB]
    baseline = server.rss_bytes()
    peak = baseline

    def sample() -> None:
        nonlocal peak
        peak = max(peak, server.rss_bytes())

    readers = [SlowReader(server.port, "/files/large.bin") for _ in range(2)]
    try:
        for reader in readers:
            assert (reader.status, reader.length) == (200, size)
            assert reader.read(MiB) == data[:MiB]
        until_idle(server, sample)  # both stalled: whatever Ferry holds for them, it holds now
        stalled = peak - baseline
        bodies = [data[:MiB] + reader.rest(sample) for reader in readers]
    finally:
        for reader in readers:
            reader.close()
    assert all(b == data for b in bodies)
    # Whole-object buffering would hold `size` per connection; the windows read ahead and the one
    # being sent hold about 11 MiB per connection here (23 MiB for two stalled, 27 at the peak).
    assert stalled < size // 2, f"{stalled / MiB:.0f} MiB held for two stalled readers"
    assert peak - baseline < size, f"{(peak - baseline) / MiB:.0f} MiB over the downloads"


def _abort(server: FerryServer, path: str) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    sock.recv(65536)
    sock.close()


@pytest.mark.clients
def test_metrics_and_access_log_count_bucket_downloads(seaweed: Seaweed, serve: Serve) -> None:
    prefix = new_prefix("metrics")
    data = os.urandom(256 * KiB)
    store = seaweed.store()
    obstore.put(store, f"{prefix}/f.bin", data)
    obstore.put(store, f"{prefix}/big.bin", os.urandom(16 * MiB))
    server = serve(prefix, "--log-format", "json")
    url = f"{server.url}/files/f.bin"
    with httpx.Client(timeout=PATIENCE) as client:
        etag = client.head(url).headers["etag"]
        before = scrape(server)
        assert client.get(url).content == data
        assert (
            client.get(url, headers={"Range": "bytes=0-99", "User-Agent": "probe/1.0"}).content == data[:100]
        )
        assert client.get(url, headers={"Range": "bytes=0-9,100-109"}).status_code == 206
        assert client.get(url, headers={"Range": "bytes=10-19", "If-Range": etag}).status_code == 206
        assert client.get(url, headers={"Range": "bytes=10-19", "If-Range": '"stale"'}).status_code == 200
        assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
        assert client.get(url, headers={"If-Match": '"nope"'}).status_code == 412
        assert client.get(url, headers={"Range": "bytes=999999-"}).status_code == 416
    _abort(server, "/files/big.bin")
    scrapes = 1
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        after = scrape(server)
        if delta(before, after, "ferry_client_aborts_total") >= 1:
            break
        scrapes += 1
        time.sleep(0.1)
    get = 'ferry_http_requests_total{method="GET",status="%s"}'
    assert delta(before, after, get % "200") == 3 + scrapes
    assert delta(before, after, get % "206") == 3
    assert delta(before, after, get % "304") == 1
    assert delta(before, after, get % "412") == 1
    assert delta(before, after, get % "416") == 1
    assert delta(before, after, 'ferry_range_responses_total{kind="single"}') == 2
    assert delta(before, after, 'ferry_range_responses_total{kind="multipart"}') == 1
    assert delta(before, after, 'ferry_if_range_total{result="hit"}') == 1
    assert delta(before, after, 'ferry_if_range_total{result="miss"}') == 1
    assert delta(before, after, 'ferry_bytes_sent_total{status="200"}') >= 2 * len(data)
    assert delta(before, after, 'ferry_bytes_sent_total{status="206"}') > 120
    assert delta(before, after, "ferry_client_aborts_total") == 1
    assert delta(before, after, "ferry_undelivered_bytes_total") > 0
    assert after["ferry_downloads_in_flight"] == 0

    def lines() -> list[dict[str, object]]:
        text = server.access_log.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    assert wait_for(lambda: any(line["path"] == "/files/big.bin" for line in lines()))
    logged = [(line["path"], line["status"]) for line in lines()]
    assert logged.count(("/files/f.bin", 206)) == 3 and logged.count(("/files/f.bin", 412)) == 1
    ranged = next(line for line in lines() if line.get("user_agent") == "probe/1.0")
    assert ranged["status"] == 206 and ranged["bytes"] == 100 and ranged["range"] == "bytes=0-99"
    aborted = next(line for line in lines() if line["path"] == "/files/big.bin")
    assert aborted["status"] == 200 and aborted["aborted"] is True
    assert int(str(aborted["bytes"])) < 16 * MiB


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(int(PATIENCE)), *args], capture_output=True, timeout=2 * PATIENCE
    )


@pytest.mark.clients
def test_redirect_mode_sends_clients_to_a_presigned_url_after_ferrys_own_checks(
    seaweed: Seaweed, serve: Serve, tmp_path: Path
) -> None:
    prefix = new_prefix("redirect")
    data = os.urandom(3 * MiB + 17)
    store = seaweed.store()
    obstore.put(store, f"{prefix}/dir/file name.bin", data)
    obstore.put(store, f"{prefix}/.hidden", b"hidden\n")
    public = serve(prefix, "--s3-downloads", "redirect")
    url = f"{public.url}/files/dir/file%20name.bin"

    moved = httpx.get(url)
    assert moved.status_code == 302 and moved.content == b""
    location = moved.headers["location"]
    assert location.startswith(seaweed.endpoint + "/") and "X-Amz-Signature=" in location
    assert moved.headers["cache-control"] == "no-store"
    out = tmp_path / "out.bin"
    done = curl("-L", "-o", str(out), url)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == data  # byte-identical, from the store itself
    part = curl("-L", "-r", "100-199", url)
    assert part.returncode == 0 and part.stdout == data[100:200]
    head = httpx.head(url)  # HEAD is answered by Ferry itself
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    for path in ("/files/.hidden", "/files/dir/missing.bin"):
        answer = httpx.get(public.url + path)
        assert answer.status_code == 404 and "location" not in answer.headers, path

    token = serve(prefix, "--s3-downloads", "redirect", "--download-auth", "token", "--read-tokens", READ)
    tokened = f"{token.url}/files/dir/file%20name.bin"
    for headers in ({}, {"authorization": "Bearer wrong"}):
        refused = httpx.get(tokened, headers=headers)
        assert refused.status_code == 401 and "location" not in refused.headers
        assert refused.headers["www-authenticate"].startswith("Bearer")
    allowed = httpx.get(tokened, headers={"authorization": f"Bearer {READ}"})
    assert allowed.status_code == 302 and "X-Amz-Signature=" in allowed.headers["location"]
    # Following it (httpx drops Authorization on the way to another origin): the same bytes.
    followed = httpx.get(tokened, headers={"authorization": f"Bearer {READ}"}, follow_redirects=True)
    assert followed.status_code == 200 and followed.content == data

    signed = serve(prefix, "--s3-downloads", "redirect", "--download-auth", "signed", "--signing-keys", KEY)
    link = mint(signed, "dir", prefix=True, key=KEY)
    query = link.partition("?")[2]
    assert httpx.get(f"{signed.url}/files/dir/file%20name.bin?{query}").status_code == 302
    assert httpx.get(f"{signed.url}/files/dir/file%20name.bin").status_code == 401
    outside = httpx.get(f"{signed.url}/files/.hidden?{query}")
    assert outside.status_code == 403 and "location" not in outside.headers
    done = curl("-L", "-o", str(out), f"{signed.url}/files/dir/file%20name.bin?{query}")
    assert done.returncode == 0 and out.read_bytes() == data


def stored_crc32s(cwd: Path) -> dict[str, int | None]:
    """The CRC-32 a server's index keeps for each object it lists (read behind its back)."""
    (db,) = cwd.glob("var/index-s3-*.sqlite3")
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        rows = conn.execute(
            "SELECT e.name, d.crc32 FROM entries e LEFT JOIN digests d ON d.dev = e.dev AND d.ino = e.ino "
            "AND d.size = e.size AND d.mtime_ns = e.mtime_ns WHERE NOT e.is_dir"
        ).fetchall()
    return dict(rows)


@pytest.mark.clients
def test_the_hasher_reads_only_objects_without_a_stored_sha256_and_crc32(
    seaweed: Seaweed, serve: Serve, tmp_path: Path
) -> None:
    prefix = new_prefix("hasher")
    stored, bare, old = os.urandom(3 * MiB), os.urandom(5 * MiB + 1), os.urandom(100 * KiB)
    store = seaweed.store()
    attributes = {"sha256": hashlib.sha256(stored).hexdigest(), "crc32": f"{zlib.crc32(stored):08x}"}
    obstore.put(store, f"{prefix}/stored.bin", stored, attributes=attributes)
    obstore.put(store, f"{prefix}/bare.bin", bare)
    # As an older Ferry stored it: a SHA-256 and no CRC-32, which a ZIP entry needs: read once.
    obstore.put(store, f"{prefix}/old.bin", old, attributes={"sha256": hashlib.sha256(old).hexdigest()})
    server = serve(prefix)  # a fresh process: its hashing counters start at 0

    def sums(name: str) -> httpx.Response:
        return httpx.get(f"{server.url}/files/{name}?checksums", timeout=PATIENCE)

    assert wait_for(lambda: sums("bare.bin").status_code == 200, timeout=2 * PATIENCE)
    assert sums("bare.bin").text.split() == [hashlib.sha256(bare).hexdigest(), "bare.bin"]
    assert httpx.get(f"{server.url}/files/bare.bin", timeout=PATIENCE).headers["repr-digest"] == sha256_field(
        bare
    )
    meta4 = httpx.get(f"{server.url}/files/bare.bin?meta4", timeout=PATIENCE)
    assert meta4.status_code == 200 and "<pieces" in meta4.text  # a large object's piece hashes too
    listed = httpx.get(f"{server.url}/files/?format=json", timeout=PATIENCE).json()
    digests = {entry["name"]: entry["sha256"] for entry in listed["entries"]}
    assert digests["bare.bin"] == hashlib.sha256(bare).hexdigest()
    assert wait_for(lambda: scrape(server).get("ferry_hashed_files_total", 0.0) >= 2, timeout=2 * PATIENCE)
    after = scrape(server)
    assert after["ferry_hashed_bytes_total"] == len(bare) + len(old)  # the stored object was never read
    assert after["ferry_hashed_files_total"] == 2
    assert sums("stored.bin").text.split() == [hashlib.sha256(stored).hexdigest(), "stored.bin"]
    expected = {"stored.bin": zlib.crc32(stored), "bare.bin": zlib.crc32(bare), "old.bin": zlib.crc32(old)}
    assert wait_for(lambda: stored_crc32s(tmp_path / "cwd-0") == expected)

    def listed_digest(name: str) -> str | None:
        listing = httpx.get(f"{server.url}/files/?format=json", timeout=PATIENCE).json()
        digests: dict[str, str | None] = {e["name"]: e["sha256"] for e in listing["entries"]}
        return digests[name]

    assert wait_for(lambda: listed_digest("stored.bin") == hashlib.sha256(stored).hexdigest())
    assert scrape(server)["ferry_hashed_bytes_total"] == len(bare) + len(old)
