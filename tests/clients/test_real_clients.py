"""Real download clients (curl, wget, aria2c) against a real `ferry serve`, verified by sha256.

The tools are required: `make test` installs them when missing, and a missing one fails here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import FerryServer, ServerFactory
from tests.support.servers import BOTH_TRANSFER_PATHS

pytestmark = pytest.mark.clients

MiB = 1024**2
SIZE = 100 * MiB
HALF = SIZE // 2
NAME = "random.bin"
UNICODE_NAME = "résumé 数据.bin"
TOOL_TIMEOUT = 60


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed; `make test` (make tools) installs curl, wget, aria2"
    return path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a client in `cwd`, with an empty HOME beside it (no ~/.curlrc, ~/.wgetrc, HSTS files)."""
    home = cwd.parent / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "HOME": str(home)}
    return subprocess.run(
        [tool(args[0]), *args[1:]],
        check=True,
        timeout=TOOL_TIMEOUT,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Storage:
    root: Path
    sha256: str
    unicode_content: bytes


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    """ROOT with a random 100 MiB file (written once per module) and a file with a Unicode name."""
    root = tmp_path_factory.mktemp("real-clients") / "root"
    root.mkdir()
    digest = hashlib.sha256()
    with (root / NAME).open("wb") as f:
        for _ in range(SIZE // MiB):
            block = os.urandom(MiB)
            f.write(block)
            digest.update(block)
    unicode_content = os.urandom(256 * 1024)
    (root / UNICODE_NAME).write_bytes(unicode_content)
    return Storage(root, digest.hexdigest(), unicode_content)


@pytest.fixture
def server(ferry: ServerFactory, storage: Storage) -> FerryServer:
    return ferry(storage.root)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def write_first_half(storage: Storage, out: Path) -> None:
    with (storage.root / NAME).open("rb") as src, out.open("wb") as dst:
        dst.write(src.read(HALF))


@BOTH_TRANSFER_PATHS
def test_curl_resumes_a_half_downloaded_file(server: FerryServer, storage: Storage, out_dir: Path) -> None:
    out = out_dir / NAME
    write_first_half(storage, out)
    result = run(
        "curl",
        "-sS",
        "-C",
        "-",
        "-o",
        str(out),
        "-w",
        "%{http_code} %{size_download}",
        f"{server.url}/files/{NAME}",
        cwd=out_dir,
    )
    # It asked for the second half only, and got it as a 206.
    assert result.stdout.split() == ["206", str(SIZE - HALF)]
    assert out.stat().st_size == SIZE
    assert sha256_file(out) == storage.sha256


@BOTH_TRANSFER_PATHS
def test_wget_resumes_a_half_downloaded_file(server: FerryServer, storage: Storage, out_dir: Path) -> None:
    out = out_dir / NAME
    write_first_half(storage, out)
    # -S prints the server's response on stderr: the resume must have been a 206.
    result = run("wget", "-nv", "-S", "-c", "-O", str(out), f"{server.url}/files/{NAME}", cwd=out_dir)
    assert "HTTP/1.1 206" in result.stderr, result.stderr
    assert f"content-range: bytes {HALF}-{SIZE - 1}/{SIZE}" in result.stderr.lower(), result.stderr
    assert out.stat().st_size == SIZE
    assert sha256_file(out) == storage.sha256


@BOTH_TRANSFER_PATHS
def test_aria2c_segmented_download(server: FerryServer, storage: Storage, out_dir: Path) -> None:
    log = out_dir.parent / "aria2.log"
    run(
        "aria2c",
        "--no-conf",
        "-q",
        "-x8",
        "-s8",
        "-k1M",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--file-allocation=none",
        f"--log={log}",
        "--log-level=debug",
        "-d",
        str(out_dir),
        "-o",
        NAME,
        f"{server.url}/files/{NAME}",
        cwd=out_dir,
    )
    out = out_dir / NAME
    assert sorted(p.name for p in out_dir.iterdir()) == [NAME]  # no .aria2 control file left
    assert out.stat().st_size == SIZE
    assert sha256_file(out) == storage.sha256
    # It really did split the file: several ranged requests answered 206.
    text = log.read_text(errors="replace")
    assert text.count("HTTP/1.1 206") >= 2, "aria2c did not make segmented (ranged) requests"


@BOTH_TRANSFER_PATHS
def test_wget_content_disposition_saves_the_exact_unicode_name(
    server: FerryServer, storage: Storage, out_dir: Path
) -> None:
    run(
        "wget",
        "-q",
        "--content-disposition",
        f"{server.url}/files/{quote(UNICODE_NAME)}",
        cwd=out_dir,
    )
    assert [p.name for p in out_dir.iterdir()] == [UNICODE_NAME]
    assert (out_dir / UNICODE_NAME).read_bytes() == storage.unicode_content


@BOTH_TRANSFER_PATHS
def test_curl_oj_saves_the_ascii_fallback_name_not_the_query(
    server: FerryServer, storage: Storage, out_dir: Path
) -> None:
    # A URL with a query (a signed link, ?download=1) does not carry the name by itself, so the
    # header does: curl -OJ reads the ASCII fallback (it ignores filename*).
    url = f"{server.url}/files/{quote(UNICODE_NAME)}?download=1"
    header = httpx.head(url).headers["content-disposition"]
    assert header.startswith('attachment; filename="')
    fallback = header.split('filename="', 1)[1].split('"', 1)[0]
    assert fallback.isascii() and fallback.isprintable(), fallback
    assert fallback and fallback != UNICODE_NAME
    assert f"filename*=UTF-8''{quote(UNICODE_NAME, safe='')}" in header

    run("curl", "-sS", "-O", "-J", url, cwd=out_dir)
    assert [p.name for p in out_dir.iterdir()] == [fallback]
    assert (out_dir / fallback).read_bytes() == storage.unicode_content


@BOTH_TRANSFER_PATHS
def test_curl_range_and_head(server: FerryServer, storage: Storage, out_dir: Path) -> None:
    url = f"{server.url}/files/{NAME}"
    out = out_dir / "first100"
    result = run("curl", "-sS", "-r", "0-99", "-o", str(out), "-w", "%{http_code}", url, cwd=out_dir)
    assert result.stdout == "206"
    with (storage.root / NAME).open("rb") as f:
        assert out.read_bytes() == f.read(100)

    result = run("curl", "-sS", "-I", url, cwd=out_dir)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("HTTP/1.1 200")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    assert headers["content-length"] == str(SIZE)
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["etag"].startswith('"')
    assert "last-modified" in headers
