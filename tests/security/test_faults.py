"""Faults (issue 7, "Faults") against a real `ferry serve`: a file truncated or rewritten while it
is sent ends the connection short; a file replaced or deleted while it is sent keeps serving the
opened version; unreadable files and directories are 403/404 for an unprivileged server;
descriptor exhaustion answers 503 with Retry-After and recovers; a vanished storage root makes
/healthz 503 and downloads 404; a corrupted or deleted index is rebuilt at start-up.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.test_container import VENV, image_user
from tests.conftest import CANARY, PATIENCE, FerryServer, ServerFactory, build_storage_tree, free_port
from tests.security.support import (
    AUTH,
    TOKEN,
    Outside,
    assert_healthy,
    assert_no_canary,
    get,
    parse_head,
)
from tests.support.raw import read_head

pytestmark = pytest.mark.clients

MIB = 1024**2
SIZE = 48 * MIB


def _content(seed: bytes) -> bytes:
    block = hashlib.sha256(seed).digest() * (MIB // 32)
    return b"".join(bytes([i]) + block[1:] for i in range(SIZE // MIB))


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, bytes]:
    root = build_storage_tree(tmp_path)
    original = _content(b"original")
    (root / "big.bin").write_bytes(original)
    return root, original


class Download:
    """A GET read by hand off a raw socket: the head, then the body as slowly as the test likes."""

    def __init__(self, server: FerryServer, target: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head, self.body = read_head(self.sock)
        status_line, fields = parse_head(head)
        self.status = int(status_line.split()[1])
        self.length = int(dict(fields)["content-length"])
        self.ended_by: str = ""

    def read(self, at_least: int) -> None:
        while len(self.body) < at_least:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "ended early"
            self.body += chunk

    def read_to_end(self) -> bytes:
        """Everything until the server closes (the end of the body, or an abort)."""
        try:
            while chunk := self.sock.recv(1 << 20):
                self.body += chunk
            self.ended_by = "close"
        except ConnectionResetError:
            self.ended_by = "reset"
        finally:
            self.sock.close()
        return self.body


# --------------------------------------------------------------------------- changed while sent


def _truncate(path: Path, original: bytes) -> None:
    os.truncate(path, 2 * MIB)


def _rewrite_same_size(path: Path, original: bytes) -> None:
    with path.open("r+b") as f:
        f.write(_content(b"rewritten"))


def _truncate_then_regrow(path: Path, original: bytes) -> None:
    os.truncate(path, 2 * MIB)
    with path.open("ab") as f:
        f.write(original[2 * MIB :])


@pytest.mark.parametrize("zero_copy", ["off", "on"])
@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_truncate, id="truncated"),
        pytest.param(_rewrite_same_size, id="rewritten-same-size"),
        pytest.param(_truncate_then_regrow, id="truncated-then-regrown"),
    ],
)
def test_file_changed_while_sent_ends_the_connection_short(
    ferry: ServerFactory, tree: tuple[Path, bytes], change: Callable[[Path, bytes], None]
) -> None:
    root, original = tree
    server = ferry(root)
    download = Download(server, "/files/big.bin")
    assert download.status == 200 and download.length == SIZE
    download.read(MIB)
    change(root / "big.bin", original)
    started = time.monotonic()
    body = download.read_to_end()
    assert time.monotonic() - started < 10
    assert len(body) < SIZE, "a complete-looking body of a file that changed under the response"
    if change is _truncate:
        assert body == original[: len(body)], "bytes that were never in the file"
    assert_healthy(server)


@pytest.mark.parametrize("zero_copy", ["off", "on"])
@pytest.mark.parametrize("how", ["replaced", "deleted"])
def test_file_replaced_while_sent_keeps_the_opened_version(
    ferry: ServerFactory, tree: tuple[Path, bytes], how: str
) -> None:
    root, original = tree
    server = ferry(root)
    download = Download(server, "/files/big.bin")
    download.read(MIB)
    if how == "replaced":
        staged = root.parent / "staged.bin"
        staged.write_bytes(_content(b"replacement"))
        os.replace(staged, root / "big.bin")
    else:
        os.unlink(root / "big.bin")
    body = download.read_to_end()
    assert len(body) == SIZE and hashlib.sha256(body).digest() == hashlib.sha256(original).digest()
    after = httpx.get(f"{server.url}/files/big.bin")
    if how == "replaced":
        assert after.status_code == 200 and after.content == _content(b"replacement")
    else:
        assert after.status_code == 404


# --------------------------------------------------------------------------- permissions

UNPRIVILEGED = (10001, 10001)


@pytest.fixture(scope="module")
def unprivileged() -> Iterator[tuple[FerryServer, Path]]:
    """Ferry as uid 10001 (root ignores permissions) over a tree with unreadable entries."""
    scratch = Path(tempfile.mkdtemp(prefix="ferry-perms-"))  # pytest's tmp_path is closed to others
    process = None
    try:
        scratch.chmod(0o755)
        (scratch / "secret.txt").write_bytes(CANARY)
        (scratch / "secret.txt").chmod(0o644)  # readable by the server: the gate must hold anyway
        root = scratch / "data"
        root.mkdir(mode=0o755)
        (root / "hello.txt").write_bytes(b"hello, ferry\n")
        for name, mode in [("mode-000.txt", 0o000), ("owner-only.txt", 0o600), ("write-only.txt", 0o200)]:
            (root / name).write_bytes(b"private\n")
            (root / name).chmod(mode)
        for name, mode in [("locked", 0o000), ("no-exec", 0o644), ("no-read", 0o311), ("owner-dir", 0o700)]:
            directory = root / name
            directory.mkdir()
            (directory / "inside.txt").write_bytes(b"inside\n")
            (directory / "inside.txt").chmod(0o644)
            directory.chmod(mode)
        (root / "link-to-locked").symlink_to("locked/inside.txt")
        for path in [root / "hello.txt"]:
            path.chmod(0o644)
        cwd = scratch / "cwd"
        cwd.mkdir()
        uid, gid = UNPRIVILEGED
        os.chown(cwd, uid, gid)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LANG": "C.UTF-8"}
        user = image_user(uid, gid, env, cwd, scratch)
        if user.skipped:
            pytest.skip(f"cannot run as an unprivileged user: {user.skipped}")
        port = free_port()
        log = (scratch / "ferry.log").open("wb")
        command = [str(VENV / "bin" / "python"), "-m", "app", "serve", "--root", str(root)]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        process = user.start(command, env=env, cwd=cwd, stdout=log, stderr=log)
        log.close()
        server = FerryServer(process, port, root, scratch / "ferry.log")
        _wait_ready(server)
        status = Path(f"/proc/{process.pid}/status").read_text()
        assert f"Uid:\t{uid}\t" in status, "the server is not running as the unprivileged user"
        yield server, scratch
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        for dirpath, dirnames, _ in os.walk(scratch):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)
        shutil.rmtree(scratch, ignore_errors=True)


def _wait_ready(server: FerryServer, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"ferry serve exited: {server.log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("ferry serve did not become ready")


@pytest.mark.parametrize(
    "target",
    [
        "/files/mode-000.txt",
        "/files/owner-only.txt",
        "/files/write-only.txt",
        "/files/locked/",
        "/files/locked",
        "/files/locked/inside.txt",
        "/files/link-to-locked",
        "/files/no-exec/inside.txt",
        "/files/no-read/",
        "/files/owner-dir/",
        "/files/owner-dir/inside.txt",
        "/files/no-exec/",
        "/files/no-exec/?format=json",
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_unreadable_is_403_or_404_not_500(
    unprivileged: tuple[FerryServer, Path], target: str, method: str
) -> None:
    server, _ = unprivileged
    answer = get(server.port, target, method=method)
    if target in ("/files/no-exec/", "/files/no-exec/?format=json"):
        # A directory that can be read but not entered may be listed (its names, never content).
        assert answer.status in (200, 403, 404), (target, answer.raw[:300])
    else:
        assert answer.status in (403, 404), (target, answer.raw[:300])
    assert b"private" not in answer.body and b"inside\n" not in answer.body
    assert_no_canary(answer.raw, target)
    assert_healthy(server)


@pytest.mark.parametrize(
    "target",
    [
        "/api/files/mode-000.txt",
        "/api/files/locked",
        "/api/files/locked/inside.txt",
        "/api/files/no-exec",
        "/api/files/no-exec/inside.txt",
        "/api/files/no-read",
        "/api/files/owner-dir/inside.txt",
        "/api/search?q=inside",
        "/api/search?q=private",
    ],
)
def test_metadata_of_unreadable_entries_is_never_500(
    unprivileged: tuple[FerryServer, Path], target: str
) -> None:
    """Names, sizes and dates need only the parent's permissions (as in `ls -l`); the API may show
    them, but never content and never a 500."""
    server, _ = unprivileged
    answer = get(server.port, target)
    assert answer.status in (200, 403, 404), (target, answer.raw[:300])
    assert b"private\n" not in answer.body and b"inside\n" not in answer.body
    assert_no_canary(answer.raw, target)


def test_unprivileged_server_still_serves_what_it_can_read(unprivileged: tuple[FerryServer, Path]) -> None:
    server, scratch = unprivileged
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/files/hello.txt").content == b"hello, ferry\n"
        assert client.get("/files/no-read/inside.txt").content == b"inside\n"  # x without r: by name
        assert client.get("/files/hello.txt", headers={"Range": "bytes=0-4"}).content == b"hello"
        listing = client.get("/api/files/")
        assert listing.status_code == 200
        assert "hello.txt" in {e["name"] for e in listing.json()["entries"]}
        assert client.get("/api/search", params={"q": "inside"}).status_code == 200
        assert client.get("/files/", headers={"Accept": "text/html"}).status_code == 200
    assert (scratch / "secret.txt").read_bytes() == CANARY


# --------------------------------------------------------------------------- EMFILE


def _start_with_fd_limit(root: Path, cwd: Path, limit: int, *flags: str) -> FerryServer:
    """`ferry serve` with RLIMIT_NOFILE soft = hard = limit (Ferry lifts soft to hard at start)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    log = (cwd / f"ferry-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--root", str(root), "--host", "127.0.0.1"]
        + ["--port", str(port), *flags],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
        preexec_fn=low_limit,
    )
    log.close()
    server = FerryServer(process, port, root, cwd / f"ferry-{port}.log")
    _wait_ready(server)
    return server


def _one_request(sock: socket.socket, target: str) -> tuple[str, bytes]:
    """(outcome, raw): outcome is the status code, or 'closed', 'reset' or 'silent' (no answer)."""
    try:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        sock.settimeout(3)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return ("closed" if not received else received.split(b" ", 2)[1].decode()), received
            received += chunk
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                length = int(dict(parse_head(head)[1]).get("content-length", "0"))
                if len(body) >= length:
                    return received.split(b" ", 2)[1].decode(), received
    except (ConnectionResetError, BrokenPipeError):
        return "reset", b""
    except TimeoutError:
        return "silent", b""


@pytest.mark.parametrize("target", ["/files/hello.txt", "/files/sub/?format=json"])
def test_out_of_descriptors_is_503_then_recovers(tmp_path: Path, target: str) -> None:
    root = build_storage_tree(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    limit = 96
    server = _start_with_fd_limit(root, cwd, limit, "--header-timeout", "60")
    sockets: list[socket.socket] = []
    outcomes: list[str] = []
    try:
        soft, hard = (int(v) for v in _proc_limits(server.pid))
        assert hard == limit, "the hard limit was not applied"
        for _ in range(3):  # warm up every path the target takes (threads, index connections)
            assert httpx.get(f"{server.url}{target}").status_code == 200
        for _ in range(limit + 20):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sockets.append(sock)
            outcome, raw = _one_request(sock, target)
            outcomes.append(outcome)
            assert_no_canary(raw)
            if outcome == "503":
                head = parse_head(raw.partition(b"\r\n\r\n")[0])[1]
                assert dict(head)["retry-after"].isdigit()
            if outcomes.count("200") and len([o for o in outcomes if o != "200"]) >= 5:
                break
        assert "500" not in outcomes, outcomes
        assert set(outcomes) <= {"200", "503", "closed", "reset", "silent"}, outcomes
        assert "503" in outcomes, f"descriptors never ran out as a 503: {outcomes}"
        print(f"{target}: {len(outcomes)} connections: {outcomes[-8:]}")
    finally:
        for sock in sockets:
            sock.close()
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            if httpx.get(f"{server.url}{target}", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not recover after the connections closed"
        time.sleep(0.2)
    assert_healthy(server)
    assert httpx.get(f"{server.url}/files/hello.txt").content == b"hello, ferry\n"
    server.stop()


def _proc_limits(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open-files limit")


# --------------------------------------------------------------------------- the root vanishes


def test_vanished_root_is_503_on_healthz_and_404_on_downloads(ferry: ServerFactory, tmp_path: Path) -> None:
    root = build_storage_tree(tmp_path)
    server = ferry(root, "--write-token", TOKEN, "--no-fsync")
    watch = Outside.watch(tmp_path, root, tmp_path / "cwd", tmp_path / "data.away")
    assert httpx.get(f"{server.url}/files/hello.txt").status_code == 200
    away = tmp_path / "data.away"
    os.rename(root, away)
    try:
        with httpx.Client(base_url=server.url) as client:
            health = client.get("/healthz")
            assert health.status_code == 503, health.text
            for target in ("/files/hello.txt", "/files/sub/inner.txt", "/files/", "/files/sub/"):
                response = client.get(target)
                assert response.status_code == 404, (target, response.status_code)
            for target in ("/api/files/", "/api/files/hello.txt", "/api/search?q=hello"):
                response = client.get(target)
                assert response.status_code < 500, (target, response.status_code)
            put = client.put("/files/new.txt", content=b"new", headers=AUTH)
            assert put.status_code in (404, 503), put.status_code
            assert not root.exists(), "a write re-created the missing storage root"
            # ROOT's path now a symlink to the sibling that shares its prefix: still nothing served.
            root.symlink_to(tmp_path / "data_secret")
            for target in ("/files/x.txt", "/files/", "/api/files/x.txt"):
                response = client.get(target)
                assert response.status_code in (404, 503), (target, response.status_code)
                assert_no_canary(response.content, target)
            root.unlink()
    finally:
        if root.is_symlink():
            root.unlink()
        os.rename(away, root)
    deadline = time.monotonic() + PATIENCE
    while httpx.get(f"{server.url}/healthz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert httpx.get(f"{server.url}/files/hello.txt").content == b"hello, ferry\n"
    # The index must not keep the absence: once ROOT is back, listings and search show it all.
    expected = {"hello.txt", "sub", "digits.txt", "empty.bin"}
    deadline = time.monotonic() + PATIENCE
    while True:
        names = {e["name"] for e in httpx.get(f"{server.url}/api/files/").json()["entries"]}
        if expected <= names or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert expected <= names, f"missing from the listing after ROOT came back: {sorted(expected - names)}"
    found = httpx.get(f"{server.url}/api/search", params={"q": "inner"}).json()["entries"]
    assert [e["path"] for e in found] == ["sub/inner.txt"]
    watch.assert_untouched()


# --------------------------------------------------------------------------- the index


def _corrupt_garbage(db: Path) -> None:
    db.write_bytes(os.urandom(db.stat().st_size or 8192))


def _corrupt_after_header(db: Path) -> None:
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    page = 65536 if page == 1 else page  # the header's encoding of the largest page size
    data[page:] = os.urandom(len(data) - page)
    db.write_bytes(bytes(data))


def _corrupt_truncate(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def _corrupt_empty(db: Path) -> None:
    os.truncate(db, 0)


def _corrupt_delete(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)


def _corrupt_foreign(db: Path) -> None:
    _corrupt_delete(db)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, junk BLOB)")
        conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('identity', 'something else')")
    conn.close()


def _corrupt_wal_garbage(db: Path) -> None:
    Path(str(db) + "-wal").write_bytes(os.urandom(64 * 1024))


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(_corrupt_garbage, id="garbage"),
        pytest.param(_corrupt_after_header, id="garbage-after-first-page"),
        pytest.param(_corrupt_truncate, id="truncated"),
        pytest.param(_corrupt_empty, id="empty"),
        pytest.param(_corrupt_delete, id="deleted"),
        pytest.param(_corrupt_foreign, id="foreign-schema"),
        pytest.param(_corrupt_wal_garbage, id="garbage-wal"),
    ],
)
def test_corrupt_or_deleted_index_is_rebuilt_at_start(
    ferry: ServerFactory, tmp_path: Path, corrupt: Callable[[Path], None]
) -> None:
    root = build_storage_tree(tmp_path)
    many = root / "many"
    many.mkdir()
    for i in range(300):
        (many / f"entry-{i:03d}.txt").write_bytes(b"x")
    server = ferry(root)
    assert len(httpx.get(f"{server.url}/api/files/many", params={"limit": 1000}).json()["entries"]) == 300
    server.stop()
    db = tmp_path / "cwd" / "var" / "index.sqlite3"
    assert db.is_file(), "the index is not where the test expects it"
    corrupt(db)
    (root / "digits.txt").unlink()  # the disk moves on while the server is down
    (root / "added-while-stopped.txt").write_bytes(b"new\n")

    restarted = ferry(root)
    with httpx.Client(base_url=restarted.url) as client:
        top = client.get("/api/files/", params={"limit": 1000})
        assert top.status_code == 200, top.text
        names = {e["name"] for e in top.json()["entries"]}
        assert {"hello.txt", "sub", "many", "added-while-stopped.txt"} <= names
        assert "digits.txt" not in names
        assert len(client.get("/api/files/many", params={"limit": 1000}).json()["entries"]) == 300
        found = client.get("/api/search", params={"q": "inner"}).json()["entries"]
        assert [e["path"] for e in found] == ["sub/inner.txt"]
        assert (
            client.get("/files/sub/", params={"format": "json"}).json()["entries"][0]["name"] == "inner.txt"
        )
        assert client.get("/files/", headers={"Accept": "text/html"}).status_code == 200
    assert restarted.process.poll() is None
    log = restarted.log.read_text()
    assert "Traceback" not in log, log[-3000:]
