"""Path traversal and root escape (ANCHORS.md §3.1, classes 1-6) against a real `ferry serve`.

The raw-socket corpus of tests/clients/test_traversal.py is reused as it is and extended with more
sibling-prefix, multiple-decoding, overlong UTF-8, Windows, absolute/UNC and device forms; the whole
corpus is sent as downloads, as API look-ups and as authenticated uploads. Two races close the
module: ROOT/dir swapped between a real directory and a symlink out of ROOT, and ROOT/f swapped
between a regular file and a symlink to the canary, in tight loops while the same path is
downloaded and uploaded to hundreds of times.

Every test asserts the status and that the canary outside ROOT is neither in any response nor
changed, and that nothing new appears outside ROOT.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from tests.conftest import CANARY, FerryServer, ServerFactory, ServerPool, build_storage_tree, start_server
from tests.security.support import (
    AUTH,
    TOKEN,
    Outside,
    assert_healthy,
    assert_no_canary,
    canary_files,
    exchange,
    get,
)
from tests.support.servers import module_pool
from tests.support.traversal import ESCAPES, POLICY, expand

pytestmark = pytest.mark.clients

PERMISSIVE = ("--follow-symlinks", "--show-hidden")
WRITABLE = ("--write-token", TOKEN, "--no-fsync")


def _extend_tree(root: Path) -> None:
    """Symlinks that lead into the sibling whose name shares ROOT's prefix (data -> data_secret),
    relative and absolute, and awkward entries Windows would treat as devices or streams."""
    base = root.parent
    (root / "rel-sibling").symlink_to(Path("..") / "data_secret")
    (root / "rel-sibling-file.txt").symlink_to(Path("..") / "data_secret" / "x.txt")
    (root / "abs-sibling-file.txt").symlink_to(base / "data_secret" / "x.txt")
    (root / "loop-a").symlink_to("loop-b")
    (root / "loop-b").symlink_to("loop-a")
    (root / "dev-zero").symlink_to("/dev/zero")
    (root / "dev-stdin").symlink_to("/proc/self/fd/0")
    (root / "proc-root").symlink_to("/proc/self/root")
    os.mkfifo(root / "fifo")


def _extend_pool(shared: ServerPool) -> None:
    _extend_tree(shared.root)


pool = module_pool("paths", _extend_pool)
# A tree of its own for uploads: a refused write must change nothing, an accepted one may.
write_pool = module_pool("paths-writes", _extend_pool)


@pytest.fixture
def outside(pool: ServerPool) -> Iterator[Outside]:
    watch = Outside.watch(pool.base, pool.root, pool.cwd)
    yield watch
    watch.assert_untouched()


# --------------------------------------------------------------------------- the extended corpus

EXTRA_ESCAPES = [
    # sibling-prefix confusion: ROOT=<base>/data, the canary in <base>/data_secret (CVE-2023-29159)
    pytest.param("/files/../data_secret/", id="sibling-listing"),
    pytest.param("/files/../data_secret/?format=json", id="sibling-listing-json"),
    pytest.param("/files/%2e%2e%2fdata_secret%2f", id="sibling-listing-enc"),
    pytest.param("/files/..%2f..%2f{base_name}/data_secret/x.txt", id="sibling-via-base"),
    pytest.param("/files/../data_secret%2fx.txt", id="sibling-enc-inner-slash"),
    pytest.param("/files/sub/../../data_secret/x.txt", id="sibling-from-subdir"),
    pytest.param("/files/%2e%2e%5cdata_secret%5cx.txt", id="sibling-backslash"),
    pytest.param("/files/{root}_secret/x.txt", id="sibling-abs-string-prefix"),
    pytest.param("/files/{root_enc}_secret%2fx.txt", id="sibling-abs-string-prefix-enc"),
    pytest.param("/files/_secret/x.txt", id="sibling-suffix-only"),
    # '.' segments are dropped before anything else is checked: what is left must still be refused
    pytest.param("/files/./../data_secret/x.txt", id="sibling-after-dot"),
    pytest.param("/files/%2e/%2e%2e%2fdata_secret%2fx.txt", id="sibling-after-enc-dot"),
    pytest.param("/files/sub/./.%2e/../secret.txt", id="dot-then-half-enc-dotdot"),
    pytest.param("/files/./%2e/./%2e%2e/secret.txt", id="dots-around-enc-dotdot"),
    pytest.param("/files/.%5c..%5c./secret.txt", id="dot-backslash-dot"),
    pytest.param("/files/%2e%2f%2e%2e%2fsecret.txt", id="enc-dot-slash-dotdot"),
    pytest.param("/files/.//{base_name}/secret.txt", id="dot-then-absolute-base"),
    # double and triple decoding
    pytest.param("/files/%252e%252e%252f%252e%252e%252fsecret.txt", id="double-enc-twice"),
    pytest.param("/files/%252E%252E%252Fdata_secret%252Fx.txt", id="double-enc-sibling"),
    pytest.param("/files/%25%32%65%25%32%65%25%32%66secret.txt", id="double-enc-nibbles"),
    pytest.param("/files/%%32%65%%32%65/secret.txt", id="double-enc-inner-nibbles"),
    pytest.param("/files/%2525252e%2525252e%2525252fsecret.txt", id="quadruple-enc"),
    pytest.param("/files/..%25%35%63secret.txt", id="double-enc-backslash-nibbles"),
    pytest.param("/files/%u002e%u002e%u002fsecret.txt", id="iis-u-slash"),
    pytest.param("/files/%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afsecret.txt", id="overlong-twice"),
    # overlong and lookalike UTF-8
    pytest.param("/files/%c0%2e%c0%2e/secret.txt", id="overlong-c0-2e"),
    pytest.param("/files/%c1%9c%c1%9csecret.txt", id="overlong-backslash"),
    pytest.param("/files/..%c1%9csecret.txt", id="overlong-backslash-after-dots"),
    pytest.param("/files/..%c0%5csecret.txt", id="overlong-5c"),
    pytest.param("/files/%e0%80%ae%e0%80%ae%e0%80%afsecret.txt", id="overlong-3-byte-slash"),
    pytest.param("/files/%f0%80%80%ae%f0%80%80%ae/secret.txt", id="overlong-4-byte"),
    pytest.param("/files/%fc%80%80%80%80%ae%fc%80%80%80%80%ae/secret.txt", id="overlong-6-byte"),
    pytest.param("/files/%ef%bc%8e%ef%bc%8e/secret.txt", id="fullwidth-dots"),
    pytest.param("/files/..%ef%bc%8fsecret.txt", id="fullwidth-slash"),
    pytest.param("/files/..%e2%88%95secret.txt", id="division-slash"),
    pytest.param("/files/..%e2%81%84secret.txt", id="fraction-slash"),
    pytest.param("/files/%e2%80%a4%e2%80%a4/secret.txt", id="one-dot-leaders"),
    pytest.param("/files/..%ef%bc%bcsecret.txt", id="fullwidth-backslash"),
    pytest.param("/files/%ed%a0%80/secret.txt", id="utf8-surrogate"),
    # Windows separators, drive letters, streams and device names
    pytest.param("/files/..%5c..%5c..%5csecret.txt", id="backslash-thrice"),
    pytest.param("/files/sub%5c..%5c..%5cdata_secret%5cx.txt", id="backslash-sibling"),
    pytest.param("/files/..\\..\\data_secret\\x.txt", id="raw-backslash-sibling"),
    pytest.param("/files/.%5c..%5csecret.txt", id="dot-backslash"),
    pytest.param("/files/C:secret.txt", id="drive-relative"),
    pytest.param("/files/C:%2f..%2fsecret.txt", id="drive-enc-slash"),
    pytest.param("/files/hello.txt::$DATA", id="ntfs-stream"),
    pytest.param("/files/hello.txt%3a%3a%24DATA", id="ntfs-stream-enc"),
    pytest.param("/files/hello.txt.", id="trailing-dot"),
    pytest.param("/files/hello.txt%20", id="trailing-space"),
    pytest.param("/files/hello.txt%20.", id="trailing-space-dot"),
    pytest.param("/files/HELLO.TXT", id="other-case"),
    pytest.param("/files/CON.txt", id="device-con-ext"),
    pytest.param("/files/aux", id="device-aux"),
    pytest.param("/files/PRN", id="device-prn"),
    pytest.param("/files/COM1", id="device-com1"),
    pytest.param("/files/LPT1.txt", id="device-lpt1"),
    pytest.param("/files/CONIN$", id="device-conin"),
    pytest.param("/files/sub/nul", id="device-nul-subdir"),
    pytest.param("/files/fifo", id="fifo"),
    pytest.param("/files/dev-zero", id="symlink-dev-zero"),
    pytest.param("/files/loop-a", id="symlink-loop"),
    pytest.param("/files/loop-a/x", id="symlink-loop-child"),
    # absolute and UNC forms
    pytest.param("/files/%5c%5c%3f%5cC:%5csecret.txt", id="unc-device-path"),
    pytest.param("/files/%5c%5c.%5cpipe%5cx", id="unc-pipe"),
    pytest.param("/files/\\\\127.0.0.1\\share\\secret.txt", id="unc-raw"),
    pytest.param("/files/%2f%2f127.0.0.1%2fshare%2fsecret.txt", id="unc-enc-slashes"),
    pytest.param("/files/file:%2f%2f%2fetc%2fpasswd", id="file-url-enc"),
    pytest.param("/files/file:///etc/passwd", id="file-url"),
    pytest.param("/files/~/secret.txt", id="tilde"),
    pytest.param("/files/~root/.bashrc", id="tilde-user"),
    pytest.param("/files/{base}/data_secret/x.txt", id="abs-sibling"),
    pytest.param("/files/{base_enc}%2fdata_secret%2fx.txt", id="abs-sibling-enc"),
    pytest.param("/files/%2fproc%2fself%2froot{outside_enc}", id="abs-proc-root"),
    pytest.param("/files/%2fproc%2fself%2fcwd%2f..%2fsecret.txt", id="abs-proc-cwd"),
    pytest.param("/files/%2fdev%2fzero", id="abs-dev-zero"),
    # NUL and control characters spelled other ways
    pytest.param("/files/hello.txt%2500", id="double-enc-nul"),
    pytest.param("/files/%c0%80/secret.txt", id="overlong-nul"),
    pytest.param("/files/..%00%2fsecret.txt", id="nul-between"),
    pytest.param("/files/a%1b%5b2Jb", id="ansi-escape"),
]

# Refused by policy (symlinks out of ROOT): the sibling-prefix forms of the physical check.
EXTRA_POLICY = [
    pytest.param("/files/rel-sibling/x.txt", id="rel-symlink-sibling-dir"),
    pytest.param("/files/rel-sibling/", id="rel-symlink-sibling-listing"),
    pytest.param("/files/rel-sibling/?format=json", id="rel-symlink-sibling-json"),
    pytest.param("/files/rel-sibling-file.txt", id="rel-symlink-sibling-file"),
    pytest.param("/files/abs-sibling-file.txt", id="abs-symlink-sibling-file"),
    pytest.param("/files/rel-sibling/..%2fdata_secret%2fx.txt", id="symlink-then-enc-dotdot"),
    pytest.param("/files/proc-root{outside}", id="symlink-proc-root"),
    pytest.param("/files/dev-stdin", id="symlink-stdin"),
    pytest.param("/files/./rel-sibling/./x.txt", id="dots-around-symlink-sibling-dir"),
    pytest.param("/files/rel-sibling/.", id="symlink-sibling-listing-by-dot"),
]

CORPUS = ESCAPES + EXTRA_ESCAPES
ALL_TARGETS = CORPUS + POLICY + EXTRA_POLICY


def fill(target: str, pool: ServerPool) -> str:
    """expand() from the traversal corpus, plus this module's placeholders."""
    extra = {
        "{base}": str(pool.base),
        "{base_enc}": str(pool.base).replace("/", "%2f"),
        "{base_name}": pool.base.name,
        "{root_enc}": str(pool.root).replace("/", "%2f"),
    }
    for key, value in extra.items():
        target = target.replace(key, value)
    return expand(target, pool)


def refused(server: FerryServer, target: str, method: str = "GET") -> int:
    answer = get(server.port, target, method=method)
    assert answer.closed, f"{target!r}: no complete answer"
    assert answer.status in (400, 404), f"{method} {target!r} -> {answer.status}"
    assert answer.header("location") is None
    assert_no_canary(answer.raw, target)
    if method == "GET":
        assert answer.header("content-length") == str(len(answer.body)), target
    return answer.status


def test_the_corpus_points_at_the_canary(served: Callable[..., FerryServer], pool: ServerPool) -> None:
    """The extension is new and large, and its symlinks really lead to the canary: a server told
    to follow symlinks serves it, so the refusals below are the gate's doing, not a typo's."""
    known = {p.values[0] for p in ESCAPES + POLICY}
    extra = [p.values[0] for p in EXTRA_ESCAPES + EXTRA_POLICY]
    assert len(extra) >= 70 and not known & set(extra)
    for target in ("/files/rel-sibling/x.txt", "/files/rel-sibling-file.txt", "/files/abs-sibling-file.txt"):
        followed = get(served(*PERMISSIVE).port, target)
        assert followed.status == 200 and followed.body == CANARY, target
        assert get(served().port, target).status == 404, target


@pytest.mark.parametrize("flags", [(), PERMISSIVE], ids=["default", "permissive"])
@pytest.mark.parametrize("target", CORPUS)
def test_download_escape_is_refused(
    served: Callable[..., FerryServer],
    pool: ServerPool,
    outside: Outside,
    target: str,
    flags: tuple[str, ...],
) -> None:
    server = served(*flags)
    refused(server, fill(target, pool))
    assert_healthy(server)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("target", POLICY + EXTRA_POLICY)
def test_download_policy_refusal(
    served: Callable[..., FerryServer], pool: ServerPool, outside: Outside, target: str, method: str
) -> None:
    server = served()
    refused(server, fill(target, pool), method)
    assert_healthy(server)


@pytest.mark.parametrize("target", [p for p in ALL_TARGETS if str(p.values[0]).startswith("/files/")])
def test_api_lookup_escape_is_refused(
    served: Callable[..., FerryServer], pool: ServerPool, outside: Outside, target: str
) -> None:
    """/api/files/{path} goes through the same gate: the corpus again, as metadata look-ups."""
    server = served()
    api_target = "/api/files/" + fill(target, pool).removeprefix("/files/")
    answer = get(server.port, api_target)
    if answer.status == 200:
        # /api/files/hello.txt/ describes hello.txt (downloads answer 404): inside ROOT, no escape.
        assert json.loads(answer.body)["path"] == "hello.txt", (api_target, answer.body)
    else:
        assert answer.status in (400, 404, 422), f"{api_target!r} -> {answer.status}"
    assert_no_canary(answer.raw, api_target)
    assert b"data_secret" not in answer.body and b'"x.txt"' not in answer.body


def test_symlinked_dirs_out_of_root_are_neither_listed_nor_searched(
    served: Callable[..., FerryServer], outside: Outside
) -> None:
    server = served()
    with httpx.Client(base_url=server.url) as client:
        listing = client.get("/api/files/", params={"limit": 1000}).json()
        names = {e["name"] for e in listing["entries"]}
        assert {"hello.txt", "sub"} <= names
        assert not names & {"rel-sibling", "rel-sibling-file.txt", "abs-sibling-file.txt", "dir-outside"}
        assert not names & {"link-outside.txt", "loop-a", "dev-zero", "fifo", "proc-root"}
        for query in ("x.txt", "secret", "sibling"):
            found = client.get("/api/search", params={"q": query})
            assert found.status_code == 200
            assert found.json()["entries"] == [], (query, found.json())
        html = client.get("/files/", headers={"Accept": "text/html"})
        assert html.status_code == 200
        assert b"rel-sibling" not in html.content and b"dir-outside" not in html.content


def test_device_and_fifo_do_not_hang(served: Callable[..., FerryServer], outside: Outside) -> None:
    """CVE-2025-66221 class: a FIFO or a device reached through the tree answers at once."""
    server = served(*PERMISSIVE)  # symlinks followed: /dev/zero is reachable by policy
    for target in ("/files/fifo", "/files/dev-zero"):
        started = time.monotonic()
        answer = get(server.port, target)
        assert answer.status == 404, (target, answer.raw[:200])
        # A hang lasts until the client gives up (10 s); an answer, however loaded the machine, less.
        assert time.monotonic() - started < 5, target
    assert_healthy(server)


def _controlling_terminal(pid: int) -> int:
    """Field 7 of /proc/<pid>/stat (tty_nr): the process's controlling terminal, 0 for none."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[4])


@pytest.mark.parametrize("flags", [(), PERMISSIVE], ids=["confined", "follow-symlinks"])
def test_a_symlink_to_a_terminal_cannot_hang_the_server_up(tmp_path: Path, flags: tuple[str, ...]) -> None:
    """A daemon (a session leader with no terminal) that opens a terminal without O_NOCTTY makes it
    its controlling terminal, and dies of SIGHUP when that terminal closes: the start-up scan, a
    listing, a rescan or a download of a symlink to a pty must never open it."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "hello.txt").write_bytes(b"hello\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    master, slave = os.openpty()
    try:
        tty = os.ttyname(slave)
        (root / "to-tty").symlink_to(tty)  # the terminal outside ROOT
        links = ["/files/to-tty"]
        try:  # the same terminal as a node inside ROOT, where creating device nodes is allowed
            os.mknod(root / "tty-node", 0o600 | stat.S_IFCHR, os.stat(tty).st_rdev)
            (root / "sub" / "to-node").symlink_to("../tty-node")
            links += ["/files/tty-node", "/files/sub/to-node"]
        except PermissionError:
            pass
        server = start_server(root, cwd, *flags, "--rescan-interval", "0.2", daemon=True)
        try:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for target in links:
                    assert client.get(target).status_code == 404, target
                    assert client.head(target).status_code == 404, target
                # A change makes the next listings read their directory again (stat_child on each link).
                (root / "new.txt").write_bytes(b"new\n")
                (root / "sub" / "new.txt").write_bytes(b"new\n")
                for listing in ("/files/", "/files/sub/", "/api/files/", "/api/files/sub"):
                    answer = client.get(listing, headers={"Accept": "application/json"})
                    assert answer.status_code == 200, listing
                    names = {e["name"] for e in answer.json()["entries"]}
                    assert "new.txt" in names and not names & {"to-tty", "tty-node", "to-node"}, names
                assert client.get("/api/search", params={"q": "to"}).json()["entries"] == []
                assert _controlling_terminal(server.pid) == 0, (
                    "a terminal became Ferry's controlling terminal"
                )
                os.close(master)  # hangs the terminal up: SIGHUP to any session it controls
                master = -1
                for _ in range(20):  # the rescan loop keeps passing over the links meanwhile
                    assert client.get("/files/hello.txt").content == b"hello\n"
                    assert client.get("/files/to-tty").status_code == 404
            assert server.process.poll() is None, server.log.read_text()
            assert_healthy(server)
        finally:
            server.stop()
    finally:
        os.close(slave)
        if master >= 0:
            os.close(master)


# --------------------------------------------------------------------------- writes


def _put(server: FerryServer, target: str, body: bytes) -> tuple[int, str | None]:
    head = (
        f"PUT {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    answer = exchange(server.port, head.encode("latin-1") + body)
    assert answer.raw, f"PUT {target!r}: no answer"
    assert_no_canary(answer.raw, target)
    return answer.status, answer.header("location")


@pytest.mark.parametrize("target", [p for p in ALL_TARGETS if str(p.values[0]).startswith("/files/")])
def test_upload_escape_never_writes_outside(write_pool: ServerPool, zero_copy: str, target: str) -> None:
    """The corpus as PUT targets: refused (400/404, or 409 for a symlink in the way), or a plain
    name created inside ROOT."""
    server = write_pool.get(zero_copy, *WRITABLE)
    watch = Outside.watch(write_pool.base, write_pool.root, write_pool.cwd)
    filled = fill(target, write_pool)
    body = f"PUT-MARKER {filled}".encode("utf-8", "surrogateescape")
    status, location = _put(server, filled, body)
    assert status in (201, 204, 400, 404, 409), f"PUT {filled!r} -> {status}"
    if status in (201, 204):
        assert location is not None and location.startswith("/files/"), location
        landed = write_pool.root / unquote(urlsplit(location).path.removeprefix("/files/"))
        assert landed.resolve().is_relative_to(write_pool.root), landed
        assert landed.read_bytes() == body
        assert ".." not in Path(unquote(location)).parts
    watch.assert_untouched()
    assert len(canary_files(write_pool.base)) == 2
    assert_healthy(server)


MULTIPART_NAMES = [
    "../../secret.txt",
    "../data_secret/x.txt",
    "/etc/ferry-upload-test",
    "a\\..\\..\\secret.txt",
    "..\\..\\data_secret\\x.txt",
    "..",
    ".",
    "%2e%2e%2fsecret.txt",
    "C:\\windows\\ferry.ini",
    "\\\\127.0.0.1\\share\\x",
    "dir-outside/x.txt",
    "rel-sibling/x.txt",
    "sub/../../secret.txt",
]


@pytest.mark.parametrize("filename", MULTIPART_NAMES)
def test_multipart_filenames_never_write_outside(
    write_pool: ServerPool, zero_copy: str, filename: str
) -> None:
    server = write_pool.get(zero_copy, *WRITABLE)
    watch = Outside.watch(write_pool.base, write_pool.root, write_pool.cwd)
    marker = f"MULTIPART-MARKER {filename}".encode()
    for directory in ("", "sub/", "dir-outside/", "rel-sibling/"):
        response = httpx.post(
            f"{server.url}/files/{directory}",
            files={"file": (filename, marker, "application/octet-stream")},
            headers=AUTH,
        )
        assert response.status_code in (201, 400, 404, 409), (directory, filename, response.status_code)
        assert_no_canary(response.content, filename)
        if response.status_code == 201:
            assert not directory.startswith(("dir-outside", "rel-sibling")), response.text
            for entry in response.json()["entries"]:
                landed = write_pool.root / entry["path"]
                assert landed.resolve().is_relative_to(write_pool.root), entry
                assert landed.read_bytes() == marker
    watch.assert_untouched()
    assert len(canary_files(write_pool.base)) == 2
    assert_healthy(server)


@pytest.mark.parametrize(
    "target",
    [
        "/files/../secret.txt",
        "/files/dir-outside/x.txt",
        "/files/rel-sibling/x.txt",
        "/files/%2e%2e/data_secret/",
    ],
)
def test_delete_escape_is_refused(write_pool: ServerPool, zero_copy: str, target: str) -> None:
    server = write_pool.get(zero_copy, *WRITABLE)
    watch = Outside.watch(write_pool.base, write_pool.root, write_pool.cwd)
    answer = get(server.port, target, f"Authorization: Bearer {TOKEN}", method="DELETE")
    assert answer.status in (400, 404), (target, answer.status)
    watch.assert_untouched()


# --------------------------------------------------------------------------- TOCTOU races

RENAME_EXCHANGE = 2
AT_FDCWD = -100
INSIDE = b"inside-root bytes, fine to serve\n" * 64


def _renameat2() -> Callable[[Path, Path], None] | None:
    """Linux renameat2(RENAME_EXCHANGE): swap two paths atomically, whatever their types."""
    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is None:
        return None

    def exchange_paths(a: Path, b: Path) -> None:
        if func(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(a))

    return exchange_paths


class Swapper(threading.Thread):
    """Flips a path between two prepared alternatives as fast as it can until stopped."""

    def __init__(self, flip: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.flip = flip
        self.flips = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.flip()
                self.flips += 1
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        assert self.error is None, f"the swapper failed: {self.error!r}"
        assert self.flips >= 100, f"only {self.flips} swaps: the race was not exercised"


def _race_tree(base: Path) -> tuple[Path, Path]:
    """ROOT/dir holding `f` (inside bytes); <base>/outside holding `f` and `only-outside.txt`
    (canary bytes). Returns (root, outside)."""
    root = build_storage_tree(base)
    outside_dir = base / "outside"
    outside_dir.mkdir()
    (outside_dir / "f").write_bytes(CANARY)
    (outside_dir / "only-outside.txt").write_bytes(CANARY)
    (root / "dir").mkdir()
    (root / "dir" / "f").write_bytes(INSIDE)
    (base / "stage").mkdir()
    return root, outside_dir


def _dir_swapper(root: Path, outside_dir: Path) -> Swapper:
    """ROOT/dir <-> a symlink to <base>/outside, exchanged atomically (renameat2), or by two
    os.rename calls (a missing ROOT/dir in between) where renameat2 is not there."""
    stage = root.parent / "stage"
    link = stage / "link"
    link.symlink_to(outside_dir)
    target = root / "dir"
    exchange_paths = _renameat2()
    if exchange_paths is not None:
        try:
            exchange_paths(target, link)
            exchange_paths(target, link)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                raise
            exchange_paths = None
    if exchange_paths is not None:
        return Swapper(lambda: exchange_paths(target, link))

    parked = stage / "parked"

    def flip() -> None:
        os.rename(target, parked)
        os.rename(link, target)
        os.rename(parked, link)

    return Swapper(flip)


def _file_swapper(root: Path) -> Swapper:
    """ROOT/dir/f <-> a symlink to the canary file, each an atomic os.rename over ROOT/dir/f of an
    alternative prepared beside it in the stage directory (outside ROOT)."""
    base = root.parent
    stage = base / "stage"
    master = stage / "master"
    master.write_bytes(INSIDE)
    target = root / "dir" / "f"
    canary = base / "secret.txt"
    state = {"link": False}

    def flip() -> None:
        if state["link"]:
            os.link(master, stage / "real")
            os.rename(stage / "real", target)
        else:
            os.symlink(canary, stage / "link")
            os.rename(stage / "link", target)
        state["link"] = not state["link"]

    return Swapper(flip)


def _race_downloads(server: FerryServer, swapper: Swapper, rounds: int) -> tuple[dict[int, int], list[str]]:
    """Download ROOT/dir/f `rounds` times (and list ROOT/dir every tenth round) during the swaps.

    The canary's bytes are checked in every answer as it comes (a leak stops the test at once);
    wrong statuses and listings that show the outside directory's entries (names, sizes) are
    collected and returned, so one of them does not stop the hunt for the others.
    """
    statuses: dict[int, int] = {}
    problems: list[str] = []
    swapper.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:

            def fetch(i: int, url: str) -> httpx.Response | None:
                try:
                    response = client.get(url)
                except httpx.TransportError as exc:  # a dropped connection: never a leak, but wrong
                    problems.append(f"round {i}: GET {url} -> {exc!r}")
                    return None
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert_no_canary(response.content, (i, url))
                if response.status_code not in (200, 404):
                    problems.append(f"round {i}: GET {url} -> {response.status_code}")
                return response

            for i in range(rounds):
                response = fetch(i, "/files/dir/f")
                if response is not None and response.status_code == 200:
                    assert response.content == INSIDE
                if i % 10 == 0:
                    for url in ("/files/dir/?format=json", "/api/files/dir"):
                        listing = fetch(i, url)
                        if listing is not None and listing.status_code == 200:
                            problems += _outside_entries(listing.json(), f"round {i}: GET {url}")
    finally:
        swapper.stop()
    return statuses, problems


def _outside_entries(listing: dict[str, object], where: str) -> list[str]:
    """Entries only the outside directory has: its own name, or `f` with the canary's size."""
    entries = listing.get("entries") or []
    assert isinstance(entries, list)
    return [
        f"{where} listed {e['name']!r} (size {e['size']}) from outside ROOT"
        for e in entries
        if e["name"] == "only-outside.txt" or (e["name"] == "f" and e["size"] == len(CANARY))
    ]


def _index_after_the_race(server: FerryServer, root: Path) -> list[str]:
    """Once the race is over (ROOT/dir a real directory again), the index must hold nothing of
    the outside directory: not in the listing, not in search."""
    if (root / "dir").is_symlink():
        os.rename(root / "dir", root.parent / "stage" / "was-link")
        os.rename(root.parent / "stage" / "link", root / "dir")
    assert (root / "dir").is_dir() and not (root / "dir").is_symlink()
    problems: list[str] = []
    with httpx.Client(base_url=server.url) as client:
        problems += _outside_entries(client.get("/api/files/dir").json(), "after the race: /api/files/dir")
        found = client.get("/api/search", params={"q": "only-outside"}).json()
        problems += [f"after the race: /api/search finds {e['path']!r}" for e in found["entries"]]
    return problems


@pytest.mark.parametrize("zero_copy", ["off", "on"])
def test_toctou_directory_swapped_for_symlink(ferry: ServerFactory, tmp_path: Path) -> None:
    root, outside_dir = _race_tree(tmp_path)
    server = ferry(root)
    watch = Outside.watch(tmp_path, root, tmp_path / "cwd", tmp_path / "stage")
    swapper = _dir_swapper(root, outside_dir)
    statuses, problems = _race_downloads(server, swapper, rounds=400)
    assert statuses.get(200) and statuses.get(404), f"both states must have been hit: {statuses}"
    problems += _index_after_the_race(server, root)
    watch.assert_untouched()
    assert_healthy(server)
    assert not problems, f"statuses {statuses}; problems: {problems}"


@pytest.mark.parametrize("zero_copy", ["off", "on"])
def test_toctou_file_swapped_for_symlink(ferry: ServerFactory, tmp_path: Path) -> None:
    root, _ = _race_tree(tmp_path)
    server = ferry(root)
    watch = Outside.watch(tmp_path, root, tmp_path / "cwd", tmp_path / "stage")
    statuses, problems = _race_downloads(server, _file_swapper(root), rounds=800)
    assert statuses.get(200) and statuses.get(404), f"both states must have been hit: {statuses}"
    watch.assert_untouched()
    assert_healthy(server)
    assert not problems, f"statuses {statuses}; problems: {problems}"


def test_toctou_uploads_through_a_swapping_directory(ferry: ServerFactory, tmp_path: Path) -> None:
    """PUT /files/dir/... while ROOT/dir flips between a real directory and a symlink out of ROOT:
    every upload lands in the real directory or is refused; outside ROOT nothing changes."""
    root, outside_dir = _race_tree(tmp_path)
    server = ferry(root, *WRITABLE)
    watch = Outside.watch(tmp_path, root, tmp_path / "cwd", tmp_path / "stage")
    swapper = _dir_swapper(root, outside_dir)
    created: list[str] = []
    unexpected: list[str] = []
    statuses: dict[int, int] = {}
    swapper.start()
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
            for i in range(150):
                name = "f" if i % 3 == 0 else f"new-{i}.txt"
                try:
                    response = client.put(f"/files/dir/{name}", content=b"uploaded %d\n" % i)
                except httpx.TransportError as exc:
                    unexpected.append(f"round {i}: PUT /files/dir/{name} -> {exc!r}")
                    continue
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert_no_canary(response.content, i)
                if response.status_code in (201, 204):
                    created.append(name)
                elif response.status_code != 404:
                    unexpected.append(f"round {i}: PUT /files/dir/{name} -> {response.status_code}")
    finally:
        swapper.stop()
    assert created, statuses
    assert sorted(p.name for p in outside_dir.iterdir()) == ["f", "only-outside.txt"]
    assert (outside_dir / "f").read_bytes() == CANARY
    real = root / "dir" if not (root / "dir").is_symlink() else tmp_path / "stage" / "link"
    assert real.is_dir() and not real.is_symlink()
    landed = {p.name for p in real.iterdir()}
    assert set(created) <= landed, set(created) - landed
    assert not [n for n in landed if n.startswith(".ferry-upload-")]
    watch.assert_untouched()
    assert not unexpected, f"statuses {statuses}; not 201/204/404: {unexpected}"
    assert_healthy(server)
