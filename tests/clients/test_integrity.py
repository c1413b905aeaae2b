"""Checksums every client can verify, against a real `ferry serve` (issue 8).

RFC 9530 `Repr-Digest` (and RFC 3230 `Digest`) equal `sha256sum` of the file on disk for 200, 206,
HEAD and 304; a replaced file is never paired with its old digest; uploads are verified against
`Content-Digest`; SHA256SUMS passes `sha256sum -c` over a `wget -r` mirror; aria2 verifies a
download through the `.meta4` and notices a corrupted mirror; the background hasher waits while a
download is in flight.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import os
import random
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.clients.test_real_clients import run, tool
from tests.conftest import FerryServer, ServerFactory, wait_for
from tests.support.servers import BOTH_TRANSFER_PATHS

pytestmark = pytest.mark.clients

MiB = 1024**2
TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAST = time.time() - 3600  # an mtime old enough for the background hasher to trust at once


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def repr_digest(data: bytes, algorithm: str = "sha-256") -> str:
    digest = hashlib.new(algorithm.replace("-", ""), data).digest()
    return f"{algorithm}=:{base64.b64encode(digest).decode()}:"


def write_old(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (PAST, PAST))


def hashed(server: FerryServer, path: str) -> bool:
    return httpx.get(f"{server.url}/api/files/{quote(path)}").json()["sha256"] is not None


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    rng = random.Random(8)
    write_old(root / "big.bin", rng.randbytes(9 * MiB + 123))  # three 4 MiB pieces
    write_old(root / "small.txt", b"hello, ferry\n")
    write_old(root / "empty.bin", b"")
    write_old(root / "docs" / "guide v1.txt", rng.randbytes(5000))
    write_old(root / "docs" / "ünï cödé ✓.md", rng.randbytes(70_000))
    write_old(root / "docs" / "deep" / "a b #1.bin", rng.randbytes(1_500_000))
    write_old(root / "docs" / ".hidden", b"never listed\n")
    return root


# -- headers on downloads --------------------------------------------------------------------


@BOTH_TRANSFER_PATHS
def test_repr_digest_equals_sha256sum_for_200_206_head_and_304(ferry: ServerFactory, tree: Path) -> None:
    server = ferry(tree)
    for name in ("big.bin", "small.txt", "empty.bin", "docs/ünï cödé ✓.md"):
        assert wait_for(functools.partial(hashed, server, name), 20), name
        data = (tree / name).read_bytes()
        on_disk = subprocess.run(["sha256sum", str(tree / name)], capture_output=True, text=True, check=True)
        expected = base64.b64encode(bytes.fromhex(on_disk.stdout.split()[0])).decode()
        url = f"{server.url}/files/{quote(name)}"
        full = httpx.get(url)
        assert full.status_code == 200 and full.content == data
        assert full.headers["repr-digest"] == f"sha-256=:{expected}:"
        assert full.headers["digest"] == f"SHA-256={expected}"
        assert full.headers["link"].startswith(f"</files/{quote(name)}?meta4>; rel=describedby")
        head = httpx.head(url)
        assert head.headers["repr-digest"] == f"sha-256=:{expected}:"
        not_modified = httpx.get(url, headers={"If-None-Match": full.headers["etag"]})
        assert not_modified.status_code == 304
        assert not_modified.headers["repr-digest"] == f"sha-256=:{expected}:"
        if data:
            part = httpx.get(url, headers={"Range": f"bytes=1-{len(data) // 2}"})
            assert part.status_code == 206 and part.content == data[1 : len(data) // 2 + 1]
            # The digest of the whole representation, not of the part.
            assert part.headers["repr-digest"] == f"sha-256=:{expected}:"
        if len(data) > 10:
            multi = httpx.get(url, headers={"Range": "bytes=0-1,5-6"})
            assert multi.status_code == 206
            assert multi.headers["content-type"].startswith("multipart/byteranges")
            assert multi.headers["repr-digest"] == f"sha-256=:{expected}:"


def test_digest_is_in_the_api_listing_and_html(ferry: ServerFactory, tree: Path) -> None:
    server = ferry(tree)
    assert wait_for(lambda: hashed(server, "docs/guide v1.txt"), 20)
    listing = httpx.get(f"{server.url}/api/files/docs/").json()
    by_name = {e["name"]: e for e in listing["entries"]}
    assert by_name["guide v1.txt"]["sha256"] == sha256((tree / "docs" / "guide v1.txt").read_bytes()).hex()
    assert by_name["deep"]["sha256"] is None  # a directory has none
    search = httpx.get(f"{server.url}/api/search", params={"q": "guide"}).json()
    assert search["entries"][0]["sha256"] == by_name["guide v1.txt"]["sha256"]
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert "sha256" in schema["components"]["schemas"]["EntryModel"]["properties"]
    page = httpx.get(f"{server.url}/files/docs/").text
    assert by_name["guide v1.txt"]["sha256"] in page


@BOTH_TRANSFER_PATHS
def test_a_replaced_file_is_never_paired_with_its_old_digest(ferry: ServerFactory, tree: Path) -> None:
    """While a writer keeps replacing the file, every response's digest describes its own bytes."""
    server = ferry(tree)
    target = tree / "swap.bin"
    versions = [random.Random(i).randbytes(300_000 + i) for i in range(4)]
    write_old(target, versions[0])
    assert wait_for(lambda: hashed(server, "swap.bin"), 20)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            temp = tree / f".swap-{i}"
            write_old(temp, versions[i % len(versions)])  # settled at once: the hasher may trust it
            os.replace(temp, target)
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    checked = with_digest = 0
    try:
        with httpx.Client(base_url=server.url) as client:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                response = client.get("/files/swap.bin", headers={"Want-Repr-Digest": "sha-256=1"})
                assert response.status_code == 200
                assert response.content in versions
                checked += 1
                if "repr-digest" in response.headers:
                    with_digest += 1
                    assert response.headers["repr-digest"] == repr_digest(response.content)
                    assert (
                        response.headers["digest"]
                        == f"SHA-256={base64.b64encode(sha256(response.content)).decode()}"
                    )
    finally:
        stop.set()
        thread.join()
    assert checked > 20 and with_digest > 10, (checked, with_digest)


def test_want_repr_digest_computes_on_demand_within_the_limit(ferry: ServerFactory, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    fresh = random.Random(1).randbytes(2 * MiB)
    (root / "fresh.bin").write_bytes(fresh)
    (root / "large.bin").write_bytes(fresh * 2)
    future = time.time() + 3600  # modified "just now" for the whole test: the background hasher waits
    for name in ("fresh.bin", "large.bin"):
        os.utime(root / name, (future, future))
    server = ferry(root, "--hash-on-demand-max", "3MiB")
    url = f"{server.url}/files/fresh.bin"
    assert "repr-digest" not in httpx.head(url).headers
    wanted = httpx.get(url, headers={"Want-Repr-Digest": "sha-256=10"})
    assert wanted.content == fresh and wanted.headers["repr-digest"] == repr_digest(fresh)
    sha512 = httpx.get(url, headers={"Want-Repr-Digest": "sha-512=10, sha-256=1"})
    assert sha512.content == fresh and repr_digest(fresh, "sha-512") in sha512.headers["repr-digest"]
    head = httpx.head(url, headers={"Want-Repr-Digest": "sha-512=10"})  # a HEAD never hashes
    assert "sha-512" not in head.headers.get("repr-digest", "")
    not_wanted = httpx.get(url, headers={"Want-Repr-Digest": "sha-256=0"})
    assert not_wanted.status_code == 200
    over = httpx.get(f"{server.url}/files/large.bin", headers={"Want-Repr-Digest": "sha-256=10"})
    assert over.status_code == 200 and "repr-digest" not in over.headers  # answered without
    # Only fresh.bin was read, once per GET that wanted a digest: a file this fresh is not kept.
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "ferry_on_demand_hash_bytes_total 4.194304e+06" in metrics.splitlines()


# -- uploads ---------------------------------------------------------------------------------


def test_upload_with_a_right_and_a_wrong_content_digest(ferry: ServerFactory, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    server = ferry(root, env={"FERRY_WRITE_TOKEN": TOKEN})
    data = random.Random(2).randbytes(5 * MiB + 7)
    url = f"{server.url}/files/in/up.bin"
    good = httpx.put(url, content=data, headers={**AUTH, "Content-Digest": repr_digest(data)})
    assert good.status_code == 201
    assert good.headers["repr-digest"] == repr_digest(data)
    assert good.json()["sha256"] == sha256(data).hex()  # hashed as it streamed in: known at once
    assert httpx.head(url).headers["repr-digest"] == repr_digest(data)

    other = data[:-1] + b"!"
    for header in ("Content-Digest", "Repr-Digest"):
        bad = httpx.put(url, content=other, headers={**AUTH, header: repr_digest(data)})
        assert bad.status_code == 400 and "does not match" in bad.json()["detail"]
        assert (root / "in" / "up.bin").read_bytes() == data  # nothing kept
    sha512 = httpx.put(url, content=other, headers={**AUTH, "Content-Digest": repr_digest(other, "sha-512")})
    assert sha512.status_code == 204 and (root / "in" / "up.bin").read_bytes() == other
    wrong512 = httpx.put(url, content=data, headers={**AUTH, "Content-Digest": repr_digest(other, "sha-512")})
    assert wrong512.status_code == 400 and (root / "in" / "up.bin").read_bytes() == other
    unsupported = httpx.put(
        url, content=data, headers={**AUTH, "Content-Digest": "md5=:AAAAAAAAAAAAAAAAAAAAAA==:"}
    )
    assert unsupported.status_code == 400 and "sha-256" in unsupported.headers["want-content-digest"]
    malformed = httpx.put(url, content=data, headers={**AUTH, "Content-Digest": "sha-256=nope"})
    assert malformed.status_code == 400
    assert sorted(os.listdir(root / "in")) == ["up.bin"]  # no temporary file left behind


def test_multipart_upload_checks_part_and_body_digests(ferry: ServerFactory, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    server = ferry(root, env={"FERRY_WRITE_TOKEN": TOKEN})
    a, b = b"first file\n" * 1000, b"second file\n" * 1000

    def form(digest_of_a: bytes) -> tuple[bytes, str]:
        boundary = "ferryboundary42"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="a.txt"\r\n'
            f"Content-Digest: {repr_digest(digest_of_a)}\r\n\r\n"
        ).encode() + a
        body += (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="b.txt"\r\n\r\n'
        ).encode()
        body += b + f"\r\n--{boundary}--\r\n".encode()
        return body, f"multipart/form-data; boundary={boundary}"

    body, content_type = form(a)
    headers = {**AUTH, "Content-Type": content_type, "Content-Digest": repr_digest(body)}
    ok = httpx.post(f"{server.url}/files/up/", content=body, headers=headers)
    assert ok.status_code == 201, ok.text
    assert [e["sha256"] for e in ok.json()["entries"]] == [sha256(a).hex(), sha256(b).hex()]

    body, content_type = form(b)  # the part's digest is wrong
    wrong_part = httpx.post(
        f"{server.url}/files/up2/", content=body, headers={**AUTH, "Content-Type": content_type}
    )
    assert wrong_part.status_code == 400 and "a.txt" in wrong_part.json()["detail"]
    body, content_type = form(a)
    headers = {**AUTH, "Content-Type": content_type, "Content-Digest": repr_digest(body + b"x")}
    wrong_body = httpx.post(f"{server.url}/files/up2/", content=body, headers=headers)
    assert wrong_body.status_code == 400
    assert not (root / "up2").exists() or os.listdir(root / "up2") == []  # neither file kept


# -- SHA256SUMS --------------------------------------------------------------------------------


def test_sha256sum_checks_a_wget_mirror_with_the_served_sha256sums(ferry: ServerFactory, tree: Path) -> None:
    server = ferry(tree)
    mirror = tree.parent / "mirror"
    mirror.mkdir()
    args = ["-r", "-np", "-nH", "--cut-dirs=2", "-R", "index.html*", "-e", "robots=off", "-nv"]
    run("wget", *args, f"{server.url}/files/docs/", cwd=mirror)
    run("wget", "-nv", "-O", "SHA256SUMS", f"{server.url}/files/docs/?checksums=all", cwd=mirror)
    listed = (mirror / "SHA256SUMS").read_text()
    assert ".hidden" not in listed and len(listed.splitlines()) == 3
    result = run("sha256sum", "--strict", "-c", "SHA256SUMS", cwd=mirror)
    assert result.stdout.count(": OK") == 3, result.stdout
    # One directory's own files, as `sha256sum` would list them there.
    deep = httpx.get(f"{server.url}/files/docs/deep/?checksums")
    assert deep.headers["content-disposition"].startswith('attachment; filename="SHA256SUMS"')
    data = (tree / "docs" / "deep" / "a b #1.bin").read_bytes()
    assert deep.text == f"{sha256(data).hex()}  a b #1.bin\n"
    # A corrupted copy fails the check.
    with (mirror / "deep" / "a b #1.bin").open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\xff")
    failed = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=mirror, capture_output=True, text=True)
    assert failed.returncode == 1 and "a b #1.bin: FAILED" in failed.stdout


def test_a_file_checksum_line_checks_a_curl_download(ferry: ServerFactory, tree: Path) -> None:
    server = ferry(tree)
    out = tree.parent / "out"
    out.mkdir()
    name = "docs/ünï cödé ✓.md"
    url = f"{server.url}/files/{quote(name)}"
    run("curl", "-sS", "-o", "ünï cödé ✓.md", url, cwd=out)
    run("curl", "-sS", "-o", "file.sha256", url + "?checksums", cwd=out)  # hashed now if not yet
    result = run("sha256sum", "--strict", "-c", "file.sha256", cwd=out)
    assert result.stdout == "ünï cödé ✓.md: OK\n"


def test_sha256sums_waits_rather_than_leaving_files_out(ferry: ServerFactory, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.bin").write_bytes(random.Random(3).randbytes(2 * MiB))  # fresh: not hashed yet
    (root / "b.bin").write_bytes(b"b")
    server = ferry(root, "--hash-on-demand-max", "1MiB")
    busy = httpx.get(f"{server.url}/files/?checksums")
    if busy.status_code == 503:  # over the on-demand limit: try later, never a partial list
        assert int(busy.headers["retry-after"]) >= 1
    assert wait_for(lambda: hashed(server, "a.bin"), 20)
    done = httpx.get(f"{server.url}/files/?checksums")
    assert done.status_code == 200 and len(done.text.splitlines()) == 2


# -- Metalink and aria2 ------------------------------------------------------------------------


@BOTH_TRANSFER_PATHS
def test_aria2_downloads_through_the_metalink_and_verifies(ferry: ServerFactory, tree: Path) -> None:
    server = ferry(tree)
    assert wait_for(lambda: hashed(server, "big.bin") and hashed(server, "small.txt"), 20)
    out = tree.parent / "out"
    out.mkdir()
    for name in ("big.bin", "small.txt"):
        result = run(
            "aria2c", "--log=-", "--log-level=info", "-x4", "-s4", f"{server.url}/files/{name}?meta4", cwd=out
        )
        assert (out / name).read_bytes() == (tree / name).read_bytes()
        if name == "big.bin":  # three pieces, each checked against the .meta4's piece hashes
            assert result.stdout.count("Good chunk checksum") == 3, result.stdout
        else:
            assert "Verification finished successfully" in result.stdout, result.stdout


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_aria2_detects_a_corrupted_mirror(ferry: ServerFactory, tree: Path) -> None:
    """The .meta4 lists Ferry and its mirror; with Ferry out of reach, aria2 fetches from the
    mirror (a plain static server), and the piece hashes Ferry published show the damage."""
    data = (tree / "big.bin").read_bytes()
    damaged = bytearray(data)
    for offset in range(0, len(damaged), 1_000_000):
        damaged[offset] ^= 0xFF
    mirror_root = tree.parent / "mirror"
    mirror_root.mkdir()
    (mirror_root / "big.bin").write_bytes(damaged)
    handler = functools.partial(_Quiet, directory=str(mirror_root))
    mirror = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=mirror.serve_forever, daemon=True).start()
    try:
        server = ferry(tree, env={"FERRY_MIRRORS": f"http://127.0.0.1:{mirror.server_port}"})
        assert wait_for(lambda: hashed(server, "big.bin"), 20)
        head = httpx.head(f"{server.url}/files/big.bin")
        assert f"<http://127.0.0.1:{mirror.server_port}/big.bin>; rel=duplicate" in head.headers["link"]
        out = tree.parent / "out"
        out.mkdir()
        (out / "big.meta4").write_bytes(httpx.get(f"{server.url}/files/big.bin?meta4").content)
        server.stop()
        result = subprocess.run(
            [
                tool("aria2c"),
                "--log=-",
                "--log-level=info",
                "--max-tries=2",
                "--retry-wait=0",
                "-M",
                "big.meta4",
            ],
            cwd=out,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0, result.stdout
        assert "Chunk checksum validation failed" in result.stdout
        assert f"127.0.0.1:{mirror.server_port}" in result.stdout  # it did fetch from the mirror
    finally:
        mirror.shutdown()
        mirror.server_close()


def test_metalink_for_a_file_not_hashed_yet(ferry: ServerFactory, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = random.Random(4).randbytes(3 * MiB)
    (root / "fresh.bin").write_bytes(data)
    (root / "x.bin").write_bytes(data)
    server = ferry(root, "--hash-on-demand-max", "1MiB", "--no-checksums")
    # Too large to hash during the request, and no background hashing: 503, try later.
    later = httpx.get(f"{server.url}/files/fresh.bin?meta4")
    assert later.status_code == 503 and "retry-after" in later.headers
    assert "link" not in httpx.head(f"{server.url}/files/fresh.bin").headers
    missing = httpx.get(f"{server.url}/files/nope.bin?meta4")
    assert missing.status_code == 404


# -- the background hasher -------------------------------------------------------------------


def test_background_hashing_waits_while_a_download_is_in_flight(ferry: ServerFactory, tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_old(root / "slow.bin", random.Random(5).randbytes(64 * MiB))
    server = ferry(root)
    assert wait_for(lambda: hashed(server, "slow.bin"), 30)
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.sendall(b"GET /files/slow.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")  # a download now in flight, stalled
        write_old(root / "new.txt", b"arrived during the download\n")
        assert wait_for(lambda: httpx.get(f"{server.url}/api/files/new.txt").status_code == 200)
        time.sleep(2.0)
        assert not hashed(server, "new.txt")  # the hasher waits
    assert wait_for(lambda: hashed(server, "new.txt"), 20)  # and resumes when the transfer ends


def test_digests_survive_a_restart(ferry: ServerFactory, tree: Path, tmp_path: Path) -> None:
    index = tmp_path / "index.sqlite3"
    first = ferry(tree, "--index-path", str(index))
    assert wait_for(lambda: hashed(first, "big.bin"), 20)
    first.stop()
    second = ferry(tree, "--index-path", str(index), "--no-checksums")  # no hashing: only what is stored
    assert httpx.head(f"{second.url}/files/big.bin").headers["repr-digest"] == repr_digest(
        (tree / "big.bin").read_bytes()
    )
