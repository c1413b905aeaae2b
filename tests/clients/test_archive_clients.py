"""Folder archives with real clients against a real `ferry serve`: an interrupted `curl -OJ`
resumed with `curl -C -`, `wget -c --content-disposition`, `aria2c -x8` over several connections,
a stale resume (If-Range with the old ETag) that gets the new archive whole, and a file changed
while its archive is being sent (a short body, and the server serving the next request).

Every saved archive is read back with tarfile / zipfile and must hold exactly the folder's files.
The server keeps to FERRY_RATE_LIMIT past FERRY_RATE_LIMIT_AFTER, so a client can be stopped part
way through for real (the first RATE_AFTER bytes of each response go at full speed, the rest
slowly): a resume, or an aria2c segment, needs fewer bytes than that and runs at full speed.

A ZIP takes ranges once the background hasher has stored every file's CRC-32 (until then it is
sent whole, `Accept-Ranges: none`): the ZIP tests wait for `Accept-Ranges: bytes` first.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import PATIENCE, FerryServer, wait_for
from tests.support.servers import ServerPool, module_pool

pytestmark = pytest.mark.clients

KiB = 1024
MiB = 1024**2
RATE = 2 * MiB  # bytes per second past RATE_AFTER
RATE_AFTER = 6 * MiB  # more than any resume or segment below needs, less than any archive
FLAGS = ("--rate-limit", str(RATE), "--rate-limit-after", str(RATE_AFTER))
STOP_AT = RATE_AFTER + 512 * KiB  # an interrupted client is stopped once it holds this much
CRC_PATIENCE = 120.0  # the background hasher storing every CRC-32 (a ZIP takes ranges then)
TOOL_TIMEOUT = 120
KINDS = ["tar", "zip"]


def _album(folder: Path) -> None:
    """About 10 MiB: one big file (the interruptions land in it), awkward names, hidden files."""
    (folder / "sub dir" / "deeper").mkdir(parents=True)
    (folder / "big one.bin").write_bytes(os.urandom(9 * MiB))
    (folder / "résumé 数据.txt").write_bytes(os.urandom(100 * KiB))
    (folder / "100% #1?.txt").write_bytes(b"percent and hash\n")
    (folder / 'quo"ted; name.txt').write_bytes(b"quotes\n")
    (folder / "empty.bin").write_bytes(b"")
    (folder / "sub dir" / "inner.bin").write_bytes(os.urandom(MiB + 17))
    (folder / "sub dir" / "deeper" / "x.txt").write_bytes(b"deep\n")
    (folder / ".hidden").write_bytes(b"never in an archive\n")
    (folder / "sub dir" / ".env").write_bytes(b"SECRET=1\n")


def _prepare(pool: ServerPool) -> None:
    for name in ("album", "stale-tar", "stale-zip"):
        (pool.root / name).mkdir()
        _album(pool.root / name)
    for name in ("changing-tar", "changing-zip"):
        folder = pool.root / name
        folder.mkdir()
        (folder / "a first.txt").write_bytes(b"first\n")
        (folder / "big.bin").write_bytes(os.urandom(20 * MiB))
        (folder / "z last.txt").write_bytes(b"last\n")


pool = module_pool("archive-clients", _prepare)


@pytest.fixture
def server(pool: ServerPool) -> FerryServer:
    return pool.get("auto", *FLAGS)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


# --- helpers ----------------------------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed; `make tools` installs curl, wget, aria2"
    return path


def client_env(cwd: Path) -> dict[str, str]:
    """An empty HOME beside `cwd` (no ~/.curlrc, ~/.wgetrc, HSTS files)."""
    home = cwd.parent / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "LC_ALL": "C.UTF-8", "HOME": str(home)}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(args[0]), *args[1:]],
        check=True,
        timeout=TOOL_TIMEOUT,
        cwd=cwd,
        env=client_env(cwd),
        capture_output=True,
        text=True,
    )


def interrupted(args: list[str], out: Path, cwd: Path) -> int:
    """Start a client, stop it (SIGKILL) once `out` holds STOP_AT bytes; what it had saved."""
    process = subprocess.Popen(
        [tool(args[0]), *args[1:]],
        cwd=cwd,
        env=client_env(cwd),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        reached = wait_for(
            lambda: process.poll() is not None or (out.exists() and out.stat().st_size >= STOP_AT),
            timeout=PATIENCE,
        )
        assert process.poll() is None, f"{args[0]} ended (exit {process.returncode}) before it was stopped"
        assert reached, f"{args[0]} saved {out.stat().st_size if out.exists() else 0} bytes only"
    finally:
        process.kill()
        process.wait()
    return out.stat().st_size


def expected_files(folder: Path) -> dict[str, bytes]:
    """What an archive of `folder` holds: every non-hidden file below it, by its path inside the
    archive (the folder's name first)."""
    files: dict[str, bytes] = {}
    for directory, dirs, names in os.walk(folder):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in names:
            if not name.startswith("."):
                path = Path(directory, name)
                files[path.relative_to(folder.parent).as_posix()] = path.read_bytes()
    return files


def archive_files(kind: str, data: bytes) -> dict[str, bytes]:
    """The files an archive holds, read back by Python's own readers (ZIP: every CRC checked)."""
    files: dict[str, bytes] = {}
    if kind == "tar":
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                assert member.isfile(), member.name
                reader = tar.extractfile(member)
                assert reader is not None
                files[member.name] = reader.read()
        return files
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        for info in archive.infolist():
            files[info.filename] = archive.read(info)
    return files


def assert_archive_of(kind: str, saved: Path, folder: Path) -> None:
    assert archive_files(kind, saved.read_bytes()) == expected_files(folder)


def archive_url(server: FerryServer, folder: str, kind: str) -> str:
    return f"{server.url}/files/{folder}/?archive={kind}"


def head(url: str) -> httpx.Response:
    response = httpx.head(url, timeout=30)
    assert response.status_code == 200, response.text
    return response


def takes_ranges(url: str, kind: str) -> httpx.Response:
    """HEAD of an archive once it takes ranges: a tar at once; a ZIP once the hasher has stored
    every CRC-32 of the version the index holds now."""
    if kind == "zip":
        assert wait_for(lambda: head(url).headers["accept-ranges"] == "bytes", timeout=CRC_PATIENCE), (
            f"{url}: still Accept-Ranges: none after {CRC_PATIENCE:.0f} s (CRC-32s not stored)"
        )
    response = head(url)
    assert response.headers["accept-ranges"] == "bytes"
    return response


def archive_requests(server: FerryServer, folder: str) -> list[tuple[str, str, str]]:
    """(client address, status, range) of every GET of `folder`'s archives in the access log."""
    pattern = re.compile(rf'^(\S+) "GET /files/{re.escape(folder)}/" (\d+) \d+ range="([^"]*)"')
    lines = server.access_log.read_text(errors="replace").splitlines()
    return [(match[1], match[2], match[3]) for line in lines if (match := pattern.match(line))]


# --- resume with curl and wget, segments with aria2c ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_curl_resumes_an_interrupted_archive_download(
    server: FerryServer, pool: ServerPool, out_dir: Path, kind: str
) -> None:
    url = archive_url(server, "album", kind)
    total = int(takes_ranges(url, kind).headers["content-length"])
    saved = out_dir / f"album.{kind}"

    # curl refuses -C - beside -J (its known bug 4.2): the first try is -OJ, the resume -C - -o.
    partial = interrupted(["curl", "-sS", "-OJ", url], saved, out_dir)
    assert STOP_AT <= partial < total
    result = run(
        "curl", "-sS", "-C", "-", "-o", saved.name, "-w", "%{http_code} %{size_download}", url, cwd=out_dir
    )

    assert result.stdout.split() == ["206", str(total - partial)]
    assert saved.stat().st_size == total
    assert_archive_of(kind, saved, pool.root / "album")


@pytest.mark.parametrize("kind", KINDS)
def test_wget_continues_an_interrupted_archive_download(
    server: FerryServer, pool: ServerPool, out_dir: Path, kind: str
) -> None:
    url = archive_url(server, "album", kind)
    total = int(takes_ranges(url, kind).headers["content-length"])
    saved = out_dir / f"album.{kind}"  # the name from Content-Disposition

    partial = interrupted(["wget", "-q", "-c", "--content-disposition", url], saved, out_dir)
    assert STOP_AT <= partial < total
    result = run("wget", "-nv", "-S", "-c", "--content-disposition", url, cwd=out_dir)

    assert "HTTP/1.1 206" in result.stderr, result.stderr
    assert f"content-range: bytes {partial}-{total - 1}/{total}" in result.stderr.lower(), result.stderr
    assert sorted(path.name for path in out_dir.iterdir()) == [saved.name]
    assert saved.stat().st_size == total
    assert_archive_of(kind, saved, pool.root / "album")


@pytest.mark.parametrize("kind", KINDS)
def test_aria2c_downloads_an_archive_over_several_connections(
    server: FerryServer, pool: ServerPool, out_dir: Path, kind: str
) -> None:
    url = archive_url(server, "album", kind)
    total = int(takes_ranges(url, kind).headers["content-length"])
    before = len(archive_requests(server, "album"))
    run(
        "aria2c", "--no-conf", "-q", "-x8", "-s8", "-k1M", "--file-allocation=none",
        "--allow-overwrite=true", "--auto-file-renaming=false", "-d", str(out_dir), "-o", f"album.{kind}",
        url, cwd=out_dir,
    )  # fmt: skip

    saved = out_dir / f"album.{kind}"
    assert sorted(path.name for path in out_dir.iterdir()) == [saved.name]  # no .aria2 file left
    assert saved.stat().st_size == total
    assert_archive_of(kind, saved, pool.root / "album")
    # Several connections, each answered 206 with a part of the archive.
    partial = [(client, span) for client, status, span in archive_requests(server, "album")[before:]
               if status == "206"]  # fmt: skip
    assert len({client for client, _ in partial}) >= 4, partial


# --- a stale resume, a file changed while it is sent --------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_stale_resume_with_if_range_gets_the_new_archive_whole(
    server: FerryServer, pool: ServerPool, out_dir: Path, kind: str
) -> None:
    folder = pool.root / f"stale-{kind}"
    url = archive_url(server, folder.name, kind)
    old = takes_ranges(url, kind).headers
    saved = out_dir / f"{folder.name}.{kind}"
    partial = interrupted(["curl", "-sS", "-OJ", url], saved, out_dir)

    (folder / "sub dir" / "inner.bin").write_bytes(os.urandom(MiB + 4321))  # new bytes, new size
    assert wait_for(lambda: head(url).headers["etag"] != old["etag"]), "the new version never showed"
    new = takes_ranges(url, kind).headers
    resume = {"Range": f"bytes={partial}-"}

    # With the old ETag: the whole new archive (200), never its tail spliced onto the old head.
    stale = httpx.get(url, headers={**resume, "If-Range": old["etag"]}, timeout=60)
    assert stale.status_code == 200
    assert stale.headers["etag"] == new["etag"]
    assert len(stale.content) == int(new["content-length"])
    assert archive_files(kind, stale.content) == expected_files(folder)
    # With the current ETag the same request resumes (206): the If-Range made the difference.
    fresh = httpx.get(url, headers={**resume, "If-Range": new["etag"]}, timeout=60)
    assert fresh.status_code == 206
    assert fresh.content == stale.content[partial:]


def _download_while(url: str, change: Callable[[], None], out: Path, cwd: Path) -> tuple[int, int]:
    """curl `url` to `out`, running `change` once it holds STOP_AT bytes: (curl's exit code, bytes saved)."""
    process = subprocess.Popen(
        [tool("curl"), "-sS", "-o", str(out), url],
        cwd=cwd,
        env=client_env(cwd),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(
            lambda: process.poll() is not None or (out.exists() and out.stat().st_size >= STOP_AT)
        )
        assert process.poll() is None, "the download ended before the file changed"
        change()
        code = process.wait(timeout=PATIENCE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, out.stat().st_size


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_changed_while_its_archive_is_sent_ends_it_short(
    server: FerryServer, pool: ServerPool, out_dir: Path, kind: str
) -> None:
    folder = pool.root / f"changing-{kind}"
    url = archive_url(server, folder.name, kind)
    old = head(url).headers  # a ZIP need not take ranges here: it is sent whole either way
    total = int(old["content-length"])

    def append() -> None:
        with (folder / "big.bin").open("ab") as f:  # being sent now: the rate keeps the server there
            f.write(b"appended while it was being sent")

    code, received = _download_while(url, append, out_dir / "short", out_dir)

    # curl's "partial file": the body ended before Content-Length, and curl says so.
    assert code == 18, f"curl exited {code} after {received} of {total} bytes"
    assert received < total
    # The server goes on serving: the changed folder is a new archive, sent whole.
    assert wait_for(lambda: head(url).headers["etag"] != old["etag"])
    again = httpx.get(url, timeout=60)
    assert again.status_code == 200
    assert archive_files(kind, again.content) == expected_files(folder)
