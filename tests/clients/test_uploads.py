"""Uploads against a real `ferry serve`: PUT, multipart POST and DELETE under /files/ (issue 5).

Streamed to disk with flat memory, atomic (old file or new one, never a partial one), nothing left
behind by an aborted upload, bounded (413/507), conditional (412), authenticated (401/405), and
never writing outside ROOT.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import CANARY, PATIENCE, FerryServer, ServerFactory, wait_for
from tests.support.multipart import multipart_body
from tests.support.raw import RawResponse, connect, read_response, request_head

pytestmark = pytest.mark.clients

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEMP_PREFIX = ".ferry-upload-"
TIMEOUT = httpx.Timeout(30.0)
CLEANUP_SECONDS = PATIENCE


# -- helpers ----------------------------------------------------------------------------------


def temp_files(root: Path) -> list[Path]:
    """Every upload temporary file under `root` (symlinks are not followed)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [Path(dirpath, n) for n in [*dirnames, *filenames] if n.startswith(TEMP_PREFIX)]
    return found


def no_temp_files(root: Path) -> bool:
    return not temp_files(root)


def assert_cleaned_up(root: Path) -> None:
    assert wait_for(lambda: no_temp_files(root), CLEANUP_SECONDS), f"left behind: {temp_files(root)}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def url_for(server: FerryServer, path: str) -> str:
    return f"{server.url}/files/{quote(path)}"


def curl(
    *args: str, cwd: Path, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run curl with an empty HOME (no ~/.curlrc); returns the completed process (not checked)."""
    path = shutil.which("curl")
    assert path is not None, "curl is not installed; `make test` (make tools) installs it"
    home = cwd / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "HOME": str(home)}
    return subprocess.run(
        [path, *args], cwd=cwd, env=env, input=stdin, capture_output=True, timeout=timeout, check=False
    )


def outside_snapshot(base: Path, root: Path) -> dict[str, str]:
    """Every entry under `base` outside ROOT: file hashes, symlink targets, directories.

    The server's working directory is recorded by name only (its log grows); its index is skipped.
    """
    snapshot: dict[str, str] = {}
    workdir = base / "cwd"
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = [n for n in dirnames if here / n not in (root, workdir / "var")]
        for name in [*dirnames, *filenames]:
            path = here / name
            key = str(path.relative_to(base))
            if path.is_symlink():
                snapshot[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                snapshot[key] = "dir"
            elif workdir in path.parents:
                snapshot[key] = "file"
            else:
                snapshot[key] = sha256_file(path)
    return snapshot


# -- raw HTTP over a socket (no client library normalising paths or handling early answers) ----


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked transfer coding."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


def send_until_answered(sock: socket.socket, pieces: Iterable[bytes], pause: float = 0) -> int:
    """Send pieces until the server answers early (or closes); returns the bytes sent.

    `pause`: how long to wait for an answer before each piece (loopback buffers hold megabytes).
    """
    sent = 0
    for piece in pieces:
        readable, _, _ = select.select([sock], [], [], pause)
        if readable:
            break
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(piece)
    return sent


def raw_request(
    server: FerryServer, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> RawResponse:
    headers = {**(headers or {})}
    if method in ("PUT", "POST") and "Content-Length" not in headers and "Transfer-Encoding" not in headers:
        headers["Content-Length"] = str(len(body))
    with connect(server.port) as sock:
        sock.sendall(request_head(method, target, {**headers, "Connection": "close"}))
        # The server may answer (and close) before reading the body: stop sending then.
        send_until_answered(sock, (body[i : i + 64 * KiB] for i in range(0, len(body), 64 * KiB)))
        return read_response(sock)


def search_paths(server: FerryServer, query: str) -> set[str]:
    response = httpx.get(f"{server.url}/api/search", params={"q": query}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return {e["path"] for e in response.json()["entries"]}


def listing_names(server: FerryServer, directory: str) -> set[str]:
    target = f"{server.url}/files/{quote(directory)}/" if directory else f"{server.url}/files/"
    response = httpx.get(target, params={"format": "json"}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return {e["name"] for e in response.json()["entries"]}


def download(server: FerryServer, path: str) -> httpx.Response:
    return httpx.get(url_for(server, path), timeout=TIMEOUT)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def client_dir(tmp_path: Path) -> Path:
    path = tmp_path / "client"
    path.mkdir()
    return path


@pytest.fixture
def writable(ferry: ServerFactory, storage_tree: Path) -> FerryServer:
    """A server with writes enabled over the awkward storage tree."""
    return ferry(storage_tree, "--write-token", TOKEN)


# -- a large `curl -T`: streamed, flat memory, Expect: 100-continue ----------------------------


def write_big_file(path: Path, size: int) -> str:
    """A random-looking file written quickly: one random block, sent at a different offset each MiB."""
    block = os.urandom(2 * MiB)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(size // MiB):
            offset = (i * 7919) % MiB
            piece = block[offset : offset + MiB]
            f.write(piece)
            digest.update(piece)
    return digest.hexdigest()


class RssSampler(threading.Thread):
    """The largest RSS of a process seen while it runs."""

    def __init__(self, server: FerryServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak = server.rss_bytes()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.server.rss_bytes())
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def test_curl_T_of_1GiB_streams_to_disk_with_flat_memory(
    ferry: ServerFactory, tmp_path: Path, client_dir: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    server = ferry(root, "--write-token", TOKEN)
    source = client_dir / "big.bin"
    expected = write_big_file(source, GiB)

    # Refused without the token, quickly, before curl sends the body: curl waits for 100 Continue
    # (up to 10 s here, not its default 1 s, so a slow machine cannot make it send the body anyway).
    started = time.monotonic()
    refused = curl(
        "-sS", "--expect100-timeout", "10", "-T", str(source), "-o", "/dev/null",
        "-w", "%{http_code} %{size_upload}",
        url_for(server, "refused.bin"), cwd=client_dir,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    code, size_upload = refused.stdout.decode().split()
    assert code == "401", refused
    assert int(float(size_upload)) == 0, f"curl sent {size_upload} body bytes of a refused upload"
    assert elapsed < 5, f"a refused 1 GiB upload took {elapsed:.1f}s"
    assert not (root / "refused.bin").exists()
    assert no_temp_files(root)

    baseline = server.rss_bytes()
    with RssSampler(server) as rss:
        result = curl(
            "-sS", "-v", "-T", str(source), "-H", f"Authorization: Bearer {TOKEN}",
            "-o", str(client_dir / "response.json"), "-w", "%{http_code} %{size_upload}",
            url_for(server, "big.bin"), cwd=client_dir,
        )  # fmt: skip
    code, size_upload = result.stdout.decode().split()
    trace = result.stderr.decode(errors="replace")
    assert code == "201", trace
    assert int(float(size_upload)) == GiB
    assert "> Expect: 100-continue" in trace, trace
    assert "< HTTP/1.1 100 Continue" in trace, trace
    growth = rss.peak - baseline
    assert growth < 50 * MiB, f"server RSS grew by {growth / MiB:.1f} MiB during a 1 GiB upload"

    entry = json.loads((client_dir / "response.json").read_bytes())
    assert entry["path"] == "big.bin" and entry["size"] == GiB and entry["type"] == "file"
    assert sha256_file(root / "big.bin") == expected
    assert no_temp_files(root)

    digest = hashlib.sha256()
    size = 0
    with httpx.stream("GET", url_for(server, "big.bin"), timeout=TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["etag"] == entry["etag"]
        for block in response.iter_bytes(4 * MiB):
            digest.update(block)
            size += len(block)
    assert size == GiB
    assert digest.hexdigest() == expected


# -- chunked PUT ------------------------------------------------------------------------------


def test_chunked_put_from_curl_stdin(writable: FerryServer, storage_tree: Path, client_dir: Path) -> None:
    body = os.urandom(5 * MiB + 123)
    result = curl(
        "-sS", "-v", "-T", "-", "-H", f"Authorization: Bearer {TOKEN}", "-w", "\n%{http_code}",
        url_for(writable, "piped/stdin.bin"), cwd=client_dir, stdin=body,
    )  # fmt: skip
    trace = result.stderr.decode(errors="replace")
    assert "> Transfer-Encoding: chunked" in trace, trace
    assert "Content-Length" not in trace.split("< ", 1)[0], "curl declared a length"
    response_body, _, code = result.stdout.decode().rpartition("\n")
    assert code == "201", trace
    assert json.loads(response_body)["size"] == len(body)
    assert (storage_tree / "piped" / "stdin.bin").read_bytes() == body
    assert download(writable, "piped/stdin.bin").content == body
    assert no_temp_files(storage_tree)


def test_chunked_put_from_a_generator_replaces_a_file(writable: FerryServer, storage_tree: Path) -> None:
    pieces = [os.urandom(300 * KiB) for _ in range(7)]

    def body() -> Iterator[bytes]:
        yield from pieces

    response = httpx.put(url_for(writable, "hello.txt"), content=body(), headers=AUTH, timeout=TIMEOUT)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert (storage_tree / "hello.txt").read_bytes() == b"".join(pieces)
    assert download(writable, "hello.txt").content == b"".join(pieces)
    assert download(writable, "hello.txt").headers["etag"] == response.headers["etag"]


# -- multipart POST from curl -F ----------------------------------------------------------------


def test_multipart_post_of_several_files_from_curl(
    writable: FerryServer, storage_tree: Path, client_dir: Path
) -> None:
    files = {
        "alpha-upload.bin": os.urandom(3 * MiB + 17),
        "résumé ü 数据-upload.txt": "naïve café ✓\n".encode() * 1000,
        "empty-upload.txt": b"",
    }
    for name, content in files.items():
        (client_dir / name).write_bytes(content)
    form = [arg for i, name in enumerate(files) for arg in ("-F", f"file{i}=@{name}")]
    result = curl(
        "-sS", "-H", f"Authorization: Bearer {TOKEN}", *form, "-w", "\n%{http_code}",
        f"{writable.url}/files/inbox/", cwd=client_dir,
    )  # fmt: skip
    response_body, _, code = result.stdout.decode().rpartition("\n")
    assert code == "201", result
    entries = json.loads(response_body)["entries"]
    assert [e["name"] for e in entries] == list(files)
    for entry, (name, content) in zip(entries, files.items(), strict=True):
        assert entry["path"] == f"inbox/{name}"
        assert entry["type"] == "file" and entry["size"] == len(content)
        assert (storage_tree / "inbox" / name).read_bytes() == content
        got = httpx.get(writable.url + entry["url"], timeout=TIMEOUT)
        assert got.status_code == 200 and got.content == content
        assert got.headers["etag"] == entry["etag"]
    # In the index at once: no waiting for a watcher or a rescan.
    assert search_paths(writable, "-upload") == {f"inbox/{n}" for n in files}
    assert search_paths(writable, "résumé ü") == {"inbox/résumé ü 数据-upload.txt"}
    assert listing_names(writable, "inbox") == set(files)
    assert "inbox" in listing_names(writable, "")
    assert no_temp_files(storage_tree)


# -- interrupted uploads ------------------------------------------------------------------------

TARGETS = {"new": "fresh/cut.bin", "existing": "hello.txt"}


def _start_cut_upload(server: FerryServer, kind: str, path: str) -> socket.socket:
    """Start an upload of `kind` over a raw socket and send part of it (at least 2 MiB of data)."""
    sock = connect(server.port)
    target = "/files/" + quote(path)
    data = os.urandom(2 * MiB)
    if kind == "content-length":
        head = request_head("PUT", target, {**AUTH, "Content-Length": str(8 * MiB)})
        sock.sendall(head + data)
    elif kind == "chunked":
        head = request_head("PUT", target, {**AUTH, "Transfer-Encoding": "chunked"})
        sock.sendall(head + b"".join(chunk(data[i : i + 64 * KiB]) for i in range(0, len(data), 64 * KiB)))
        sock.sendall(b"%x\r\n" % MiB + os.urandom(1000))  # a chunk that never finishes
    else:
        directory, _, name = path.rpartition("/")
        boundary = "ferry-cut-" + secrets.token_hex(8)
        # A first file complete, the second one cut mid-part: neither may be kept.
        complete = multipart_body(boundary, [("a", b"first-of-cut.bin", os.urandom(100 * KiB))])
        complete = complete.removesuffix(f"--{boundary}--\r\n".encode())
        second = f'--{boundary}\r\nContent-Disposition: form-data; name="b"; filename="{name}"\r\n\r\n'
        body = complete + second.encode() + data
        head = request_head(
            "POST",
            "/files/" + quote(directory) + ("/" if directory else ""),
            {
                **AUTH,
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(8 * MiB),
            },
        )
        sock.sendall(head + body)
    return sock


@pytest.mark.parametrize("existing", ["new", "existing"])
@pytest.mark.parametrize("kind", ["content-length", "chunked", "multipart"])
def test_interrupted_upload_leaves_nothing_behind(
    writable: FerryServer, storage_tree: Path, kind: str, existing: str
) -> None:
    path = TARGETS[existing]
    target = storage_tree / path
    before = target.read_bytes() if target.exists() else None

    sock = _start_cut_upload(writable, kind, path)
    try:
        # The body is being streamed into a temporary file beside the target ...
        assert wait_for(lambda: any(p.stat().st_size >= MiB for p in temp_files(storage_tree))), (
            f"no temporary file filling up: {temp_files(storage_tree)}"
        )
        temps = temp_files(storage_tree)
        assert temps and all(p.parent == target.parent for p in temps), temps
        # ... which is never listed, searched nor served.
        temp = temps[0]
        parent = str(temp.parent.relative_to(storage_tree)).removeprefix(".")
        assert not any(n.startswith(TEMP_PREFIX) for n in listing_names(writable, parent))
        assert search_paths(writable, "ferry-upload") == set()
        assert search_paths(writable, ".part") == set()
        leaked = httpx.get(url_for(writable, str(temp.relative_to(storage_tree))), timeout=TIMEOUT)
        assert leaked.status_code == 404
    finally:
        sock.close()  # the client goes away mid-body

    assert_cleaned_up(storage_tree)
    if before is None:
        assert not target.exists()
        assert download(writable, path).status_code == 404
    else:
        assert target.read_bytes() == before
        assert download(writable, path).content == before
    assert not (target.parent / "first-of-cut.bin").exists()
    assert httpx.get(f"{writable.url}/healthz", timeout=TIMEOUT).status_code == 200


# -- size limits -------------------------------------------------------------------------------


def test_declared_oversize_body_is_refused_before_it_is_read(
    ferry: ServerFactory, storage_tree: Path
) -> None:
    server = ferry(storage_tree, "--write-token", TOKEN, "--max-upload-size", "1MiB")
    with connect(server.port) as sock:
        # Only the head is sent: the answer must not wait for any of the 2 MiB.
        sock.sendall(request_head("PUT", "/files/too-big.bin", {**AUTH, "Content-Length": str(2 * MiB)}))
        response = read_response(sock)
    assert response.status == 413
    assert not (storage_tree / "too-big.bin").exists()
    assert no_temp_files(storage_tree)

    # Exactly at the limit is fine; one byte over is not.
    at_limit = os.urandom(MiB)
    assert httpx.put(url_for(server, "limit.bin"), content=at_limit, headers=AUTH).status_code == 201
    assert (storage_tree / "limit.bin").read_bytes() == at_limit
    over = raw_request(server, "PUT", "/files/over.bin", AUTH, os.urandom(MiB + 1))
    assert over.status == 413
    assert not (storage_tree / "over.bin").exists()
    # A multipart body is bounded the same way.
    boundary = "b0undary"
    form = multipart_body(boundary, [("f", b"form-too-big.bin", os.urandom(2 * MiB))])
    headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert raw_request(server, "POST", "/files/", headers, form).status == 413
    assert not (storage_tree / "form-too-big.bin").exists()
    assert no_temp_files(storage_tree)


def test_streamed_oversize_body_is_refused_and_removed(ferry: ServerFactory, storage_tree: Path) -> None:
    server = ferry(storage_tree, "--write-token", TOKEN, "--max-upload-size", "1MiB")
    with connect(server.port) as sock:
        sock.sendall(request_head("PUT", "/files/streamed.bin", {**AUTH, "Transfer-Encoding": "chunked"}))
        pieces = (chunk(os.urandom(64 * KiB)) for _ in range(64))  # 4 MiB, never declared
        sent = send_until_answered(sock, [*pieces, LAST_CHUNK], pause=0.02)
        response = read_response(sock)
    assert response.status == 413, response
    assert sent < 3 * MiB, f"no answer until {sent} bytes of a body over a 1 MiB limit were sent"
    assert_cleaned_up(storage_tree)
    assert not (storage_tree / "streamed.bin").exists()
    assert download(server, "streamed.bin").status_code == 404

    # Replacing an existing file: the old content stays.
    with connect(server.port) as sock:
        sock.sendall(request_head("PUT", "/files/hello.txt", {**AUTH, "Transfer-Encoding": "chunked"}))
        send_until_answered(sock, [*(chunk(os.urandom(64 * KiB)) for _ in range(40)), LAST_CHUNK])
        assert read_response(sock).status == 413
    assert_cleaned_up(storage_tree)
    assert (storage_tree / "hello.txt").read_bytes() == b"hello, ferry\n"


# -- disk full -------------------------------------------------------------------------------------


@dataclass
class SmallDisk:
    root: Path
    server: FerryServer


@pytest.fixture
def small_disk(ferry: ServerFactory, tmp_path: Path) -> Iterator[SmallDisk]:
    """ROOT on an 8 MiB tmpfs (the index outside it), with a server; unmounted afterwards."""
    root = tmp_path / "small"
    root.mkdir()
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("disk-full test needs mount(8), which is not installed")
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test: {mounted.stderr.strip()}")
    server = None
    try:
        server = ferry(
            root, "--write-token", TOKEN, "--index-path", str(tmp_path / "index" / "index.sqlite3")
        )
        yield SmallDisk(root, server)
    finally:
        if server is not None:
            server.stop()
        unmounted = subprocess.run(["umount", str(root)], capture_output=True, text=True, check=False)
        if unmounted.returncode != 0:
            subprocess.run(["umount", "-l", str(root)], check=False)


def test_disk_full_answers_507_and_leaves_nothing(small_disk: SmallDisk) -> None:
    server, root = small_disk.server, small_disk.root
    free_before = shutil.disk_usage(root).free
    with connect(server.port) as sock:
        size = 20 * MiB
        sock.sendall(request_head("PUT", "/files/huge.bin", {**AUTH, "Content-Length": str(size)}))
        sent = send_until_answered(sock, (os.urandom(256 * KiB) for _ in range(size // (256 * KiB))))
        response = read_response(sock)
    assert response.status == 507, response
    assert sent < size
    assert_cleaned_up(root)
    assert not (root / "huge.bin").exists()
    assert wait_for(lambda: shutil.disk_usage(root).free >= free_before, CLEANUP_SECONDS)

    # The server is still serving, reads and writes.
    assert httpx.get(f"{server.url}/healthz", timeout=TIMEOUT).status_code == 200
    small = os.urandom(100 * KiB)
    assert httpx.put(url_for(server, "after.bin"), content=small, headers=AUTH).status_code == 201
    assert download(server, "after.bin").content == small
    assert listing_names(server, "") == {"after.bin"}

    # A multipart upload that fills the disk: 507, and its complete first file is not kept either.
    boundary = "diskfull"
    form = multipart_body(boundary, [("a", b"ok.bin", b"fine"), ("b", b"too-big.bin", os.urandom(12 * MiB))])
    headers = {
        **AUTH,
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(form)),
    }
    with connect(server.port) as sock:
        sock.sendall(request_head("POST", "/files/", headers))
        send_until_answered(sock, (form[i : i + 256 * KiB] for i in range(0, len(form), 256 * KiB)))
        assert read_response(sock).status == 507
    assert_cleaned_up(root)
    assert sorted(p.name for p in root.iterdir()) == ["after.bin"]
    assert httpx.get(f"{server.url}/healthz", timeout=TIMEOUT).status_code == 200


# -- racing uploads ------------------------------------------------------------------------------


def test_racing_uploads_stay_atomic(writable: FerryServer, storage_tree: Path) -> None:
    bodies = [os.urandom(4 * MiB) for _ in range(8)]
    allowed = {sha256(b) for b in bodies}
    url = url_for(writable, "race/file.bin")
    done = threading.Event()
    seen: list[str] = []
    problems: list[str] = []

    def reader() -> None:
        with httpx.Client(timeout=TIMEOUT) as client:
            while not done.is_set():
                try:
                    response = client.get(url)
                except httpx.HTTPError as exc:  # e.g. a file cut short under the download
                    problems.append(f"download failed: {exc!r}")
                    continue
                if response.status_code == 404 and not seen:
                    continue  # not created yet
                if response.status_code != 200:
                    problems.append(f"status {response.status_code} after a version was seen")
                    continue
                digest = sha256(response.content)
                if digest not in allowed:
                    problems.append(f"a partial or mixed file of {len(response.content)} bytes")
                seen.append(digest)

    def upload(i: int) -> int:
        time.sleep(0.04 * i)  # overlapping, not simultaneous: the reader gets to see several versions

        def body() -> Iterator[bytes]:
            for offset in range(0, len(bodies[i]), 256 * KiB):
                yield bodies[i][offset : offset + 256 * KiB]
                time.sleep(0.005)

        headers = {**AUTH, "Content-Length": str(len(bodies[i]))}
        return httpx.put(url, content=body(), headers=headers, timeout=TIMEOUT).status_code

    read_thread = threading.Thread(target=reader, daemon=True)
    read_thread.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(upload, range(8)))
    finally:
        done.set()
        read_thread.join()

    assert problems == []
    assert sorted(statuses) == [201] + [204] * 7, statuses
    assert seen, "the reader never saw the file"
    final = (storage_tree / "race" / "file.bin").read_bytes()
    assert sha256(final) in allowed
    assert sha256(download(writable, "race/file.bin").content) == sha256(final)
    assert no_temp_files(storage_tree)
    assert listing_names(writable, "race") == {"file.bin"}


# -- conditional writes -----------------------------------------------------------------------------


def test_if_none_match_star_refuses_to_overwrite(writable: FerryServer, storage_tree: Path) -> None:
    url = url_for(writable, "once.txt")
    headers = {**AUTH, "If-None-Match": "*"}
    first = httpx.put(url, content=b"first", headers=headers)
    assert first.status_code == 201, first.text
    second = httpx.put(url, content=b"second", headers=headers)
    assert second.status_code == 412
    assert (storage_tree / "once.txt").read_bytes() == b"first"
    # Refused from the head alone: a large declared body is never waited for.
    with connect(writable.port) as sock:
        sock.sendall(request_head("PUT", "/files/once.txt", {**headers, "Content-Length": str(64 * MiB)}))
        assert read_response(sock).status == 412
    assert (storage_tree / "once.txt").read_bytes() == b"first"
    assert no_temp_files(storage_tree)


# -- traversal ------------------------------------------------------------------------------------


def assert_nothing_escaped(base: Path, before: dict[str, str], markers: list[str]) -> None:
    assert (base / "secret.txt").read_bytes() == CANARY
    assert (base / "data_secret" / "x.txt").read_bytes() == CANARY
    assert outside_snapshot(base, base / "data") == before
    for marker in markers:
        for place in (base.parent, Path("/"), Path("/etc"), Path("/tmp")):
            assert not (place / marker).exists(), place / marker


def test_put_paths_cannot_escape_root(writable: FerryServer, storage_tree: Path) -> None:
    base = storage_tree.parent
    before = outside_snapshot(base, storage_tree)
    marker = "ferry-escape-" + secrets.token_hex(4)
    refused = [
        f"/files/../{marker}",
        f"/files/%2e%2e/{marker}",
        f"/files/%2E%2E/{marker}",
        f"/files/..%2f{marker}",
        f"/files/..%5c{marker}",
        f"/files/sub/..%2f..%2f{marker}",
        f"/files/sub/../../{marker}",
        f"/files/dir-outside/{marker}",
        f"/files/dir-outside/new/{marker}",
        "/files/dir-outside/x.txt",
        "/files/.hidden",
        "/files/sub/.env",
        f"/files/.git/{marker}",
        f"/files/{TEMP_PREFIX}0123456789abcdef.part",
        f"/files/{marker}%00.txt",
        f"/files/./../{marker}",
        f"/files/sub/./%2e%2e/%2e%2e/{marker}",
        "/files/./.hidden",
        "/files/sub/.",
    ]
    for target in refused:
        response = raw_request(writable, "PUT", target, AUTH, b"PWNED " + target.encode())
        assert response.status in (400, 404), f"PUT {target} -> {response.status}"
    for target in ["/files/../", "/files/dir-outside/", "/files/%2e%2e/"]:
        form = multipart_body("bnd", [("f", marker.encode(), b"PWNED")])
        headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=bnd"}
        response = raw_request(writable, "POST", target, headers, form)
        assert response.status in (400, 404), f"POST {target} -> {response.status}"
    for target in [
        "/files/../secret.txt",
        "/files/dir-outside/x.txt",
        "/files/%2e%2e/secret.txt",
        "/files/sub/.env",
    ]:
        assert raw_request(writable, "DELETE", target, AUTH).status in (400, 404), target

    # A symlink is never written through, nor replaced: reads may refuse it, and so do writes.
    response = raw_request(writable, "PUT", "/files/link-outside.txt", AUTH, b"PWNED through a symlink")
    assert response.status == 409, response
    assert (storage_tree / "link-outside.txt").is_symlink()
    # A URL ending in '/' names a directory: it never deletes a file of that name.
    assert raw_request(writable, "DELETE", "/files/hello.txt/", AUTH).status == 404
    assert (storage_tree / "hello.txt").read_bytes() == b"hello, ferry\n"
    # Deleting a symlink that leads out removes at most the link itself, never what it points to.
    for target in ["/files/dir-outside/", "/files/dir-outside"]:
        assert raw_request(writable, "DELETE", target, AUTH).status in (204, 400, 403, 404, 409), target

    assert (storage_tree / ".hidden").read_bytes() == b"hidden\n"
    assert (storage_tree / "sub" / ".env").read_bytes() == b"SECRET=1\n"
    assert not list(storage_tree.rglob(f"*{marker}*"))
    # A '.' segment names the folder it stands in: the upload lands there, and nowhere else.
    response = raw_request(writable, "PUT", f"/files/sub/./{marker}", AUTH, b"dotted\n")
    assert response.status == 201, response
    assert [p.relative_to(storage_tree).as_posix() for p in storage_tree.rglob(f"*{marker}*")] == [
        f"sub/{marker}"
    ]
    assert_nothing_escaped(base, before, [marker])
    assert no_temp_files(storage_tree)


def test_multipart_filenames_are_reduced_to_safe_base_names(
    writable: FerryServer, storage_tree: Path
) -> None:
    base = storage_tree.parent
    before = outside_snapshot(base, storage_tree)
    tag = secrets.token_hex(4)
    reduced = {
        f"../../ferry-x-{tag}".encode(): f"ferry-x-{tag}",
        f"/etc/ferry-etc-{tag}".encode(): f"ferry-etc-{tag}",
        f"a\\..\\ferry-b-{tag}".encode(): f"ferry-b-{tag}",
        f"..\\..\\ferry-c-{tag}".encode(): f"ferry-c-{tag}",
        f"C:\\Windows\\ferry-d-{tag}".encode(): f"ferry-d-{tag}",
    }
    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=bnd"}
    for raw, name in reduced.items():
        content = os.urandom(1000)
        response = raw_request(
            writable, "POST", "/files/inbox/", headers, multipart_body("bnd", [("f", raw, content)])
        )
        if response.status in (400, 404):
            continue  # refusing an odd name outright is safe too
        assert response.status == 201, (raw, response)
        document = response.json()
        assert isinstance(document, dict), raw
        entries = document["entries"]
        assert [e["name"] for e in entries] == [name], raw
        assert (storage_tree / "inbox" / name).read_bytes() == content
    for raw in [b"..", b".", b".hidden", b"../.hidden", b"sub/.env", TEMP_PREFIX.encode() + b"x.part"]:
        form = multipart_body("bnd", [("f", raw, b"PWNED")])
        response = raw_request(writable, "POST", "/files/sub/", headers, form)
        assert response.status in (400, 404), (raw, response)
    assert (storage_tree / "sub" / ".env").read_bytes() == b"SECRET=1\n"
    assert sorted(p.name for p in (storage_tree / "sub").iterdir()) == [".env", "inner.txt"]
    names = [f"ferry-{k}-{tag}" for k in ("x", "etc", "b", "c", "d")]
    assert_nothing_escaped(base, before, names)
    assert no_temp_files(storage_tree)


# -- authentication ---------------------------------------------------------------------------------


def test_writes_are_disabled_without_a_token(ferry: ServerFactory, storage_tree: Path) -> None:
    server = ferry(storage_tree)
    form = multipart_body("bnd", [("f", b"form.txt", b"data")])
    attempts = [
        ("PUT", "/files/new.txt", {}, b"data"),
        ("PUT", "/files/hello.txt", AUTH, b"data"),
        ("POST", "/files/", {"Content-Type": "multipart/form-data; boundary=bnd"}, form),
        ("DELETE", "/files/hello.txt", AUTH, b""),
    ]
    for method, target, headers, body in attempts:
        response = raw_request(server, method, target, headers, body)
        assert response.status == 405, (method, target, response)
        allow = {m.strip() for m in response.headers["allow"].split(",")}
        assert "GET" in allow and not allow & {"PUT", "POST", "DELETE"}
    assert not (storage_tree / "new.txt").exists()
    assert not (storage_tree / "form.txt").exists()
    assert (storage_tree / "hello.txt").read_bytes() == b"hello, ferry\n"
    assert no_temp_files(storage_tree)


BAD_AUTHORIZATIONS = [
    None,
    "Bearer wrong",
    "Bearer",
    "Bearer ",
    "Bearer tt",
    "bearer x",
    "Basic dDp0",
    "t",
    "Token t",
]


def test_missing_or_wrong_token_is_401(writable: FerryServer, storage_tree: Path) -> None:
    form = multipart_body("bnd", [("f", b"form.txt", b"data")])
    for authorization in BAD_AUTHORIZATIONS:
        headers = {} if authorization is None else {"Authorization": authorization}
        attempts = [
            ("PUT", "/files/new.txt", headers, b"data"),
            ("PUT", "/files/hello.txt", headers, b"data"),
            ("POST", "/files/", {**headers, "Content-Type": "multipart/form-data; boundary=bnd"}, form),
            ("DELETE", "/files/hello.txt", headers, b""),
        ]
        for method, target, h, body in attempts:
            response = raw_request(writable, method, target, h, body)
            assert response.status == 401, (authorization, method, target, response)
            assert response.headers["www-authenticate"].lower().startswith("bearer")
        # Refused from the head alone, before any byte of a (large) body is stored.
        with connect(writable.port) as sock:
            sock.sendall(request_head("PUT", "/files/big.txt", {**headers, "Content-Length": str(GiB)}))
            assert read_response(sock).status == 401, authorization
    assert not (storage_tree / "new.txt").exists()
    assert not (storage_tree / "big.txt").exists()
    assert not (storage_tree / "form.txt").exists()
    assert (storage_tree / "hello.txt").read_bytes() == b"hello, ferry\n"
    assert no_temp_files(storage_tree)


# -- crash clean-up -----------------------------------------------------------------------------------


def test_temp_file_of_a_killed_server_is_removed_at_start_up(
    ferry: ServerFactory, storage_tree: Path
) -> None:
    index = storage_tree.parent / "index" / "index.sqlite3"
    server = ferry(storage_tree, "--write-token", TOKEN, "--index-path", str(index))
    sock = connect(server.port)
    try:
        sock.sendall(request_head("PUT", "/files/sub/crash.bin", {**AUTH, "Content-Length": str(100 * MiB)}))
        sock.sendall(os.urandom(3 * MiB))
        assert wait_for(lambda: any(p.stat().st_size >= MiB for p in temp_files(storage_tree)))
        server.process.kill()
        server.process.wait(timeout=10)
    finally:
        sock.close()
    orphans = temp_files(storage_tree)
    assert len(orphans) == 1 and orphans[0].parent == storage_tree / "sub", orphans
    assert orphans[0].name.endswith(".part")

    again = ferry(storage_tree, "--write-token", TOKEN, "--index-path", str(index))
    assert wait_for(lambda: no_temp_files(storage_tree)), f"still there: {temp_files(storage_tree)}"
    assert not (storage_tree / "sub" / "crash.bin").exists()
    assert listing_names(again, "sub") == {"inner.txt"}
    # And the new server takes uploads as usual.
    assert httpx.put(url_for(again, "sub/crash.bin"), content=b"ok", headers=AUTH).status_code == 201


# -- parents ------------------------------------------------------------------------------------------
