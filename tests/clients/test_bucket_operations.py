"""Ferry on a bucket as it is operated: replicas, and the store failing under it.

- Two replicas: two `ferry serve` processes sharing nothing but the bucket and the settings (write
  token, signing keys), each with its own FERRY_ROOT and index. What one writes the other serves
  at once (downloads ask the bucket); what appears in the bucket shows in the other's listings and
  search within FERRY_RESCAN_INTERVAL; a link one signs the other honours.
- The engine stopped mid-download: the client gets a short body (never a complete-looking one),
  Ferry logs it and keeps serving: /healthz and other requests answer 503, none hangs.
- The engine down at start-up: Ferry starts anyway, /healthz 503, and recovers when it returns.
- Wrong credentials, a missing bucket: `ferry serve` exits 2 with one line naming the problem.

The failure tests use a private engine (they stop it); the rest share the session's.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import obstore
import pytest

from tests.support.replicas import (
    MiB,
    bucket_env,
    fresh_prefix,
    launch_bucket,
    plant,
    random_blob,
    serve_bucket,
    stop_cleanly,
    stopping,
    workdir,
)
from tests.support.seaweed import Seaweed, relaunch, started, wait_ready
from tests.support.servers import PATIENCE, FerryServer, free_port, wait_for

pytestmark = [pytest.mark.clients, pytest.mark.engine]

TOKEN = "replica-write-token-" + "x" * 16
KEYS = "replica-signing-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RESCAN = 1  # FERRY_RESCAN_INTERVAL of the replicas, seconds
# How long a request may take while the store is down: its retries, not a hang.
ANSWER_DEADLINE = 120.0


# --------------------------------------------------------------------------- two replicas


@dataclass(frozen=True)
class Replicas:
    a: FerryServer
    b: FerryServer
    prefix: str


@pytest.fixture(scope="module")
def replicas(seaweed: Seaweed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    prefix = fresh_prefix("replicas")
    plant(seaweed, prefix, {"seed.txt": b"there from the start\n"})
    env = bucket_env(
        seaweed,
        prefix,
        write_token=TOKEN,
        signing_keys=KEYS,
        download_auth="signed",  # a read needs a signed link or a token
        rescan_interval=str(RESCAN),
    )
    base = tmp_path_factory.mktemp("replicas")
    for servers in stopping([]):
        servers.append(serve_bucket(base, "a", env))
        servers.append(serve_bucket(base, "b", env))
        yield Replicas(servers[0], servers[1], prefix)


def url(server: FerryServer, rel: str) -> str:
    return f"{server.url}/files/{quote(rel)}"


def listing(server: FerryServer, folder: str) -> dict[str, dict[str, Any]]:
    answer = httpx.get(f"{url(server, folder)}/?format=json", headers=AUTH, timeout=PATIENCE)
    if answer.status_code == 404:
        return {}
    assert answer.status_code == 200, answer.text
    return {entry["name"]: entry for entry in answer.json()["entries"]}


def found(server: FerryServer, query: str) -> set[str]:
    answer = httpx.get(f"{server.url}/api/search", params={"q": query}, headers=AUTH, timeout=PATIENCE)
    assert answer.status_code == 200, answer.text
    return {entry["path"] for entry in answer.json()["entries"]}


def api_listing(server: FerryServer, folder: str) -> dict[str, dict[str, Any]]:
    answer = httpx.get(f"{server.url}/api/files/{quote(folder)}", headers=AUTH, timeout=PATIENCE)
    if answer.status_code == 404:
        return {}
    assert answer.status_code == 200, answer.text
    return {entry["name"]: entry for entry in answer.json()["entries"]}


def listed_everywhere(server: FerryServer, folder: str, name: str) -> bool:
    return (
        name in listing(server, folder)
        and name in api_listing(server, folder)
        and f"{folder}/{name}" in found(server, name)
    )


def appears_in_listing_and_search(server: FerryServer, folder: str, name: str) -> bool:
    """Whether `folder/name` is in the server's listings of `folder` (the page's JSON and the API)
    and found by its name; waits up to several rescan intervals (a round lists the whole prefix)
    with a generous deadline."""
    return wait_for(lambda: listed_everywhere(server, folder, name), timeout=PATIENCE + 10 * RESCAN)


def test_an_upload_through_one_replica_downloads_through_the_other_at_once(replicas: Replicas) -> None:
    data, digest = random_blob(3 * MiB + 5)  # a few of the downloads' windows
    put = httpx.put(url(replicas.a, "up/from-a.bin"), content=data, headers=AUTH, timeout=PATIENCE)
    assert put.status_code == 201, (put.status_code, put.text)
    # At once: B asks the bucket, not its index.
    got = httpx.get(url(replicas.b, "up/from-a.bin"), headers=AUTH, timeout=PATIENCE)
    assert got.status_code == 200, got.text
    assert hashlib.sha256(got.content).hexdigest() == digest
    assert got.headers["etag"] == httpx.head(url(replicas.a, "up/from-a.bin"), headers=AUTH).headers["etag"]
    assert appears_in_listing_and_search(replicas.b, "up", "from-a.bin")


def test_a_delete_through_one_replica_is_gone_from_the_other(replicas: Replicas, seaweed: Seaweed) -> None:
    plant(seaweed, replicas.prefix, {"gone/doomed.txt": b"soon gone\n", "gone/kept.txt": b"kept\n"})
    assert appears_in_listing_and_search(replicas.b, "gone", "doomed.txt")
    deleted = httpx.delete(url(replicas.a, "gone/doomed.txt"), headers=AUTH, timeout=PATIENCE)
    assert deleted.status_code == 204, (deleted.status_code, deleted.text)
    # At once for downloads; within a listing round for B's listings and search.
    assert httpx.get(url(replicas.b, "gone/doomed.txt"), headers=AUTH, timeout=PATIENCE).status_code == 404
    assert wait_for(
        lambda: set(listing(replicas.b, "gone")) == {"kept.txt"} and not found(replicas.b, "doomed"),
        timeout=PATIENCE + 10 * RESCAN,
    )


def test_an_object_put_in_the_bucket_is_served_and_listed_by_both(
    replicas: Replicas, seaweed: Seaweed
) -> None:
    data, digest = random_blob(2 * MiB + 7)
    plant(seaweed, replicas.prefix, {"planted/late arrival.bin": data})
    for server in (replicas.a, replicas.b):
        got = httpx.get(url(server, "planted/late arrival.bin"), headers=AUTH, timeout=PATIENCE)
        assert got.status_code == 200, got.text
        assert hashlib.sha256(got.content).hexdigest() == digest
    for server in (replicas.a, replicas.b):
        assert appears_in_listing_and_search(server, "planted", "late arrival.bin"), server.url
    # Both replicas give the object the same strong ETag, in listings as in downloads.
    etags = {listing(s, "planted")["late arrival.bin"]["etag"] for s in (replicas.a, replicas.b)}
    head = httpx.head(url(replicas.b, "planted/late arrival.bin"), headers=AUTH, timeout=PATIENCE)
    assert etags == {head.headers["etag"]}


def test_a_link_signed_by_one_replica_works_on_the_other(replicas: Replicas) -> None:
    # Unsigned and tokenless, B refuses: the link is what lets the read through.
    assert httpx.get(url(replicas.b, "seed.txt"), timeout=PATIENCE).status_code in (401, 403)
    signed = httpx.post(
        f"{replicas.a.url}/api/sign", json={"path": "seed.txt", "ttl": "10m"}, headers=AUTH, timeout=PATIENCE
    )
    assert signed.status_code == 200, signed.text
    got = httpx.get(replicas.b.url + signed.json()["href"], timeout=PATIENCE)
    assert got.status_code == 200, got.text
    assert got.content == b"there from the start\n"
    tampered = signed.json()["href"].replace("seed.txt", "seed.txt%00")
    assert httpx.get(replicas.b.url + tampered, timeout=PATIENCE).status_code != 200


# --------------------------------------------------------------------------- the engine fails


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Seaweed]:
    """An engine of the test's own: it may stop it."""
    yield from started(tmp_path / "engine")


@pytest.fixture
def servers() -> Iterator[list[FerryServer]]:
    """The test's own servers, each stopped when it ends."""
    yield from stopping([])


def engine_reads(engine: Seaweed, key: str) -> bool:
    """Whether the engine itself serves the object's bytes (not only its listing)."""
    try:
        return bool(obstore.get(engine.store(), key).bytes())
    except Exception:
        return False


def log_of(server: FerryServer) -> str:
    return server.log.read_text(errors="replace")


def healthz(server: FerryServer) -> int:
    return httpx.get(f"{server.url}/healthz", timeout=ANSWER_DEADLINE).status_code


def test_the_engine_stopped_mid_download_cuts_the_body_short_and_ferry_keeps_serving(
    engine: Seaweed, servers: list[FerryServer], tmp_path: Path
) -> None:
    prefix = fresh_prefix("cut")
    data, _ = random_blob(48 * MiB)
    plant(engine, prefix, {"big.bin": data, "small.txt": b"small\n"})
    server = serve_bucket(tmp_path, "ferry", bucket_env(engine, prefix))
    servers.append(server)
    received = bytearray()
    with httpx.stream("GET", url(server, "big.bin"), timeout=ANSWER_DEADLINE) as answer:
        assert answer.status_code == 200
        length = int(answer.headers["content-length"])
        chunks = answer.iter_raw()
        while len(received) < 2 * MiB:
            received += next(chunks)
        engine.stop()  # the store goes away with most of the object still to send
        with pytest.raises(httpx.RemoteProtocolError):  # the connection ends before the last byte
            for chunk in chunks:
                received += chunk
    assert 2 * MiB <= len(received) < length == len(data)
    assert bytes(received) == data[: len(received)]  # what came is right, only short
    assert wait_for(lambda: "the storage stopped answering during a download" in log_of(server))
    assert server.process.poll() is None
    assert wait_for(lambda: healthz(server) == 503)
    # Another request gets an answer, not a hang: the store is unreachable.
    assert httpx.get(url(server, "small.txt"), timeout=ANSWER_DEADLINE).status_code == 503
    assert "Traceback" not in log_of(server), log_of(server)
    assert not (problem := stop_cleanly(server)), problem  # with its store gone


def test_the_engine_down_at_start_up_then_back(
    engine: Seaweed, servers: list[FerryServer], tmp_path: Path
) -> None:
    prefix = fresh_prefix("late")
    plant(engine, prefix, {"docs/hello.txt": b"hello from the bucket\n"})
    engine.stop()
    server = launch_bucket(tmp_path, "ferry", bucket_env(engine, prefix, rescan_interval=str(RESCAN)))
    servers.append(server)
    assert "serving anyway" in log_of(server), log_of(server)
    assert healthz(server) == 503
    assert httpx.get(url(server, "docs/hello.txt"), timeout=ANSWER_DEADLINE).status_code == 503
    back = relaunch(engine)
    try:
        wait_ready(back)
        # The engine answers listings before its volume server is back on a loaded machine.
        assert wait_for(lambda: engine_reads(back, prefix + "docs/hello.txt"), timeout=4 * PATIENCE)
        assert wait_for(lambda: healthz(server) == 200, timeout=4 * PATIENCE)
        got = httpx.get(url(server, "docs/hello.txt"), timeout=PATIENCE)
        assert (got.status_code, got.content) == (200, b"hello from the bucket\n")
        # The index's listing rounds resume too.
        assert wait_for(lambda: "hello.txt" in listing(server, "docs"), timeout=4 * PATIENCE)
        assert not (problem := stop_cleanly(server)), problem
    finally:
        back.stop()


def refused_start(env: dict[str, str], base: Path) -> subprocess.CompletedProcess[str]:
    root, cwd = workdir(base, "refused")
    args = [sys.executable, "-m", "app", "serve", "--root", str(root), "--host", "127.0.0.1"]
    args += ["--port", str(free_port())]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "AWS_"))}
    return subprocess.run(
        args, cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=ANSWER_DEADLINE
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("AWS_SECRET_ACCESS_KEY", "not-the-secret"), ("AWS_ACCESS_KEY_ID", "nobody-we-know")],
)
def test_wrong_credentials_exit_2_with_one_line(
    seaweed: Seaweed, tmp_path: Path, variable: str, value: str
) -> None:
    env = {**bucket_env(seaweed, fresh_prefix("creds")), variable: value}
    done = refused_start(env, tmp_path)
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ferry: FERRY_STORAGE=s3://ferry/creds-"), lines
    assert "refused Ferry's credentials" in lines[0], lines
    assert seaweed.secret_key not in done.stderr and value not in done.stderr


def test_a_missing_bucket_exits_2_with_one_line(seaweed: Seaweed, tmp_path: Path) -> None:
    env = {**seaweed.env(), "FERRY_STORAGE": "s3://no-such-bucket/x"}
    done = refused_start(env, tmp_path)
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "s3://no-such-bucket" in lines[0] and "does not exist" in lines[0], lines
